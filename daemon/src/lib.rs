//! tern-daemon: the node engine ([`Node`]), the daemon around it ([`daemon::Daemon`]), its
//! local API ([`daemon::api`]) and the rendezvous role every daemon plays ([`rendezvous`]).

pub mod backoff;
pub mod config;
pub mod daemon;
pub mod dht;
pub mod discovery;
pub mod env;
/// The home directory lives with the local API's frames in `tern-local`, shared with clients.
pub use tern_local::home;
pub mod node;
pub mod ratelimit;
pub mod rendezvous;
pub mod services;
pub mod store;
pub mod streams;
pub mod tasks;
pub mod transport;
pub mod traversal;

pub use node::{Access, DialError, Listener, Node, OverlayStream, PeerInfo, TransportConfig};
