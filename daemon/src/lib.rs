//! tern-daemon: the node engine ([`Node`]), the daemon around it ([`daemon::Daemon`]), its
//! local API ([`api`]) and the rendezvous role every daemon plays ([`rendezvous`]).

pub mod api;
pub mod backoff;
pub mod config;
pub mod daemon;
pub mod env;
/// The home directory lives with the local API's frames in `tern-local`, shared with clients.
pub use tern_local::home;
pub mod names;
pub mod node;
pub mod ratelimit;
pub mod rendezvous;
pub mod servers;
pub mod store;
pub mod streams;
pub mod tasks;
pub mod transport;
pub mod traversal;
pub mod trust;
pub mod trust_requests;

pub use node::{Access, DialError, Listener, Node, OverlayStream, PeerInfo, TransportConfig};
