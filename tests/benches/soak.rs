//! Soak: one real `ternd` serving 50 peers that open and close echo streams (each checked
//! byte for byte), send datagrams and now and then drop their connection and dial again, while
//! a garbage flood and a flood of unfinished handshakes run. Prints the daemon's resident
//! memory, open file descriptors, threads and runtime tasks before the load, after warm-up,
//! at the end of the load and once it has settled, with the end/warm-up ratios (goal: at most
//! 1.10) and the legitimate traffic's errors (goal: none).
//!
//! `cargo build --release --workspace && cargo bench -p tern-tests --bench soak`
//! (TERN_SOAK_SECS: load duration, default 600; TERN_SOAK_PEERS, default 50; TERN_SOAK_LOG:
//! where to keep the daemon's log, with TERN_TEST_LOG its level, default warn).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tern_daemon::Node;
use tern_proto::{Address, SecretIdentity};
use tern_tests::{Daemon, floods};

const ECHO_PORT: u16 = 7;
const STREAM_BYTES: usize = 4096;
/// Pause between one peer's rounds (a stream and a datagram each).
const ROUND_PAUSE: Duration = Duration::from_millis(50);
/// Rounds after which a peer closes its connection and dials again.
const ROUNDS_PER_CONNECTION: u64 = 200;
const GARBAGE_PER_SECOND: u32 = 5000;
const HANDSHAKES_PER_SECOND: u32 = 100;

#[derive(Default)]
struct Traffic {
    streams_ok: AtomicU64,
    errors: AtomicU64,
    datagrams: AtomicU64,
    redials: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: u64,
    threads: u64,
    tasks: u64,
    peers: u64,
    paths: u64,
}

/// The median of five samples a second apart, per figure: tasks and memory move with the
/// streams in flight at the instant.
fn steady_sample(victim: &Daemon) -> Sample {
    let mut samples: Vec<Sample> = (0..5)
        .map(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            sample(victim)
        })
        .collect();
    let mut median = |get: fn(&Sample) -> u64| {
        samples.sort_by_key(get);
        get(&samples[2])
    };
    Sample {
        rss_kib: median(|s| s.rss_kib),
        fds: median(|s| s.fds),
        threads: median(|s| s.threads),
        tasks: median(|s| s.tasks),
        peers: median(|s| s.peers),
        paths: median(|s| s.paths),
    }
}

