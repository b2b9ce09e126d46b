//! The data path in one run: every figure beside its reference, as a ratio (the machines are
//! noisy, so only ratios within one run mean much). Run in release:
//! `cargo bench -p tern-tests --bench datapath`
//! (TERN_BENCH_BYTES sets the bulk size, default 1 GiB; TERN_BENCH_RELAY_BYTES the relayed
//! echo, default 256 MiB; TERN_BENCH_PEERS the idle peers, default 1,000; 0 skips either. The
//! relay rows need root for the kernel lab.)
//!
//! References: plain quinn in this process with tern's TLS configuration (throughput, CPU per
//! GiB, 200 B request/reply on an open stream). tern's own figures come from in-process nodes
//! (the transport), real `ternd`/`ternctl` processes (what users run), and the kernel lab
//! (relay against direct through the same NATs).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_ctl::Client;
use tern_daemon::Access;
use tern_daemon::env::os::{OsEnv, set_buffer_sizes, start_node, wrap_udp};
use tern_daemon::transport::handshake::{self, finish_dial};
use tern_daemon::transport::socket::DemuxSocket;
use tern_daemon::{Node, TransportConfig};
use tern_netsim::internet::{Internet, NatKind};
use tern_proto::record::Record;
use tern_proto::{Address, SecretIdentity};
use tern_tests::{Daemon, LabDaemon, binary, tcp_service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHUNK: usize = 256 * 1024;
const REQUEST: usize = 200;
const ROUND_TRIPS: usize = 2000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One printed row: the figure, and its ratio to the reference with the goal it answers.
fn row(label: &str, figure: String, ratio: Option<(f64, &str)>) {
    let judged = ratio.map_or(String::new(), |(r, goal)| format!("{r:6.2}  {goal}"));
    println!("{label:<52} {figure:<34} {judged}");
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT MET" }
}

/// CPU time (user + system) a process has used so far.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the parenthesised command: state, ppid, …; utime and stime are the 12th and 13th.
    let after_command: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| {
        after_command
            .get(n)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64((field(11) + field(12)) as f64 / per_second)
}

/// CPU time (user + system) used by this process (`RUSAGE_SELF`) or its reaped children.
fn cpu_of(who: libc::c_int) -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn drain(mut recv: quinn::RecvStream) -> u64 {
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.expect("read") {
        total += chunk.bytes.len() as u64;
    }
    total
}

async fn fill(mut send: quinn::SendStream, bytes: u64) {
    let chunk = bytes::Bytes::from(vec![0x5a; CHUNK]);
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        send.write_chunk(chunk.slice(..n)).await.expect("write");
        sent += n as u64;
    }
    send.finish().expect("finish");
    let _ = send.stopped().await;
}

/// Echoes `REQUEST`-byte messages until the stream ends.
async fn echo_requests(
    mut recv: impl tokio::io::AsyncRead + Unpin,
    mut send: impl tokio::io::AsyncWrite + Unpin,
) {
    let mut buf = [0u8; REQUEST];
    while recv.read_exact(&mut buf).await.is_ok() {
        if send.write_all(&buf).await.is_err() {
            return;
        }
    }
}

/// `ROUND_TRIPS` request/replies of `REQUEST` bytes on one open stream, sorted.
async fn round_trips(
    mut recv: impl tokio::io::AsyncRead + Unpin,
    mut send: impl tokio::io::AsyncWrite + Unpin,
) -> Vec<Duration> {
    let request = [0x42u8; REQUEST];
    let mut reply = [0u8; REQUEST];
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let start = Instant::now();
        send.write_all(&request).await.expect("request");
        recv.read_exact(&mut reply).await.expect("reply");
        times.push(start.elapsed());
    }
    times.sort();
    times
}

