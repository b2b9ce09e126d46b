//! `ternctl bench TARGET [--bytes N]`: throughput and round-trip time to a peer, through its
//! built-in echo service (virtual port 7) and sealed pings.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::output::{Failure, Report};
use crate::{check_target, failure};
use tern_ctl::Client;

const ECHO_PORT: u16 = 7;
const CHUNK: usize = 64 * 1024;
const PINGS: usize = 10;

#[derive(Args)]
pub struct BenchArgs {
    target: String,
    /// Bytes to send (and receive back through the echo).
    #[arg(long, default_value_t = 64 << 20)]
    bytes: u64,
}

pub async fn run(client: &Client, args: BenchArgs) -> Result<Report, Failure> {
    check_target(&args.target)?;
    let mut rtts = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let ping = client.ping(&args.target).await.map_err(failure)?;
        rtts.push(ping["rtt_ms"].as_f64().unwrap_or(0.0));
    }
    rtts.sort_by(f64::total_cmp);

    let stream = client
        .dial(&args.target, ECHO_PORT)
        .await
        .map_err(failure)?;
    let (mut from_peer, mut to_peer) = stream.io.into_split();
    let total = args.bytes;
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        let chunk = vec![0x5a_u8; CHUNK];
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(CHUNK as u64) as usize;
            to_peer.write_all(&chunk[..n]).await?;
            sent += n as u64;
        }
        to_peer.shutdown().await
    });
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    let broken =
        |e: std::io::Error| Failure::new("stream_broken", format!("the echo stream broke: {e}"));
    loop {
        match from_peer.read(&mut buf).await.map_err(broken)? {
            0 => break,
            n => received += n as u64,
        }
    }
    sender
        .await
        .map_err(|e| Failure::new("internal", e.to_string()))?
        .map_err(broken)?;
    let elapsed = start.elapsed().max(Duration::from_micros(1));
    if received != total {
        return Err(Failure::new(
            "short_echo",
            format!("sent {total} bytes but {received} came back"),
        ));
    }
    let mib_s = total as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64();
    let median = rtts[rtts.len() / 2];
    Ok(Report {
        data: json!({
            "address": args.target,
            "bytes": total,
            "seconds": elapsed.as_secs_f64(),
            "throughput_mib_s": mib_s,
            "rtt_ms": { "median": median, "min": rtts[0], "max": rtts[rtts.len() - 1] },
        }),
        text: format!(
            "{}: {mib_s:.1} MiB/s each way ({} MiB echoed in {:.2} s); rtt median {median:.3} ms (min {:.3}, max {:.3})",
            args.target,
            total >> 20,
            elapsed.as_secs_f64(),
            rtts[0],
            rtts[rtts.len() - 1]
        ),
    })
}
