//! Applications' use of the overlay through the local API: the ports they listen on (a
//! stream queue and a datagram queue each), streams and datagrams to peers, and pings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_proto::Address;
use tokio::sync::mpsc;

use crate::node::{
    Access, Datagram, DatagramError, DialError, Listener, Node, OverlayStream, ProbeError,
};
use crate::traversal::connect::{ConnectError, Connector};

/// Ports below this are tern's own; applications cannot listen on them.
pub const FIRST_APP_PORT: u16 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("port {0} is reserved for tern's own services (0-1023); use 1024-65535")]
    ReservedPort(u16),
    #[error("port {0} is already in use on this node")]
    PortInUse(u16),
    #[error("this client does not listen on port {0}: send `listen` first, on another connection")]
    NotListening(u16),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Datagram(#[from] DatagramError),
}

pub struct Apps {
    node: Node,
    connector: Arc<Connector>,
    listeners: Mutex<HashMap<u16, Arc<tokio::sync::Mutex<Listener>>>>,
}

impl Apps {
    pub fn new(node: Node, connector: Arc<Connector>) -> Self {
        Self {
            node,
            connector,
            listeners: Mutex::default(),
        }
    }

    /// A stream to `port` at `target`, connecting first if need be.
    pub async fn dial(&self, target: Address, port: u16) -> Result<OverlayStream, AppError> {
        self.connector.connect(target).await?;
        Ok(self.node.open_stream(target, port).await?)
    }

    pub async fn ping(&self, target: Address) -> Result<Duration, AppError> {
        self.connector.connect(target).await?;
        Ok(self.node.ping(target, None).await?)
    }

    /// Claims an application port until [`Apps::unlisten`]; returns its datagram queue.
    pub fn listen(&self, port: u16, open: bool) -> Result<mpsc::Receiver<Datagram>, AppError> {
        if port < FIRST_APP_PORT {
            return Err(AppError::ReservedPort(port));
        }
        let access = if open { Access::Open } else { Access::Trusted };
        let mut listener = self
            .node
            .listen(port, access)
            .map_err(|_| AppError::PortInUse(port))?;
        let datagrams = listener
            .take_datagrams()
            .expect("a new listener still has its datagram queue");
        self.listeners
            .lock()
            .expect("listener table lock")
            .insert(port, Arc::new(tokio::sync::Mutex::new(listener)));
        Ok(datagrams)
    }

    pub fn unlisten(&self, port: u16) {
        self.listeners
            .lock()
            .expect("listener table lock")
            .remove(&port);
    }

    pub async fn send_datagram(
        &self,
        target: Address,
        port: u16,
        source_port: u16,
        payload: &[u8],
    ) -> Result<(), AppError> {
        self.connector.connect(target).await?;
        Ok(self
            .node
            .send_datagram(target, port, source_port, payload)?)
    }

    /// The next stream on a listened port; `None` when the port was released meanwhile.
    pub async fn accept(&self, port: u16) -> Result<Option<OverlayStream>, AppError> {
        let listener = self
            .listeners
            .lock()
            .expect("listener table lock")
            .get(&port)
            .cloned()
            .ok_or(AppError::NotListening(port))?;
        let mut listener = listener.lock().await;
        Ok(listener.accept().await)
    }
}