/// Plain quinn endpoints (tern's TLS configuration, 8 MiB socket buffers, no tern socket
/// layer): bulk throughput with this process's CPU per GiB, then 200 B round trips.
async fn plain_quinn(
    a: &SecretIdentity,
    b: &SecretIdentity,
    total: u64,
) -> (f64, Duration, Vec<Duration>) {
    let quic = Arc::new(TransportConfig::default().quic());
    let server_tls = handshake::tls_configs(b, quic.clone(), &OsEnv);
    let client_tls = handshake::tls_configs(a, quic, &OsEnv);
    let bind = || {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        set_buffer_sizes(&s, 8 << 20);
        s
    };
    let endpoint = |server| {
        quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            server,
            bind(),
            Arc::new(quinn::TokioRuntime),
        )
        .expect("endpoint")
    };
    let server = endpoint(Some(server_tls.server));
    let client = endpoint(None);
    let server_addr = server.local_addr().expect("addr");
    let accept = tokio::spawn(async move {
        let connection = server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("handshake");
        let (_, recv) = connection.accept_bi().await.expect("bulk stream");
        let bulk = drain(recv).await;
        let (send, recv) = connection.accept_bi().await.expect("echo stream");
        echo_requests(recv, send).await;
        (bulk, server)
    });
    let connection = client
        .connect_with(client_tls.client, server_addr, "tern")
        .expect("connect")
        .await
        .expect("handshake");
    let (cpu, start) = (cpu_of(libc::RUSAGE_SELF), Instant::now());
    let (send, _recv) = connection.open_bi().await.expect("open");
    fill(send, total).await;
    // The receiver has everything once the sender's stream is acknowledged as finished.
    let elapsed = start.elapsed();
    let cpu = cpu_of(libc::RUSAGE_SELF) - cpu;
    let (send, recv) = connection.open_bi().await.expect("open");
    let times = round_trips(recv, send).await;
    connection.close(0u32.into(), b"done");
    let (got, _server) = accept.await.expect("server");
    assert_eq!(got, total);
    (mib_per_s(total, elapsed), cpu, times)
}

/// `total` bytes split over `streams` tern streams from `a` to `b` (in-process nodes).
async fn node_throughput(a: &Node, b: &Node, total: u64, streams: u64, port: u16) -> f64 {
    let mut listener = b.listen(port, Access::Open).expect("listen");
    let receiver = tokio::spawn(async move {
        let mut sinks = Vec::new();
        for _ in 0..streams {
            let stream = listener.accept().await.expect("accept");
            sinks.push(tokio::spawn(drain(stream.recv)));
        }
        let mut got = 0;
        for s in sinks {
            got += s.await.expect("sink");
        }
        got
    });
    let start = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..streams {
        let stream = a.open_stream(b.address(), port).await.expect("open");
        senders.push(tokio::spawn(fill(stream.send, total / streams)));
    }
    for s in senders {
        s.await.expect("sender");
    }
    assert_eq!(receiver.await.expect("receiver"), total / streams * streams);
    mib_per_s(total, start.elapsed())
}

/// `count` fresh tern handshakes (TLS + identity hello + address check), `parallel` at a time.
async fn handshakes(
    me: &SecretIdentity,
    server: &Node,
    count: usize,
    parallel: usize,
) -> (Vec<Duration>, Duration) {
    let quic = Arc::new(TransportConfig::default().quic());
    let tls = handshake::tls_configs(me, quic, &OsEnv);
    let bound = wrap_udp(UdpSocket::bind("127.0.0.1:0").expect("bind"), 8 << 20).expect("socket");
    let (socket, _diverted) = DemuxSocket::new(
        bound.socket,
        me.address(),
        TransportConfig::default().relay_packets_per_second,
        Default::default(),
    )
    .expect("socket");
    let mut config = quinn::EndpointConfig::default();
    config.grease_quic_bit(false);
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        config,
        None,
        socket.clone(),
        Arc::new(quinn::TokioRuntime),
    )
    .expect("endpoint");
    let target = socket
        .paths()
        .synthetic_for(tern_daemon::transport::paths::Route::Direct(
            server.local_addr(),
        ));
    let peer = server.address();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(parallel));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..count {
        let permit = semaphore.clone().acquire_owned().await.expect("semaphore");
        let (endpoint, client, me) = (endpoint.clone(), tls.client.clone(), me.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let began = Instant::now();
            let connecting = endpoint
                .connect_with(client, target, "tern")
                .expect("connect");
            let verified = finish_dial(connecting, &me, Some(peer))
                .await
                .expect("handshake");
            let took = began.elapsed();
            verified.connection.close(0u32.into(), b"bench");
            took
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        times.push(t.await.expect("handshake task"));
    }
    let wall = start.elapsed();
    times.sort();
    (times, wall)
}

