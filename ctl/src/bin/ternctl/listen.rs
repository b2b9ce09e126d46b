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
    let serve = async {
        loop {
            let incoming = listener.accept().await.map_err(failure)?;
            let peer = incoming.stream.peer;
            eprintln!("stream from {peer} (port {})", incoming.remote_port);
            let copied = match blocking(incoming.stream.io) {
                Ok(socket) => tokio::task::spawn_blocking(move || {
                    stdio::copy(socket.as_raw_fd(), libc::STDOUT_FILENO, &AtomicU64::new(0))
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e))),
                Err(e) => Err(e),
            };
            if let Err(e) = copied {
                eprintln!("stream from {peer} broke: {e}");
            }
            streams += 1;
        }
    };
    tokio::select! {
        result = serve => result,
        _ = shutdown_signal() => Ok(Report { data: json!({ "port": args.port, "streams": streams }), text: String::new() }),
    }
}
