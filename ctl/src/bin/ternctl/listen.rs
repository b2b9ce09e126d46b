//! `ternctl listen PORT [--open]`: print what each incoming stream sends, one at a time.

use clap::Args;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::output::{Failure, Report};
use crate::{failure, shutdown_signal};
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
            let mut incoming = listener.accept().await.map_err(failure)?;
            eprintln!(
                "stream from {} (port {})",
                incoming.stream.peer, incoming.remote_port
            );
            let mut stdout = tokio::io::stdout();
            if let Err(e) = tokio::io::copy(&mut incoming.stream, &mut stdout).await {
                eprintln!("stream from {} broke: {e}", incoming.stream.peer);
            }
            stdout.flush().await.ok();
            streams += 1;
        }
    };
    tokio::select! {
        result = serve => result,
        _ = shutdown_signal() => Ok(Report { data: json!({ "port": args.port, "streams": streams }), text: String::new() }),
    }
}