/// A TCP sink on loopback that counts what one connection sends, closing after its EOF.
fn tcp_sink() -> (SocketAddr, std::thread::JoinHandle<(u64, Instant)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("sink");
    let addr = listener.local_addr().expect("sink address");
    let counting = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match conn.read(&mut buf).expect("sink read") {
                0 => return (total, Instant::now()),
                n => total += n as u64,
            }
        }
    });
    (addr, counting)
}

/// `total` bytes into `ternctl connect`'s stdin → ternd → QUIC → ternd → `ternctl expose` →
/// a TCP sink. Gives MiB/s and the CPU all four tern processes spent.
fn ternctl_connect_bulk(target: &Daemon, from: &Daemon, total: u64) -> (f64, Duration) {
    let (sink, counted) = tcp_sink();
    let expose = target.serve(&["expose", "3000", "--to", &sink.to_string(), "--open"]);
    let daemons_cpu =
        || process_cpu(target.pid()) + process_cpu(from.pid()) + process_cpu(expose.0.id());
    let before = daemons_cpu();
    let start = Instant::now();
    let mut connect = Command::new(binary("ternctl"))
        .arg("--home")
        .arg(from.home.path())
        .args(["connect", &target.address, "3000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("ternctl connect");
    let mut stdin = connect.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        let chunk = vec![0x5a_u8; 1 << 20];
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(chunk.len() as u64) as usize;
            stdin.write_all(&chunk[..n]).expect("ternctl stdin");
            sent += n as u64;
        }
    });
    let (got, done) = counted.join().expect("sink");
    feeder.join().expect("feeder");
    let elapsed = done - start;
    // Its CPU time: what the children reaped so far used, before and after reaping it.
    let reaped = cpu_of(libc::RUSAGE_CHILDREN);
    connect.wait().expect("ternctl connect exits");
    let connect_cpu = cpu_of(libc::RUSAGE_CHILDREN) - reaped;
    assert_eq!(got, total, "the sink got every byte");
    let cpu = daemons_cpu() - before + connect_cpu;
    (mib_per_s(total, elapsed), cpu)
}

fn echo_tcp(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = [0u8; REQUEST];
    while conn.read_exact(&mut buf).is_ok() {
        if conn.write_all(&buf).is_err() {
            return;
        }
    }
}

/// 200 B round trips: a TCP client → `ternctl forward` → … → `ternctl expose` → TCP echo.
fn forward_expose_round_trips(target: &Daemon, from: &Daemon) -> Vec<Duration> {
    let echo = tcp_service(echo_tcp);
    let (_exposed, _forward, local) =
        target.expose_to(from, 3001, &format!("127.0.0.1:{echo}"), true);
    let mut conn = TcpStream::connect(local).expect("connect to forward");
    conn.set_nodelay(true).expect("nodelay");
    let (request, mut reply) = ([0x42u8; REQUEST], [0u8; REQUEST]);
    // One exchange first: the dial and the first stream are not round trips.
    conn.write_all(&request).expect("request");
    conn.read_exact(&mut reply).expect("reply");
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let start = Instant::now();
        conn.write_all(&request).expect("request");
        conn.read_exact(&mut reply).expect("reply");
        times.push(start.elapsed());
    }
    times.sort();
    times
}

/// Opens a stream on a live connection and waits for one byte echoed, `count` times.
async fn new_stream_echoes(from: &Node, to: Address, port: u16, count: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        let mut stream = from.open_stream(to, port).await.expect("open");
        stream.send.write_all(b"x").await.expect("write");
        let mut byte = [0u8; 1];
        stream.recv.read_exact(&mut byte).await.expect("echo");
        times.push(start.elapsed());
    }
    times.sort();
    times
}

