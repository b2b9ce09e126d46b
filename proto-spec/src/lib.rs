//! tern-proto: every byte format tern puts on a wire, a socket or a disk, and nothing else.
//!
//! The normative description is `SPEC.md` beside this crate; the test vectors in `vectors/`
//! are checked by this crate's tests so that a second implementation can check itself too.
//! No I/O and no clock lives here: callers hand in bytes (and, where it matters, the time).

pub mod address;
pub mod api;
pub mod control;
pub mod dht;
pub mod identity;
pub mod name;
pub mod packet;
pub mod record;
pub mod rendezvous;
pub mod service;
pub mod stream;
pub mod trust_request;
pub mod wire;

pub use address::{Address, ParseAddressError};
pub use identity::{IdentityError, KeyFileError, PublicIdentity, SecretIdentity};
pub use name::{Name, NameError, Target, TargetError};
