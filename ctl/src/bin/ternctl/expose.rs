//! `ternctl expose PORT --to 127.0.0.1:TPORT [--open]`: each incoming stream is connected to
//! a local TCP service, many at once.

use std::net::SocketAddr;

use clap::Args;
use serde_json::json;

use crate::output::{Failure, Report};
use crate::{attach, failure, shutdown_signal};
use tern_ctl::Client;

#[derive(Args)]
pub struct ExposeArgs {
    port: u16,
    /// The local TCP service (a bare port means 127.0.0.1).
    #[arg(long, value_name = "ADDR", value_parser = parse_target)]
    to: SocketAddr,
    /// Accept streams from any peer, not only trusted ones.
    #[arg(long)]
    open: bool,
}

fn parse_target(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| {
            text.parse::<u16>()
                .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        })
        .map_err(|_| format!("`{text}` is not HOST:PORT or a port"))
}

pub async fn run(client: &Client, args: ExposeArgs) -> Result<Report, Failure> {
    let listener = client.listen(args.port, args.open).await.map_err(failure)?;
    eprintln!("ready: exposing {} as port {}", args.to, args.port);
    let serve = async {
        loop {
            let (stream, _) = listener.accept_pending().await.map_err(failure)?;
            let to = args.to;
            let client = client.clone();
            tokio::spawn(async move {
                let (peer, id) = (stream.peer, stream.id);
                match tokio::net::TcpStream::connect(to).await {
                    Ok(tcp) => {
                        if let Err(e) = attach(stream, tcp).await {
                            eprintln!("stream from {peer} to {to}: {e}");
                        }
                    }
                    Err(e) => {
                        eprintln!("cannot reach {to} for a stream from {peer}: {e}");
                        let _ = client.reset(id, 1).await;
                    }
                }
            });
        }
    };
    tokio::select! {
        result = serve => result,
        _ = shutdown_signal() => Ok(Report { data: json!({ "port": args.port }), text: String::new() }),
    }
}