fn echo_on(node: &Node, port: u16) {
    let mut listener = node.listen(port, Access::Open).expect("listen");
    tokio::spawn(async move {
        while let Some(mut stream) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut stream.recv, &mut stream.send).await;
                let _ = stream.send.shutdown().await;
            });
        }
    });
}

fn small_buffers() -> TransportConfig {
    TransportConfig {
        socket_buffer_bytes: 256 << 10,
        ..TransportConfig::default()
    }
}

/// One daemon with `count` idle peers connected (resident memory per peer), those peers'
/// registrations with it, and lookups from all of them at once.
async fn scale(count: usize) {
    let target = Daemon::start(&[]);
    let address: Address = target.address.parse().expect("address");
    let at: SocketAddr = target.listen.parse().expect("listen");
    let identities = tern_netsim::fixture::cached_identities(count);
    let peers: Vec<Arc<Node>> = identities
        .iter()
        .map(|id| {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
            Arc::new(start_node(id.clone(), socket, small_buffers()).expect("node"))
        })
        .collect();
    let idle_rss = rss_kib(target.pid());
    let connects = parallel(&peers, 32, move |node| async move {
        node.connect(address, at).await.map_err(|e| e.to_string())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_peer = rss_kib(target.pid()).saturating_sub(idle_rss) as f64 / count as f64;
    row(
        &format!("one ternd, {count} idle peers connected: RSS per peer"),
        format!("{per_peer:.1} KiB ({} failed)", connects.1),
        Some((per_peer / 64.0, verdict(per_peer <= 64.0))),
    );

    let started = Instant::now();
    let owners: Vec<(Arc<Node>, SecretIdentity)> = peers
        .iter()
        .cloned()
        .zip(identities.iter().cloned())
        .collect();
    let registered = parallel(&owners, 32, move |(node, identity)| async move {
        let now = node.unix_now();
        let record =
            Record::sign(&identity, &[node.local_addr()], None, 1, now + 300).expect("record");
        tern_daemon::rendezvous::register(&node, address, record)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    let registrations = registered.0 as f64 / started.elapsed().as_secs_f64();
    row(
        &format!("rendezvous: registrations, {count} nodes, 32 at once"),
        format!("{registrations:.0}/s ({} refused)", registered.1),
        None,
    );

    let addresses: Arc<Vec<Address>> = Arc::new(peers.iter().map(|n| n.address()).collect());
    let per_node = 20;
    let started = Instant::now();
    let looked = parallel(&peers, 64, move |node| {
        let addresses = addresses.clone();
        async move {
            let me = addresses
                .iter()
                .position(|a| *a == node.address())
                .unwrap_or(0);
            for k in 1..=per_node {
                let wanted = addresses[(me + k * 7) % addresses.len()];
                match tern_daemon::rendezvous::lookup(&node, address, wanted).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(format!("{wanted} not found")),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        }
    })
    .await;
    let lookups = (looked.0 * per_node) as f64 / started.elapsed().as_secs_f64();
    row(
        &format!("rendezvous: lookups, {count} nodes, 64 at once"),
        format!("{lookups:.0}/s ({} nodes failed)", looked.1),
        Some((lookups / 20_000.0, verdict(lookups >= 20_000.0))),
    );
}

/// Runs `job` for every item, `width` at a time; (succeeded, failed).
async fn parallel<T: Clone, F, Fut>(items: &[T], width: usize, job: F) -> (usize, usize)
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let semaphore = Arc::new(tokio::sync::Semaphore::new(width));
    let mut tasks = Vec::new();
    for item in items {
        let permit = semaphore.clone().acquire_owned().await.expect("semaphore");
        let work = job(item.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            work.await
        }));
    }
    let mut outcome = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => outcome.0 += 1,
            Err(e) => {
                if outcome.1 == 0 {
                    eprintln!("first failure: {e}");
                }
                outcome.1 += 1;
            }
        }
    }
    outcome
}

