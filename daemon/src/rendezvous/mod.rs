//! Finding peers. Every ternd serves as a rendezvous on virtual port 1: it keeps the signed
//! records nodes register with it, indexes their names, answers lookups by address and by
//! name, and introduces nodes to each other for hole punching. A node registers its own
//! record with each configured rendezvous (or, with none, only with itself) and refreshes it.
//!
//! Records are signed by their owner and checked by every reader, so a rendezvous can lose or
//! withhold a record but never substitute a key, an endpoint or a name. (Relaying happens in
//! the node's socket layer: see `transport::socket` and `node::forward_relayed`.)

pub mod client;
pub mod pins;
pub mod registration;
pub mod registry;
pub mod server;

use std::time::Duration;

use tern_proto::rendezvous::{Answer, MessageError};
use tern_proto::{Address, Name};

use crate::node::{DialError, ExchangeError};
pub use client::{RendezvousClient, ask, lookup, lookup_name, register, request_introduction};
pub use registry::{RegisterError, Registry};
pub use server::{Limits, RecordsFile, Service, serve};

/// How long a record is valid; owners refresh well before.
pub const RECORD_LIFETIME: Duration = Duration::from_secs(300);
/// How long both sides keep probing each other's endpoints (a probe round every 150 ms).
pub const PUNCH_WINDOW: Duration = Duration::from_secs(2);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    #[error("cannot reach the rendezvous: {0}")]
    Dial(#[from] DialError),
    #[error("the rendezvous exchange failed: {0}")]
    Stream(String),
    #[error("rendezvous: {0}")]
    Exchange(#[from] ExchangeError),
    #[error("the rendezvous did not answer within {EXCHANGE_TIMEOUT:?}")]
    Timeout,
    #[error("the rendezvous sent a bad answer: {0}")]
    BadAnswer(#[from] MessageError),
    #[error("the rendezvous refused: {0}")]
    Refused(String),
    #[error("the rendezvous answered {0:?} to a {1} request")]
    Unexpected(Box<Answer>, &'static str),
    #[error(
        "the name {name} is held by {holder}: names go to the first key that claims them; pick \
         another name"
    )]
    NameTaken { name: Name, holder: Address },
    #[error("the rendezvous holds a newer record of this node (seq {stored_seq})")]
    Stale { stored_seq: u64 },
}
