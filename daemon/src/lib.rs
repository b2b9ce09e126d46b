//! tern-daemon: the node engine ([`Node`]), the daemon around it ([`daemon::Daemon`]), its
//! local API ([`api`]) and the rendezvous role every daemon plays ([`rendezvous`]).

pub mod api;
pub mod daemon;
pub mod home;
pub mod node;
pub mod rendezvous;
pub mod streams;
pub mod transport;
pub mod trust;

pub use node::{Access, DialError, Listener, Node, OverlayStream, PeerInfo, TransportConfig};
