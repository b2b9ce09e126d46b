//! Loopback figures for the secure transport, each beside plain quinn run in the same process
//! with the same TLS configuration but without tern's socket layer.
//! `cargo bench -p tern-daemon --bench transport` (TERN_BENCH_BYTES to change the 1 GiB).

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_daemon::env::os::{OsEnv, set_buffer_sizes, wrap_udp};
use tern_daemon::transport::handshake::{self, finish_dial};
use tern_daemon::transport::socket::DemuxSocket;
use tern_daemon::{Node, TransportConfig};
use tern_proto::SecretIdentity;

const CHUNK: usize = 256 * 1024;

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
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

/// Sends `total` bytes split over `streams` tern streams from a to b.
async fn tern_throughput(a: &Node, b: &Node, total: u64, streams: u64, port: u16) -> Duration {
    let mut listener = b.listen(port, tern_daemon::Access::Open).expect("listen");
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
    let got = receiver.await.expect("receiver");
    assert_eq!(got, total / streams * streams);
    start.elapsed()
}

/// The same transfer over plain quinn endpoints with tern's TLS configuration.
async fn plain_quinn_throughput(
    a: &SecretIdentity,
    b: &SecretIdentity,
    total: u64,
    buffers: Option<usize>,
) -> Duration {
    let quic = Arc::new(TransportConfig::default().quic());
    let server_tls = handshake::tls_configs(b, quic.clone(), &OsEnv);
    let client_tls = handshake::tls_configs(a, quic, &OsEnv);
    let bind = || {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        if let Some(bytes) = buffers {
            set_buffer_sizes(&s, bytes);
        }
        s
    };
    let server = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_tls.server),
        bind(),
        Arc::new(quinn::TokioRuntime),
    )
    .expect("server endpoint");
    let client = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        bind(),
        Arc::new(quinn::TokioRuntime),
    )
    .expect("client endpoint");
    let server_addr = server.local_addr().expect("addr");
    let accept = tokio::spawn(async move {
        let connection = server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("handshake");
        let (_, recv) = connection.accept_bi().await.expect("stream");
        (drain(recv).await, server)
    });
    let connection = client
        .connect_with(client_tls.client, server_addr, "tern")
        .expect("connect")
        .await
        .expect("handshake");
    let start = Instant::now();
    let (send, _recv) = connection.open_bi().await.expect("open");
    fill(send, total).await;
    let (got, _server) = accept.await.expect("accept");
    assert_eq!(got, total);
    start.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
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
                .expect("tern handshake");
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
        let (ida, idb) = std::thread::scope(|s| {
            let a = s.spawn(|| SecretIdentity::generate().expect("random"));
            let b = s.spawn(|| SecretIdentity::generate().expect("random"));
            (a.join().expect("a"), b.join().expect("b"))
        });
        let config = TransportConfig::default();
        let a = tern_daemon::env::os::start_node(ida.clone(), UdpSocket::bind("127.0.0.1:0").expect("bind"), config.clone()).expect("node a");
        let b = tern_daemon::env::os::start_node(idb.clone(), UdpSocket::bind("127.0.0.1:0").expect("bind"), config).expect("node b");
        a.connect(b.address(), b.local_addr()).await.expect("connect");
        println!(
            "loopback, {} MiB per transfer, socket buffers granted: {} KiB receive / {} KiB send",
            total >> 20,
            a.buffer_sizes().receive >> 10,
            a.buffer_sizes().send >> 10
        );

        let plain_default = plain_quinn_throughput(&ida, &idb, total, None).await;
        let plain = plain_quinn_throughput(&ida, &idb, total, Some(8 << 20)).await;
        let one = tern_throughput(&a, &b, total, 1, 100).await;
        let sixteen = tern_throughput(&a, &b, total, 16, 101).await;
        let plain_mib = mib_per_s(total, plain);
        println!("plain quinn, 1 stream, default buffers:  {:8.1} MiB/s", mib_per_s(total, plain_default));
        println!("plain quinn, 1 stream, 8 MiB buffers:    {plain_mib:8.1} MiB/s   (reference)");
        let one_mib = mib_per_s(total, one);
        println!("tern, 1 stream:                          {one_mib:8.1} MiB/s   ratio {:.2} (goal >= 0.90)", one_mib / plain_mib);
        let sixteen_mib = mib_per_s(total, sixteen);
        println!("tern, 16 streams aggregate:              {sixteen_mib:8.1} MiB/s   ratio {:.2}", sixteen_mib / plain_mib);

        let (serial, _) = handshakes(&ida, &b, 200, 1).await;
        println!(
            "tern handshake (TLS 1.3 RPK + identity hello), 200 serial: median {:.2?}, p99 {:.2?}",
            percentile(&serial, 0.5),
            percentile(&serial, 0.99)
        );
        let (_, wall) = handshakes(&ida, &b, 1000, 16).await;
        println!("tern handshakes per second, 16 in flight: {:.0}", 1000.0 / wall.as_secs_f64());
    });
}