/// Echo throughput (`bulk` bytes each way) between a lab pair, and the path it took.
async fn lab_pair_throughput(
    net: &mut Internet,
    rendezvous: &[String],
    kind: NatKind,
    n: usize,
    bulk: u64,
) -> (f64, &'static str) {
    let (host_a, _) = net.behind_nat(&format!("a{n}"), kind).expect("site a");
    let (host_b, _) = net.behind_nat(&format!("b{n}"), kind).expect("site b");
    let (a, b) = (
        LabDaemon::start(&host_a, 7440, rendezvous),
        LabDaemon::start(&host_b, 7440, rendezvous),
    );
    for node in [&a, &b] {
        while node.daemon.status()["registered"] != true {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    echo_on(b.daemon.node(), 2000);
    let peer = b.daemon.node().address();
    a.daemon.connector().connect(peer).await.expect("connect");
    let path = a
        .daemon
        .node()
        .peers()
        .iter()
        .find(|p| p.address == peer)
        .map_or("none", |p| p.path);
    let stream = a.daemon.apps().dial(peer, 2000).await.expect("dial");
    let start = Instant::now();
    let writer = tokio::spawn(fill(stream.send, bulk));
    let got = drain(stream.recv).await;
    writer.await.expect("writer");
    assert_eq!(got, bulk);
    (mib_per_s(bulk, start.elapsed()), path)
}

/// Direct (two home NATs) against relayed (two symmetric NATs) through one kernel lab; the
/// relay is a real ternd process, for its CPU per relayed GiB.
async fn relay_against_direct(reference_cpu_per_gib: f64) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        row(
            "relayed vs direct (kernel lab)",
            "skipped: needs root".into(),
            None,
        );
        return;
    }
    let bulk = env_or("TERN_BENCH_RELAY_BYTES", 256 << 20);
    if bulk == 0 {
        row(
            "relayed vs direct (kernel lab)",
            "skipped: TERN_BENCH_RELAY_BYTES=0".into(),
            None,
        );
        return;
    }
    let mut net = Internet::new().expect("lab");
    let public = net.public_host("rendezvous").expect("public host");
    let relay = Daemon::start_in(
        Some(&public.namespace),
        &format!("{}:7440", public.address),
        &[],
    );
    let rendezvous = vec![relay.listen.clone()];
    let (direct, path) =
        lab_pair_throughput(&mut net, &rendezvous, NatKind::HomeRouter, 0, bulk).await;
    assert_eq!(path, "direct", "two home NATs end direct");
    let cpu_before = process_cpu(relay.pid());
    let (relayed, path) =
        lab_pair_throughput(&mut net, &rendezvous, NatKind::Symmetric, 1, bulk).await;
    assert_eq!(path, "relay", "two symmetric NATs stay on the relay");
    let relay_cpu = process_cpu(relay.pid()) - cpu_before;
    let dropped = relay.ternctl_json(&["status"]).1["data"]["dropped"].clone();
    // Echo: every byte crosses the relay twice.
    let per_gib = relay_cpu.as_secs_f64() / (2 * bulk) as f64 * (1u64 << 30) as f64;
    row(
        &format!("direct through two home NATs ({} MiB echo)", bulk >> 20),
        format!("{direct:.1} MiB/s"),
        None,
    );
    row(
        "relayed through two symmetric NATs",
        format!("{relayed:.1} MiB/s"),
        Some((relayed / direct, verdict(relayed / direct >= 0.7))),
    );
    row(
        "relay node CPU per relayed GiB (vs quinn's per GiB)",
        format!("{per_gib:.2} s"),
        Some((per_gib / reference_cpu_per_gib, "")),
    );
    row(
        "relay node drops (rate limit, queue, unroutable)",
        dropped.to_string(),
        None,
    );
}

