//! tern-daemon: the node engine ([`Node`]), the daemon around it ([`daemon::Daemon`]), its
//! local API ([`api`]) and the rendezvous role every daemon plays ([`rendezvous`]).

pub mod api;
pub mod backoff;
pub mod config;
pub mod daemon;
/// The home directory lives with the local API's frames in `tern-local`, shared with clients.
pub use tern_local::home;
pub mod names;
pub mod node;
pub mod ratelimit;
pub mod rendezvous;
pub mod servers;
pub mod store;
pub mod streams;
pub mod transport;
pub mod traversal;
pub mod trust;
pub mod trust_requests;

pub use node::{Access, DialError, Listener, Node, OverlayStream, PeerInfo, TransportConfig};

/// Starts a task in the span it is started from: a node's tasks (and theirs) carry the node's
/// span (`Node::span`), so with many nodes in one process each log line says whose it is.
pub(crate) fn spawn<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument;
    tokio::spawn(task.in_current_span())
}
