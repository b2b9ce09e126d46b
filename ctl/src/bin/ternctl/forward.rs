//! `ternctl forward --listen 127.0.0.1:LPORT TARGET:PORT`: one overlay stream per local TCP
//! connection, many at once, no buffering beyond the splice.

use std::net::SocketAddr;

use clap::Args;
use serde_json::json;

use crate::output::{Failure, Report};
use crate::{attach, check_target, failure, shutdown_signal};
use tern_ctl::Client;

#[derive(Args)]
pub struct ForwardArgs {
    /// Local TCP address to accept connections on.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// TARGET:PORT (split at the last colon).
    remote: String,
}

pub async fn run(client: &Client, args: ForwardArgs) -> Result<Report, Failure> {
    let (target, port) = args
        .remote
        .rsplit_once(':')
        .and_then(|(t, p)| Some((t.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| {
            Failure::new(
                "bad_target",
                format!("`{}` is not TARGET:PORT", args.remote),
            )
        })?;
    check_target(&target)?;
    let tcp = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::new("bind", format!("cannot listen on {}: {e}", args.listen)))?;
    eprintln!("ready: forwarding {} to {target} port {port}", args.listen);
    let serve = async {
        loop {
            let (conn, from) = match tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    continue;
                }
            };
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move {
                match client.dial_pending(&target, port).await {
                    Ok(stream) => {
                        if let Err(e) = attach(stream, conn).await {
                            eprintln!("connection from {from}: {e}");
                        }
                    }
                    Err(e) => {
                        eprintln!("{}", failure(e).message);
                        // Refused or unreachable: reset, so the TCP client sees a failure.
                        let _ = conn.set_zero_linger();
                    }
                }
            });
        }
    };
    tokio::select! {
        () = serve => unreachable!("the accept loop never ends"),
        _ = shutdown_signal() => Ok(Report { data: json!({ "listen": args.listen }), text: String::new() }),
    }
}
