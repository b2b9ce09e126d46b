//! `ternctl bench TARGET [--bytes N]`: throughput and round-trip time to a peer, through its
//! built-in echo service (virtual port 7) and sealed pings, and 200-byte request/reply round
//! trips on one open echo stream (what an agent's JSON-RPC call costs).

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
const REQUEST: usize = 200;
const ROUND_TRIPS: usize = 1000;

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
    let (p50, p99) = request_reply(client, &args.target).await?;
    Ok(Report {
        data: json!({
            "address": args.target,
            "bytes": total,
            "seconds": elapsed.as_secs_f64(),
            "throughput_mib_s": mib_s,
            "rtt_ms": { "median": median, "min": rtts[0], "max": rtts[rtts.len() - 1] },
            "request_reply_us": { "p50": p50, "p99": p99, "bytes": REQUEST, "round_trips": ROUND_TRIPS },
        }),
        text: format!(
            "{}: {mib_s:.1} MiB/s each way ({} MiB echoed in {:.2} s); rtt median {median:.3} ms (min {:.3}, max {:.3}); {REQUEST} B request/reply p50 {p50:.0} µs, p99 {p99:.0} µs",
            args.target,
            total >> 20,
            elapsed.as_secs_f64(),
            rtts[0],
            rtts[rtts.len() - 1]
        ),
    })
}

/// 200-byte writes each answered by the echo before the next: p50 and p99 in µs.
async fn request_reply(client: &Client, target: &str) -> Result<(f64, f64), Failure> {
    let stream = client.dial(target, ECHO_PORT).await.map_err(failure)?;
    let (mut from_peer, mut to_peer) = stream.io.into_split();
    let broken =
        |e: std::io::Error| Failure::new("stream_broken", format!("the echo stream broke: {e}"));
    let request = [0x72_u8; REQUEST];
    let mut answer = [0u8; REQUEST];
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let began = Instant::now();
        to_peer.write_all(&request).await.map_err(broken)?;
        from_peer.read_exact(&mut answer).await.map_err(broken)?;
        times.push(began.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[ROUND_TRIPS / 2], times[ROUND_TRIPS * 99 / 100]))
}
