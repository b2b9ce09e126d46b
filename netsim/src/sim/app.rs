//! An app on a simulated host: it drives its node through the local API, frame for frame as
//! a real app does over the Unix socket, over an in-memory pipe.

use std::sync::Arc;

use tern_daemon::daemon::Daemon;
use tern_daemon::daemon::api::serve_client;
use tern_proto::api::Request;
use tokio::io::DuplexStream;

use crate::local_api::{self, Answered, RequestError};

/// Bytes each way of a local API pipe.
const PIPE_BYTES: usize = 256 << 10;

pub struct App {
    daemon: Arc<Daemon>,
}

impl App {
    pub fn new(daemon: Arc<Daemon>) -> Self {
        Self { daemon }
    }

    /// A new local API connection, served by the node as one of its tasks.
    pub fn connect(&self) -> DuplexStream {
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        let daemon = self.daemon.clone();
        self.daemon.node().spawn(async move {
            let _ = serve_client(&daemon, theirs).await;
        });
        ours
    }

    /// Sends `request` on a new connection and reads the answer.
    pub async fn request(&self, request: &Request) -> Result<Answered, RequestError> {
        local_api::request(Box::new(self.connect()), request).await
    }
}
