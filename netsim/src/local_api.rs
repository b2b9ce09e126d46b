//! One local API request over any byte stream to a node (an in-memory pipe in the simulator,
//! the Unix socket in the kernel lab), frame for frame as an agent sends it.

use serde_json::Value;
use tern_daemon::daemon::api::{FrameIoError, read_frame, write_frame};
use tern_daemon::env::LinkIo;
use tern_proto::api::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
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
    pub data: Value,
    pub connection: Box<dyn LinkIo>,
}

/// Sends `request` on `connection` and reads the answer.
pub async fn request(
    mut connection: Box<dyn LinkIo>,
    request: &Request,
) -> Result<Answered, RequestError> {
    write_frame(&mut connection, request).await?;
    let response: Response = read_frame(&mut connection)
        .await?
        .ok_or(RequestError::Closed)?;
    match (response.ok, response.error) {
        (true, _) => Ok(Answered {
            data: response.data,
            connection,
        }),
        (false, e) => Err(RequestError::Refused {
            code: e.as_ref().map_or("failed", |e| &e.code).to_string(),
            message: e.map(|e| e.message).unwrap_or_default(),
        }),
    }
}
