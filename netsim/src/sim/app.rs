//! An app on a simulated host: it drives its node through the local API, frame for frame as
//! a real app does over the Unix socket, over an in-memory pipe.

use std::sync::Arc;

use tern_daemon::daemon::Daemon;
use tern_daemon::daemon::api::{FrameIoError, read_frame, serve_client, write_frame};
use tern_proto::api::{Request, Response};
use tokio::io::DuplexStream;

/// Bytes each way of a local API pipe.
const PIPE_BYTES: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("local API: {0}")]
    Frames(#[from] FrameIoError),
    #[error("the node closed the local API connection without answering")]
    Closed,
    #[error("the node refused: {code}: {message}")]
    Refused { code: String, message: String },
}

/// What a request got: the answer's data and the connection (after `dial` or `accept`, the
/// stream itself).
pub struct Answered {
    pub data: serde_json::Value,
    pub connection: DuplexStream,
}

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
    pub async fn request(&self, request: &Request) -> Result<Answered, AppError> {
        let mut connection = self.connect();
        write_frame(&mut connection, request).await?;
        let response: Response = read_frame(&mut connection).await?.ok_or(AppError::Closed)?;
        match (response.ok, response.error) {
            (true, _) => Ok(Answered {
                data: response.data,
                connection,
            }),
            (false, e) => Err(AppError::Refused {
                code: e.as_ref().map_or("failed", |e| &e.code).to_string(),
                message: e.map(|e| e.message).unwrap_or_default(),
            }),
        }
    }
}
