//! `ternctl connect` (a pipe, or one JSON-RPC exchange with --message) and `ternctl send`.

use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::output::{Failure, Report};
use crate::{check_target, failure, stdio};
use tern_ctl::{Client, Stream};

#[derive(Args)]
pub struct ConnectArgs {
    target: String,
    port: u16,
    /// Send this one JSON-RPC message, print the reply whose id matches, exit.
    #[arg(long, value_name = "JSON")]
    message: Option<String>,
    /// Seconds to wait for the reply with --message.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(Args)]
pub struct SendArgs {
    target: String,
    port: u16,
    /// The JSON-RPC message.
    #[arg(
        long,
        value_name = "JSON",
        conflicts_with = "file",
        required_unless_present = "file"
    )]
    data: Option<String>,
    /// A file holding the JSON-RPC message.
    #[arg(long, value_name = "F")]
    file: Option<PathBuf>,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

pub async fn connect(client: &Client, args: ConnectArgs) -> Result<Report, Failure> {
    check_target(&args.target)?;
    match args.message {
        Some(message) => exchange(client, &args.target, args.port, &message, args.timeout).await,
        None => pipe(client, &args.target, args.port).await,
    }
}

pub async fn send(client: &Client, args: SendArgs) -> Result<Report, Failure> {
    check_target(&args.target)?;
    let message = match (args.data, args.file) {
        (Some(data), _) => data,
        (None, Some(file)) => std::fs::read_to_string(&file).map_err(|e| {
            Failure::new("bad_file", format!("cannot read {}: {e}", file.display()))
        })?,
        (None, None) => unreachable!("clap requires --data or --file"),
    };
    exchange(client, &args.target, args.port, &message, args.timeout).await
}

/// stdin → stream (EOF half-closes it), stream → stdout until the remote side closes.
async fn pipe(client: &Client, target: &str, port: u16) -> Result<Report, Failure> {
    let stream = client.dial(target, port).await.map_err(failure)?;
    let peer = stream.peer;
    let piped = pipe_stdio(client, stream).await?;
    if piped.outcome["end"] != "clean" {
        let how = piped.outcome["detail"]
            .as_str()
            .unwrap_or("reset by this side");
        return Err(Failure::new(
            "stream_broken",
            format!("the stream to {peer} ended abnormally: {how}"),
        )
        .hint("the other side may have crashed or reset it; dial again"));
    }
    Ok(Report {
        data: json!({ "bytes_sent": piped.sent, "bytes_received": piped.received }),
        text: String::new(),
    })
}

/// What `pipe_stdio` moved, and how the daemon says the stream ended (see
/// [`Client::outcome`]): a peer's crash can look like a clean end of file locally.
pub struct Piped {
    pub sent: u64,
    pub received: u64,
    pub outcome: Value,
}

/// Copies stdin to the stream and the stream to stdout; returns once the remote side has
/// closed, with both directions of the local connection closed. Each direction runs on a
/// blocking thread that splices descriptors (see `stdio`).
pub async fn pipe_stdio(client: &Client, stream: Stream) -> Result<Piped, Failure> {
    let (id, peer) = (stream.id, stream.peer);
    let broken = |e: std::io::Error| {
        Failure::new("stream_broken", format!("the stream to {peer} broke: {e}"))
    };
    let socket = Arc::new(blocking(stream.io).map_err(broken)?);
    let sent = Arc::new(AtomicU64::new(0));
    // Not joined: once the remote side has closed, stdin is no longer read (as `nc -N`).
    std::thread::spawn({
        let (socket, sent) = (socket.clone(), sent.clone());
        move || {
            let _ = stdio::copy(libc::STDIN_FILENO, socket.as_raw_fd(), &sent);
            let _ = socket.shutdown(Shutdown::Write);
        }
    });
    let download = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || {
            let received = AtomicU64::new(0);
            let copied = stdio::copy(socket.as_raw_fd(), libc::STDOUT_FILENO, &received);
            copied.map(|()| received.into_inner())
        }
    });
    let received = download
        .await
        .map_err(|e| broken(std::io::Error::other(e)))?
        .map_err(broken)?;
    // The daemon ends the stream once both directions have: end ours if stdin is still open.
    let _ = socket.shutdown(Shutdown::Write);
    let outcome = client.outcome(id).await.map_err(failure)?;
    Ok(Piped {
        sent: sent.load(Ordering::Relaxed),
        received,
        outcome,
    })
}

/// The daemon connection of a stream as a blocking socket, for the `stdio` copies.
pub fn blocking(io: tokio::net::UnixStream) -> std::io::Result<std::os::unix::net::UnixStream> {
    let socket = io.into_std()?;
    socket.set_nonblocking(false)?;
    Ok(socket)
}

/// Sends one message, keeps the write side open until the reply with the same id arrives
/// (skipping notifications and other replies), and returns that raw line.
async fn exchange(
    client: &Client,
    target: &str,
    port: u16,
    message: &str,
    timeout: u64,
) -> Result<Report, Failure> {
    let parsed: Value = serde_json::from_str(message).map_err(|e| {
        Failure::new("bad_message", format!("the message is not valid JSON: {e}"))
            .hint(r#"for example --message '{"jsonrpc":"2.0","id":1,"method":"ping"}'"#)
    })?;
    let id = parsed.get("id").cloned();
    let mut stream = client.dial(target, port).await.map_err(failure)?;
    let line = serde_json::to_string(&parsed).expect("a parsed value serialises");
    // Send the bytes as given, one line; the compact form only if the input spans lines.
    let wire = if message.contains('\n') {
        line
    } else {
        message.to_string()
    };
    stream
        .write_all(format!("{wire}\n").as_bytes())
        .await
        .map_err(|e| Failure::new("stream_broken", format!("sending to {target} failed: {e}")))?;
    let Some(id) = id else {
        // A notification has no reply.
        stream.shutdown().await.ok();
        return Ok(Report {
            data: json!({ "sent": true }),
            text: String::new(),
        });
    };
    let wait = Duration::from_secs(timeout);
    let reply = tokio::time::timeout(wait, async {
        let mut lines = BufReader::new(&mut stream).lines();
        while let Some(line) = lines.next_line().await? {
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && value.get("id") == Some(&id)
                && (value.get("result").is_some() || value.get("error").is_some())
            {
                return Ok(Some((line, value)));
            }
        }
        Ok::<_, std::io::Error>(None)
    })
    .await
    .map_err(|_| {
        Failure::new(
            "timeout",
            format!("no reply with id {id} from {target} port {port} within {timeout} s"),
        )
        .hint("raise --timeout, or check that the service answers JSON-RPC lines")
    })?
    .map_err(|e| {
        Failure::new(
            "stream_broken",
            format!("the stream to {target} broke: {e}"),
        )
    })?;
    match reply {
        Some((line, value)) => Ok(Report {
            data: value,
            text: line,
        }),
        None => Err(Failure::new(
            "no_reply",
            format!("{target} port {port} closed the stream before replying to id {id}"),
        )),
    }
}
