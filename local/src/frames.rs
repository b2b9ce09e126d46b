//! Local API frames over any byte stream: the Unix socket for real clients, an in-memory pipe
//! in tests. The frame format is `tern_proto::api`.

use tern_proto::api;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum FrameIoError {
    #[error("local API connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad local API frame: {0}")]
    Frame(#[from] api::FrameError),
}

/// Reads one frame; `None` on a clean end of stream before it.
pub async fn read_frame<T: serde::de::DeserializeOwned>(
    reader: &mut (impl AsyncRead + Unpin),
) -> Result<Option<T>, FrameIoError> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut body = vec![0u8; api::body_len(header)?];
    reader.read_exact(&mut body).await?;
    Ok(Some(api::decode(&body)?))
}

pub async fn write_frame<T: serde::Serialize>(
    writer: &mut (impl AsyncWrite + Unpin),
    message: &T,
) -> Result<(), FrameIoError> {
    writer.write_all(&api::encode(message)?).await?;
    writer.flush().await?;
    Ok(())
}
