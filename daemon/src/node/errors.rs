//! The node's errors: dialling, exchanges, listening, datagrams, probes.

use super::*;

/// The node a dial was meant for: a known address, or whichever node answers (a rendezvous
/// dialled by its UDP address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialled(pub Option<Address>);

impl std::fmt::Display for Dialled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(address) => write!(f, "{address}"),
            None => f.write_str("the node"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("handshake with {peer} at {at} failed: {source}")]
    Handshake {
        peer: Dialled,
        at: Route,
        source: HandshakeError,
    },
    #[error(
        "no answer from {peer} at {at} within {timeout:?}: check that its ternd is running and \
         that the address is reachable"
    )]
    Timeout {
        peer: Dialled,
        at: Route,
        timeout: Duration,
    },
    #[error("no TCP link to {at}: {source}")]
    Tcp {
        at: SocketAddr,
        source: std::io::Error,
    },
    #[error("not connected to {0}: dial it first")]
    NotConnected(Address),
    #[error("{peer} refused the stream to port {port}: {}", refusal_reason(*.status, *.port))]
    Refused {
        peer: Address,
        port: u16,
        status: StreamStatus,
    },
    #[error("{peer} did not answer the stream to port {port} within {timeout:?}")]
    NoAnswer {
        peer: Address,
        port: u16,
        timeout: Duration,
    },
    #[error("the connection to {peer} broke: {reason}")]
    ConnectionLost { peer: Address, reason: String },
    #[error("the node is shutting down")]
    ShuttingDown,
}

fn refusal_reason(status: StreamStatus, port: u16) -> String {
    match status {
        StreamStatus::NotTrusted => {
            "this node is not on its trust list (ask its operator to `ternctl trust add` it)".into()
        }
        StreamStatus::NoListener => format!("nothing listens on port {port} there"),
        StreamStatus::Busy => format!("port {port} has too many streams waiting; try again"),
        StreamStatus::BadPreamble => "it did not understand the stream preamble".into(),
        StreamStatus::Accepted => "accepted".into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("the exchange failed: {0}")]
    Stream(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("port {0} is already in use on this node")]
    InUse(u16),
}

#[derive(Debug, thiserror::Error)]
pub enum DatagramError {
    #[error("not connected to {0}: dial it first")]
    NotConnected(Address),
    #[error("datagram to {peer} not sent: {reason}")]
    Send { peer: Address, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no verified connection to {0}, so its key is unknown: dial it first")]
    UnknownPeer(Address),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("could not send: {0}")]
    Send(#[source] std::io::Error),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("the path is relayed; control packets do not cross relays")]
    Relayed,
}
