//! `ternctl listen PORT [--open]`: print what each incoming stream sends, one at a time.

use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;

use clap::Args;
use serde_json::json;

use crate::connect::blocking;
use crate::output::{Failure, Report};
use crate::{failure, shutdown_signal, stdio};
use tern_ctl::Client;

#[derive(Args)]
pub struct ListenArgs {
    port: u16,
    /// Accept streams from any peer, not only trusted ones.
    #[arg(long)]
    open: bool,
}

pub async fn run(client: &Client, args: ListenArgs) -> Result<Report, Failure> {
    let listener = client.listen(args.port, args.open).await.map_err(failure)?;
    let who = if args.open {
        "any peer"
    } else {
        "trusted peers"
    };
    eprintln!("ready: listening on port {} for {who}", args.port);
    let mut streams = 0u64;
    let port = args.port;
    let stopped = |streams: u64| {
        Ok(Report {
            data: json!({ "port": port, "streams": streams }),
            text: String::new(),
        })
    };
    loop {
        let incoming = tokio::select! {
            incoming = listener.accept() => incoming.map_err(failure)?,
            _ = shutdown_signal() => return stopped(streams),
        };
        let (peer, id) = (incoming.stream.peer, incoming.stream.id);
        eprintln!("stream from {peer} (port {})", incoming.remote_port);
        streams += 1;
        let socket =
            blocking(incoming.stream.io).and_then(|socket| Ok((socket.try_clone()?, socket)));
        let (socket, copying) = match socket {
            Ok(socket) => socket,
            Err(e) => {
                eprintln!("stream from {peer} broke: {e}");
                continue;
            }
        };
        let mut copy = tokio::task::spawn_blocking(move || {
            stdio::copy(copying.as_raw_fd(), libc::STDOUT_FILENO, &AtomicU64::new(0))
        });
        let copied = tokio::select! {
            copied = &mut copy => copied,
            _ = shutdown_signal() => {
                // End the copy before the report goes to the same stdout.
                let _ = socket.shutdown(std::net::Shutdown::Both);
                let _ = copy.await;
                return stopped(streams);
            }
        };
        drop(socket);
        if let Err(e) = copied.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
            eprintln!("stream from {peer} broke: {e}");
            continue;
        }
        // A peer's crash can look like a clean end of file here: the daemon knows better.
        match client.outcome(id).await {
            Ok(outcome) if outcome["end"] == "clean" => {}
            Ok(outcome) => eprintln!("stream from {peer} ended abnormally: {outcome}"),
            Err(e) => eprintln!("stream from {peer}: its outcome is unknown: {e}"),
        }
    }
}