fn main() {
    // SAFETY: no other thread runs yet. The daemons this starts log warnings only.
    unsafe { std::env::set_var("TERN_TEST_LOG", "warn") };
    let total = env_or("TERN_BENCH_BYTES", 1 << 30);
    let gib = total as f64 / (1u64 << 30) as f64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let ids: Vec<SecretIdentity> = tern_netsim::fixture::cached_identities(2);
        let (ida, idb) = (ids[0].clone(), ids[1].clone());
        println!(
            "loopback, {} MiB per bulk transfer; ratio = figure / reference",
            total >> 20
        );
        println!("{:<52} {:<34} ratio  goal", "", "figure");

        let (quinn_mib, quinn_cpu, quinn_rtt) = plain_quinn(&ida, &idb, total).await;
        let quinn_cpu_per_gib = quinn_cpu.as_secs_f64() / gib;
        let (quinn_p50, quinn_p99) = (percentile(&quinn_rtt, 0.5), percentile(&quinn_rtt, 0.99));
        row(
            "plain quinn in process, 1 stream",
            format!("{quinn_mib:.1} MiB/s"),
            Some((1.0, "reference")),
        );
        row(
            "plain quinn CPU per GiB (sender and receiver)",
            format!("{quinn_cpu_per_gib:.2} s"),
            Some((1.0, "reference")),
        );
        row(
            "plain quinn 200 B request/reply, open stream",
            format!(
                "p50 {:.0} µs, p99 {:.0} µs",
                micros(quinn_p50),
                micros(quinn_p99)
            ),
            Some((1.0, "reference")),
        );

        let config = TransportConfig::default();
        let bind = || UdpSocket::bind("127.0.0.1:0").expect("bind");
        let a = start_node(ida.clone(), bind(), config.clone()).expect("node a");
        let b = start_node(idb.clone(), bind(), config).expect("node b");
        a.connect(b.address(), b.local_addr())
            .await
            .expect("connect");
        let one = node_throughput(&a, &b, total, 1, 100).await;
        row(
            "tern node to node, 1 stream",
            format!("{one:.1} MiB/s"),
            Some((one / quinn_mib, "")),
        );
        let sixteen = node_throughput(&a, &b, total, 16, 101).await;
        row(
            "tern node to node, 16 streams",
            format!("{sixteen:.1} MiB/s"),
            Some((sixteen / quinn_mib, "")),
        );
        echo_on(&b, 102);
        let new_stream = new_stream_echoes(&a, b.address(), 102, 1000).await;
        let p50 = percentile(&new_stream, 0.5);
        row(
            "new stream on a live connection -> 1 B echo",
            format!(
                "p50 {:.0} µs, p99 {:.0} µs",
                micros(p50),
                micros(percentile(&new_stream, 0.99))
            ),
            Some((
                p50.as_secs_f64() / 200e-6,
                verdict(p50 <= Duration::from_micros(200)),
            )),
        );
        let mut cold = Vec::new();
        for n in 0..10 {
            let fresh = start_node(
                SecretIdentity::from_seed([n; 32]),
                bind(),
                TransportConfig::default(),
            )
            .expect("node");
            let start = Instant::now();
            fresh
                .connect(b.address(), b.local_addr())
                .await
                .expect("connect");
            cold.extend(
                new_stream_echoes(&fresh, b.address(), 102, 1)
                    .await
                    .into_iter()
                    .map(|_| start.elapsed()),
            );
        }
        cold.sort();
        let p50 = percentile(&cold, 0.5);
        row(
            "cold dial (handshake) -> 1 B echo, 10 fresh nodes",
            format!(
                "p50 {:.2} ms, max {:.2} ms",
                p50.as_secs_f64() * 1e3,
                cold[cold.len() - 1].as_secs_f64() * 1e3
            ),
            Some((
                p50.as_secs_f64() / 2e-3,
                verdict(p50 <= Duration::from_millis(2)),
            )),
        );
        let (serial, _) = handshakes(&ida, &b, 200, 1).await;
        let (_, wall) = handshakes(&ida, &b, 1000, 16).await;
        row(
            "tern handshakes: 200 serial; 1,000 with 16 in flight",
            format!(
                "p50 {:.2} ms; {:.0}/s",
                percentile(&serial, 0.5).as_secs_f64() * 1e3,
                1000.0 / wall.as_secs_f64()
            ),
            None,
        );

        // What users run: two ternd processes, apps through their local APIs.
        let (target, from) = Daemon::pair();
        from.wait_registered();
        let (client_a, client_b) = (
            Client::for_home(Some(target.home.path().to_path_buf())).expect("client"),
            Client::for_home(Some(from.home.path().to_path_buf())).expect("client"),
        );
        let sink = client_a.listen(2002, true).await.expect("listen");
        let receiver = tokio::spawn(async move {
            let mut stream = sink.accept().await.expect("accept").stream;
            let mut buf = vec![0u8; CHUNK];
            let mut got = 0u64;
            while let n @ 1.. = stream.read(&mut buf).await.expect("read") {
                got += n as u64;
            }
            got
        });
        let start = Instant::now();
        let mut stream = client_b.dial(&target.address, 2002).await.expect("dial");
        let chunk = vec![0x5a_u8; CHUNK];
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(CHUNK as u64) as usize;
            stream.write_all(&chunk[..n]).await.expect("write");
            sent += n as u64;
        }
        stream.shutdown().await.expect("shutdown");
        assert_eq!(receiver.await.expect("receiver"), total);
        let app = mib_per_s(total, start.elapsed());
        row(
            "app to app, client library (two ternd)",
            format!("{app:.1} MiB/s"),
            Some((app / quinn_mib, "")),
        );

        let (connect_mib, connect_cpu) = ternctl_connect_bulk(&target, &from, total);
        let ratio = connect_mib / quinn_mib;
        row(
            "ternctl connect -> expose -> TCP sink",
            format!("{connect_mib:.1} MiB/s"),
            Some((ratio, verdict(ratio >= 0.8))),
        );
        let per_gib = connect_cpu.as_secs_f64() / gib;
        let ratio = per_gib / quinn_cpu_per_gib;
        row(
            "  CPU per GiB, ternd x2 + ternctl x2",
            format!("{per_gib:.2} s"),
            Some((ratio, verdict(ratio <= 1.5))),
        );

        let service = client_a.listen(2003, true).await.expect("listen");
        tokio::spawn(async move {
            while let Ok(incoming) = service.accept().await {
                let (recv, send) = incoming.stream.io.into_split();
                tokio::spawn(echo_requests(recv, send));
            }
        });
        let stream = client_b.dial(&target.address, 2003).await.expect("dial");
        let (recv, send) = stream.io.into_split();
        let library = round_trips(recv, send).await;
        let p50 = percentile(&library, 0.5);
        let ratio = p50.as_secs_f64() / quinn_p50.as_secs_f64();
        row(
            "client library 200 B request/reply, open stream",
            format!(
                "p50 {:.0} µs, p99 {:.0} µs",
                micros(p50),
                micros(percentile(&library, 0.99))
            ),
            Some((ratio, verdict(ratio <= 1.2))),
        );
        let forwarded = tokio::task::spawn_blocking(move || {
            let times = forward_expose_round_trips(&target, &from);
            (times, target, from)
        })
        .await
        .expect("forward");
        let (forwarded, target, from) = forwarded;
        let (p50, p99) = (percentile(&forwarded, 0.5), percentile(&forwarded, 0.99));
        let (r50, r99) = (
            p50.as_secs_f64() / quinn_p50.as_secs_f64(),
            p99.as_secs_f64() / quinn_p99.as_secs_f64(),
        );
        row(
            "forward <-> expose 200 B request/reply (TCP)",
            format!("p50 {:.0} µs, p99 {:.0} µs", micros(p50), micros(p99)),
            Some((r50, verdict(r50 <= 1.5 && r99 <= 2.0))),
        );
        row("  p99 ratio", String::new(), Some((r99, "")));
        drop((target, from));

        relay_against_direct(quinn_cpu_per_gib).await;
        match env_or("TERN_BENCH_PEERS", 1000) as usize {
            0 => row("scale", "skipped: TERN_BENCH_PEERS=0".into(), None),
            peers => scale(peers).await,
        }
    });
}