fn sample(victim: &Daemon) -> Sample {
    let pid = victim.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("a /proc status field")
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count() as u64;
    let (_, doc) = victim.ternctl_json(&["status"]);
    Sample {
        rss_kib: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
        tasks: doc["data"]["tasks"].as_u64().unwrap_or(0),
        peers: doc["data"]["peers"].as_u64().unwrap_or(0),
        paths: doc["data"]["paths"].as_u64().unwrap_or(0),
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn peer_loop(
    victim: Address,
    at: std::net::SocketAddr,
    until: Instant,
    traffic: Arc<Traffic>,
) {
    let identity = SecretIdentity::generate().expect("random identity");
    let start = || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        tern_daemon::env::os::start_node(identity.clone(), socket, Default::default())
            .expect("peer node")
    };
    let mut node = start();
    let payload: Vec<u8> = (0..STREAM_BYTES).map(|i| (i * 7) as u8).collect();
    let mut round = 0u64;
    while Instant::now() < until {
        if round.is_multiple_of(ROUNDS_PER_CONNECTION) {
            if round > 0 {
                // The peer restarts: same identity, a new socket and connection.
                node.close().await;
                node = start();
                traffic.redials.fetch_add(1, Relaxed);
            }
            if let Err(e) = node.connect(victim, at).await {
                report(&traffic, format!("dial: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        round += 1;
        match echo_once(&node, victim, &payload).await {
            Ok(()) => traffic.streams_ok.fetch_add(1, Relaxed),
            Err(e) => {
                report(&traffic, e);
                0
            }
        };
        if node
            .send_datagram(victim, ECHO_PORT, 0, &payload[..512])
            .is_ok()
        {
            traffic.datagrams.fetch_add(1, Relaxed);
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
    node.close().await;
}

fn report(traffic: &Traffic, error: String) {
    if traffic.errors.fetch_add(1, Relaxed) < 5 {
        eprintln!("legitimate traffic failed: {error}");
    }
}

async fn echo_once(node: &Node, victim: Address, payload: &[u8]) -> Result<(), String> {
    let exchange = async {
        let mut stream = node
            .open_stream(victim, ECHO_PORT)
            .await
            .map_err(|e| format!("open: {e}"))?;
        stream
            .send
            .write_all(payload)
            .await
            .map_err(|e| format!("write: {e}"))?;
        stream.send.finish().map_err(|e| format!("finish: {e}"))?;
        let back = stream
            .recv
            .read_to_end(STREAM_BYTES * 2)
            .await
            .map_err(|e| format!("read: {e}"))?;
        match back == payload {
            true => Ok(()),
            false => Err(format!("echo returned {} other bytes", back.len())),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no echo within 10 s".to_string())?
}

fn main() {
    let load = Duration::from_secs(env_or("TERN_SOAK_SECS", 600));
    let peers = env_or("TERN_SOAK_PEERS", 50);
    // The allocator and the bounded tables (paths, rate limiter buckets) fill during the
    // first minutes: on a 10-minute run RSS rose 1.13x from 60 s to 180 s, then 1.03x to the
    // end. Growth is judged after that.
    let warm_up = (load * 3 / 10).max(Duration::from_secs(10));
    // SAFETY: set before any other thread of this process starts.
    if std::env::var_os("TERN_TEST_LOG").is_none() {
        unsafe { std::env::set_var("TERN_TEST_LOG", "warn") };
    }
    let victim = Daemon::start(&[]);
    let at: std::net::SocketAddr = victim.listen.parse().expect("listen address");
    let address: Address = victim.address.parse().expect("address");
    let before = sample(&victim);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let traffic = Arc::new(Traffic::default());
    let stop = Arc::new(AtomicBool::new(false));
    let garbage = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let from = std::net::UdpSocket::bind("127.0.0.2:0").expect("bind");
            floods::garbage(from, at, GARBAGE_PER_SECOND, &stop)
        }
    });
    let started = Instant::now();
    let until = started + load;
    let (warm, end) = runtime.block_on(async {
        let sources = floods::loopback_sources(64);
        let handshakes = tokio::spawn(async move {
            floods::unfinished_handshakes(at, &sources, HANDSHAKES_PER_SECOND).await
        });
        let mut peer_tasks = Vec::new();
        for _ in 0..peers {
            peer_tasks.push(tokio::spawn(peer_loop(address, at, until, traffic.clone())));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep_until((started + warm_up).into()).await;
        let warm = tokio::task::block_in_place(|| steady_sample(&victim));
        eprintln!("warm-up done after {warm_up:?}: {warm:?}");
        // The trend, a line a minute: growth that levels off is tables and the allocator
        // filling up; growth that does not is a leak.
        let mut minute = started + warm_up + Duration::from_secs(60);
        while minute + Duration::from_secs(6) < until {
            tokio::time::sleep_until(minute.into()).await;
            let now = tokio::task::block_in_place(|| sample(&victim));
            eprintln!(
                "{:>4} s: RSS {} KiB, tasks {}, paths {}",
                started.elapsed().as_secs(),
                now.rss_kib,
                now.tasks,
                now.paths
            );
            minute += Duration::from_secs(60);
        }
        tokio::time::sleep_until((until - Duration::from_secs(6)).into()).await;
        let end = tokio::task::block_in_place(|| steady_sample(&victim));
        for task in peer_tasks {
            let _ = task.await;
        }
        handshakes.abort();
        (warm, end)
    });
    stop.store(true, Relaxed);
    let garbage_sent = garbage.join().expect("garbage thread");
    // What is left once the load stopped goes within the QUIC idle timeout (60 s).
    let quiet = Instant::now();
    let mut settled = sample(&victim);
    while settled.tasks > before.tasks + 2 && quiet.elapsed() < Duration::from_secs(75) {
        std::thread::sleep(Duration::from_secs(5));
        settled = sample(&victim);
    }
    let settled_after = quiet.elapsed();
    let (_, status) = victim.ternctl_json(&["status"]);

    println!(
        "soak: {peers} peers, {load:?} of load ({warm_up:?} warm-up), {GARBAGE_PER_SECOND} garbage datagrams/s, {HANDSHAKES_PER_SECOND} unfinished handshakes/s"
    );
    println!("(settled: sampled {settled_after:.0?} after the load stopped)");
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "", "before", "warm-up", "end", "settled", "end/warm-up"
    );
    type Figure = fn(&Sample) -> u64;
    let rows: [(&str, Figure); 6] = [
        ("RSS KiB", |s| s.rss_kib),
        ("fds", |s| s.fds),
        ("threads", |s| s.threads),
        ("tasks", |s| s.tasks),
        ("peers", |s| s.peers),
        ("paths", |s| s.paths),
    ];
    let mut grew = Vec::new();
    for (name, get) in rows {
        let ratio = get(&end) as f64 / get(&warm).max(1) as f64;
        // Peers and paths are load, not leaks: bounded tables that the traffic fills.
        if ratio > 1.10 && !["peers", "paths"].contains(&name) {
            grew.push(name);
        }
        println!(
            "{name:<10} {:>10} {:>10} {:>10} {:>10} {ratio:>12.2}",
            get(&before),
            get(&warm),
            get(&end),
            get(&settled)
        );
    }
    let errors = traffic.errors.load(Relaxed);
    println!(
        "legitimate: {} echo streams verified, {} datagrams sent, {} redials, {errors} errors",
        traffic.streams_ok.load(Relaxed),
        traffic.datagrams.load(Relaxed),
        traffic.redials.load(Relaxed),
    );
    println!(
        "hostile: {garbage_sent} garbage datagrams; limits hit {}; dropped {}",
        status["data"]["limits_hit"], status["data"]["dropped"]
    );
    let verdict = match (grew.is_empty(), errors) {
        (true, 0) => "goal met: no growth beyond 10 % after warm-up, no errors".to_string(),
        _ => format!("goal missed: grew {grew:?}, {errors} errors"),
    };
    println!("{verdict}");
    if let Some(path) = std::env::var_os("TERN_SOAK_LOG") {
        std::fs::write(path, victim.log()).expect("write the daemon's log");
    }
}
