//! Two or more nodes on loopback, through the real UDP socket layer.

use std::net::{SocketAddr, UdpSocket};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tern_daemon::node::DialError;
use tern_daemon::transport::handshake::HandshakeError;
use tern_daemon::{Access, Node, TransportConfig};
use tern_proto::stream::StreamStatus;
use tern_proto::{IdentityError, SecretIdentity};

/// Identities cost a nonce search each: make a handful once, in parallel.
fn identity(n: usize) -> SecretIdentity {
    static IDS: OnceLock<Vec<SecretIdentity>> = OnceLock::new();
    IDS.get_or_init(|| {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|i| s.spawn(move || SecretIdentity::from_seed([i as u8 + 10; 32])))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    })[n]
        .clone()
}

fn node(n: usize) -> Node {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    tern_daemon::env::os::start_node(identity(n), socket, TransportConfig::default()).unwrap()
}

/// Deterministic test data, different per stream.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_on_many_ports_carry_data_both_ways_byte_exact() {
    let (a, b) = (node(0), node(1));
    const PORTS: u16 = 8;
    const STREAMS_PER_PORT: u64 = 4;
    const LEN: usize = 300_000;

    // B answers each stream with the SHA-256 of what it got, then its own pattern, so both
    // directions carry distinct data.
    for port in 0..PORTS {
        let mut listener = b.listen(1000 + port, Access::Open).unwrap();
        tokio::spawn(async move {
            while let Some(mut stream) = listener.accept().await {
                tokio::spawn(async move {
                    let got = stream.recv.read_to_end(64 << 20).await.unwrap();
                    let seed = u64::from_be_bytes(got[..8].try_into().unwrap());
                    stream.send.write_all(&sha(&got)).await.unwrap();
                    stream
                        .send
                        .write_all(&pattern(seed + 1, LEN))
                        .await
                        .unwrap();
                    stream.send.finish().unwrap();
                    let _ = stream.send.stopped().await;
                });
            }
        });
    }
    a.connect(b.address(), b.local_addr()).await.unwrap();

    let mut tasks = Vec::new();
    for port in 0..PORTS {
        for i in 0..STREAMS_PER_PORT {
            let a = a.clone();
            let peer = b.address();
            tasks.push(tokio::spawn(async move {
                let seed = u64::from(port) * 100 + i;
                let mut data = seed.to_be_bytes().to_vec();
                data.extend(pattern(seed, LEN));
                let mut stream = a.open_stream(peer, 1000 + port).await.unwrap();
                assert_eq!(stream.peer, peer);
                stream.send.write_all(&data).await.unwrap();
                stream.send.finish().unwrap();
                let back = stream.recv.read_to_end(64 << 20).await.unwrap();
                assert_eq!(&back[..32], &sha(&data), "A→B bytes differ on port {port}");
                assert_eq!(
                    sha(&back[32..]),
                    sha(&pattern(seed + 1, LEN)),
                    "B→A bytes differ"
                );
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every stream rode the one connection.
    assert_eq!(a.peers().len(), 1);
    assert_eq!(b.peers().len(), 1);
    assert_eq!(b.peers()[0].address, a.address());
}

#[tokio::test]
async fn a_key_that_does_not_derive_the_dialled_address_is_refused_naming_both() {
    let (a, b) = (node(0), node(1));
    let impostor_of = identity(2).address();
    let err = a.connect(impostor_of, b.local_addr()).await.unwrap_err();
    match &err {
        DialError::Handshake {
            source:
                HandshakeError::Identity(IdentityError::AddressMismatch {
                    expected,
                    presented,
                }),
            ..
        } => {
            assert_eq!(*expected, impostor_of);
            assert_eq!(*presented, b.address());
        }
        other => panic!("expected an address mismatch, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&impostor_of.to_string()) && text.contains(&b.address().to_string()),
        "{text}"
    );
    assert!(a.peers().is_empty());
    // The listener did not keep a connection either once the dialler closed it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(b.peers().iter().all(|p| p.address == a.address()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stun_and_sealed_pings_share_the_socket_with_a_live_transfer() {
    let (a, b) = (node(0), node(1));
    let mut listener = b.listen(9, Access::Open).unwrap();
    let sink = tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        sha(&stream.recv.read_to_end(64 << 20).await.unwrap())
    });
    a.connect(b.address(), b.local_addr()).await.unwrap();
    let mut stream = a.open_stream(b.address(), 9).await.unwrap();
    let data = pattern(7, 16 << 20);
    let expected = sha(&data);
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(64 * 1024) {
            stream.send.write_all(chunk).await.unwrap();
        }
        stream.send.finish().unwrap();
        let _ = stream.send.stopped().await;
    });
    for _ in 0..5 {
        let answer = a
            .stun(b.local_addr(), false, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.mapped, a.local_addr());
        assert!(answer.other.is_some(), "every node has a second STUN port");
        let rtt = a.ping(b.address(), None).await.unwrap();
        assert!(rtt < Duration::from_secs(5));
        let rtt_back = b.ping(a.address(), None).await.unwrap();
        assert!(rtt_back < Duration::from_secs(5));
    }
    writer.await.unwrap();
    assert_eq!(sink.await.unwrap(), expected);
}

#[tokio::test]
async fn streams_to_unlistened_ports_are_refused_and_datagrams_arrive() {
    let (a, b) = (node(0), node(1));
    a.connect(b.address(), b.local_addr()).await.unwrap();
    match a.open_stream(b.address(), 4444).await {
        Err(DialError::Refused { status, port, .. }) => {
            assert_eq!(status, StreamStatus::NoListener);
            assert_eq!(port, 4444);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut listener = b.listen(53, Access::Open).unwrap();
    assert!(
        b.listen(53, Access::Open).is_err(),
        "a port has one listener"
    );
    for i in 0..20u8 {
        a.send_datagram(b.address(), 53, 5353, &[i; 100]).unwrap();
    }
    let first = tokio::time::timeout(Duration::from_secs(5), listener.recv_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.from, a.address());
    assert_eq!(first.source_port, 5353);
    assert_eq!(first.payload.len(), 100);
    // Dropping the listener frees the port.
    drop(listener);
    b.listen(53, Access::Open).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_of_every_kind_leaves_a_live_connection_working() {
    let (a, b) = (node(0), node(1));
    let mut listener = b.listen(7, Access::Open).unwrap();
    tokio::spawn(async move {
        while let Some(mut s) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(Some(n)) = s.recv.read(&mut buf).await {
                    s.send.write_all(&buf[..n]).await.unwrap();
                }
                let _ = s.send.finish();
            });
        }
    });
    a.connect(b.address(), b.local_addr()).await.unwrap();
    let mut stream = a.open_stream(b.address(), 7).await.unwrap();

    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut stun_like = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
    stun_like.extend([0xff; 20]);
    let mut sealed_like = vec![0x20];
    sealed_like.extend(a.address().to_bytes());
    sealed_like.extend(b.address().to_bytes());
    sealed_like.extend([0u8; 40]);
    let mut flood: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x20],
        stun_like,
        sealed_like,
        vec![0xc0; 1200],
        vec![0x40; 3],
        vec![0x3f; 50],
    ];
    flood.extend((0..200u64).map(|i| pattern(i, (i as usize * 7) % 1400)));
    for d in &flood {
        attacker.send_to(d, b.local_addr()).unwrap();
        attacker.send_to(d, a.local_addr()).unwrap();
    }
    for round in 0..3u8 {
        let msg = vec![round; 1000];
        stream.send.write_all(&msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        stream.recv.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
    assert!(a.ping(b.address(), None).await.is_ok());
    let unknown_dropped = b.drops().unknown;
    assert!(unknown_dropped > 0, "unknown first bytes are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_and_many_dialers_all_end_connected() {
    let hub = node(0);
    let spokes: Vec<Node> = (1..4).map(node).collect();
    let mut listener = hub.listen(1, Access::Open).unwrap();
    tokio::spawn(async move { while listener.accept().await.is_some() {} });
    // Each spoke dials the hub while the hub dials it back at the same moment.
    let mut tasks = Vec::new();
    for spoke in &spokes {
        let (s, h) = (spoke.clone(), hub.clone());
        let (s_addr, s_at, h_addr, h_at) =
            (s.address(), s.local_addr(), h.address(), h.local_addr());
        tasks.push(tokio::spawn(async move { s.connect(h_addr, h_at).await }));
        tasks.push(tokio::spawn(async move { h.connect(s_addr, s_at).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for spoke in &spokes {
        spoke.open_stream(hub.address(), 1).await.unwrap();
    }
    assert_eq!(hub.peers().len(), spokes.len());
}

#[test]
fn an_unreachable_peer_times_out_with_a_clear_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = TransportConfig {
            dial_timeout: Duration::from_millis(500),
            ..TransportConfig::default()
        };
        let a = tern_daemon::env::os::start_node(
            identity(0),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            config,
        )
        .unwrap();
        // A bound socket that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let at: SocketAddr = silent.local_addr().unwrap();
        let err = a.connect(identity(1).address(), at).await.unwrap_err();
        assert!(matches!(err, DialError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("ternd is running"), "{err}");
        // Dialling whichever node answers (a rendezvous by UDP address) names no address.
        let err = a.connect_any(at).await.unwrap_err();
        assert!(
            err.to_string().starts_with("no answer from the node at"),
            "{err}"
        );
    });
}

/// A relay drops what one peer sends beyond its relay rate (and counts it); QUIC recovers,
/// so a relayed transfer still arrives whole, just slower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_rate_limits_each_peer_and_relayed_streams_still_arrive_whole() {
    let config = TransportConfig {
        relay_packets_per_second: 400.0,
        ..TransportConfig::default()
    };
    let relay = tern_daemon::env::os::start_node(
        identity(2),
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        config,
    )
    .unwrap();
    let (a, b) = (node(0), node(1));
    a.connect(relay.address(), relay.local_addr())
        .await
        .unwrap();
    b.connect(relay.address(), relay.local_addr())
        .await
        .unwrap();
    a.learn(b.identity());
    a.connect_via_relay(b.address(), relay.local_addr())
        .await
        .unwrap();
    let mut listener = b.listen(4000, Access::Open).unwrap();
    let data = pattern(7, 1 << 20);
    let sent = data.clone();
    let sender = tokio::spawn({
        let a = a.clone();
        let to = b.address();
        async move {
            let mut stream = a.open_stream(to, 4000).await.unwrap();
            stream.send.write_all(&sent).await.unwrap();
            stream.send.finish().unwrap();
            let _ = stream.send.stopped().await;
        }
    });
    let received = tokio::time::timeout(Duration::from_secs(60), async {
        let mut stream = listener.accept().await.unwrap();
        stream.recv.read_to_end(usize::MAX).await.unwrap()
    })
    .await
    .expect("the relayed transfer finished");
    sender.await.unwrap();
    assert_eq!(sha(&received), sha(&data));
    assert!(relay.drops().relay_rate_limited > 0, "{:?}", relay.drops());
}

/// Log lines written to memory, for checking what a node logs.
#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Many nodes in one process (the simulator's case): each log line says whose it is.
#[tokio::test]
async fn every_node_logs_in_its_own_span() {
    let log = CapturedLog::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let (a, b) = (node(0), node(1));
    a.connect(b.address(), b.local_addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    for (me, peer) in [(&a, &b), (&b, &a)] {
        let verified = format!("connection verified peer={}", peer.address());
        let line = text
            .lines()
            .find(|l| l.contains(&verified))
            .unwrap_or_else(|| panic!("no {verified:?} in\n{text}"));
        assert!(
            line.contains(&format!("node{{address={}}}", me.address())),
            "{line}"
        );
    }
}
