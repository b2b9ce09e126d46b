pub mod home;
pub mod node;
pub mod transport;

pub use node::{DialError, Listener, Node, OverlayStream, PeerInfo, TransportConfig};
