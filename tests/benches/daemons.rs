//! Two daemons in one process, each with its real local API socket; the apps are
//! `tern_ctl::Client`s. Prints app-to-app throughput beside node-to-node throughput on the
//! same two nodes (the in-process reference), and JSON-RPC round trips.
//! `cargo bench -p tern-tests --bench daemons` (TERN_BENCH_BYTES to change the 1 GiB).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_ctl::Client;
use tern_daemon::Access;
use tern_daemon::daemon::{Daemon, DaemonConfig};
use tern_daemon::env::os::OsEnv;
use tern_daemon::home::Home;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const CHUNK: usize = 256 * 1024;

async fn start(home: &std::path::Path, rendezvous: Vec<String>) -> (Arc<Daemon>, Client) {
    let home = Home::at(home);
    home.ensure_dir().expect("home");
    let api = tern_daemon::env::os::bind_local_api(&home.socket_path())
        .await
        .expect("socket");
    let daemon = Daemon::start(
        DaemonConfig::new(
            home.clone(),
            "127.0.0.1:0".parse().expect("addr"),
            rendezvous,
        ),
        OsEnv::shared(),
    )
    .expect("daemon");
    daemon.serve_api(api);
    let client = Client::for_home(Some(home.dir().to_path_buf())).expect("client");
    (daemon, client)
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

async fn write_all(mut sink: impl tokio::io::AsyncWrite + Unpin, total: u64) {
    let chunk = vec![0x5a_u8; CHUNK];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(CHUNK as u64) as usize;
        sink.write_all(&chunk[..n]).await.expect("write");
        sent += n as u64;
    }
    sink.shutdown().await.expect("shutdown");
}

async fn count(mut source: impl tokio::io::AsyncRead + Unpin) -> u64 {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match source.read(&mut buf).await.expect("read") {
            0 => return total,
            n => total += n as u64,
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let total: u64 = std::env::var("TERN_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dirs = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
        let (a, client_a) = start(dirs.0.path(), vec![]).await;
        let rendezvous = a.node().local_addr().to_string();
        let (b, client_b) = start(dirs.1.path(), vec![rendezvous]).await;
        while client_b.status().await.expect("status")["registered"] != true {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let target = a.node().address().to_string();
        println!("loopback, two daemons in one process, {} MiB per transfer", total >> 20);

        // Reference: the same two nodes, stream opened and read in-process.
        let mut listener = a.node().listen(2001, Access::Open).expect("listen");
        b.connector().connect(a.node().address()).await.expect("connect");
        let receiver = tokio::spawn(async move { count(listener.accept().await.expect("accept").recv).await });
        let start = Instant::now();
        let stream = b.node().open_stream(a.node().address(), 2001).await.expect("open");
        write_all(stream.send, total).await;
        assert_eq!(receiver.await.expect("receiver"), total);
        let in_process = mib_per_s(total, start.elapsed());
        println!("node to node, in process:                {in_process:8.1} MiB/s   (reference)");

        // App to app: client → B's local API → QUIC → A's local API → client.
        let listener = client_a.listen(2002, true).await.expect("listen");
        let receiver = tokio::spawn(async move { count(listener.accept().await.expect("accept").stream).await });
        let start = Instant::now();
        let stream = client_b.dial(&target, 2002).await.expect("dial");
        write_all(stream, total).await;
        assert_eq!(receiver.await.expect("receiver"), total);
        let app = mib_per_s(total, start.elapsed());
        println!("app to app, through both local APIs:     {app:8.1} MiB/s   ratio {:.2} (goal >= 0.80)", app / in_process);

        // JSON-RPC request/reply: a line-echoing service on A.
        let service = client_a.listen(2003, true).await.expect("listen");
        tokio::spawn(async move {
            while let Ok(incoming) = service.accept().await {
                tokio::spawn(async move {
                    let (read, mut write) = incoming.stream.io.into_split();
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let request: serde_json::Value = serde_json::from_str(&line).expect("json");
                        let reply = serde_json::json!({"jsonrpc": "2.0", "id": request["id"], "result": {}});
                        if write.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let request = |id: u64| format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/list\",\"params\":{{}}}}\n");
        // One stream per request, as `ternctl send` does.
        let mut per_stream = Vec::new();
        for id in 0..500 {
            let start = Instant::now();
            let stream = client_b.dial(&target, 2003).await.expect("dial");
            let (read, mut write) = stream.io.into_split();
            write.write_all(request(id).as_bytes()).await.expect("write");
            let mut reply = String::new();
            BufReader::new(read).read_line(&mut reply).await.expect("reply");
            per_stream.push(start.elapsed());
        }
        per_stream.sort();
        println!(
            "JSON-RPC round trip, new stream each:    median {:.3?}, p99 {:.3?} (500 requests)",
            percentile(&per_stream, 0.5),
            percentile(&per_stream, 0.99)
        );
        // Many requests on one stream, as an MCP session does.
        let stream = client_b.dial(&target, 2003).await.expect("dial");
        let (read, mut write) = stream.io.into_split();
        let mut replies = BufReader::new(read);
        let mut on_stream = Vec::new();
        for id in 0..2000 {
            let start = Instant::now();
            write.write_all(request(id).as_bytes()).await.expect("write");
            let mut reply = String::new();
            replies.read_line(&mut reply).await.expect("reply");
            on_stream.push(start.elapsed());
        }
        on_stream.sort();
        println!(
            "JSON-RPC round trip, one open stream:    median {:.3?}, p99 {:.3?} (2000 requests)",
            percentile(&on_stream, 0.5),
            percentile(&on_stream, 0.99)
        );
    });
}
