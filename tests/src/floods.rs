//! Hostile traffic for hostile tests and the soak benchmark: unfinished QUIC handshakes from
//! many loopback sources, and garbage datagrams of every first byte.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use tern_proto::SecretIdentity;

/// Sockets on `count` distinct loopback addresses (127.1.x.y): as good as spoofed sources.
pub fn loopback_sources(count: u32) -> Vec<UdpSocket> {
    (0..count)
        .map(|i| {
            let ip = Ipv4Addr::new(127, 1, (i / 200) as u8, (i % 200 + 2) as u8);
            UdpSocket::bind((ip, 0)).expect("bind a loopback source")
        })
        .collect()
}

/// Sends QUIC Initials that will never be finished to `at`, each from the next of `sources`,
/// `per_second` of them (0: as fast as they can be made), for ever.
pub async fn unfinished_handshakes(at: SocketAddr, sources: &[UdpSocket], per_second: u32) {
    // A real client makes each Initial (sent to a socket that only captures it).
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let capture_at = capture.local_addr().expect("local address");
    let me = SecretIdentity::generate().expect("random identity");
    let tls = tern_daemon::transport::handshake::tls_configs(
        &me,
        Arc::new(tern_daemon::TransportConfig::default().quic()),
        &tern_daemon::env::os::OsEnv,
    );
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    let pause = (per_second > 0).then(|| Duration::from_secs(1) / per_second);
    let mut buf = [0u8; 1500];
    loop {
        for source in sources {
            let _connecting = client
                .connect_with(tls.client.clone(), capture_at, "tern")
                .expect("connect");
            let (n, _) = capture.recv_from(&mut buf).await.expect("capture");
            let _ = source.send_to(&buf[..n], at);
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Sends `per_second` datagrams of seeded random bytes (every first byte, so every sorting
/// path: QUIC, STUN, sealed control, relay frames, unknown) from `from` to `at`, until `stop`.
pub fn garbage(
    from: UdpSocket,
    at: SocketAddr,
    per_second: u32,
    stop: &std::sync::atomic::AtomicBool,
) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut sent = 0u64;
    let mut buf = [0u8; 1400];
    let batch = (per_second / 100).max(1);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for _ in 0..batch {
            let len = 1 + (next() % buf.len() as u64) as usize;
            for chunk in buf[..len].chunks_mut(8) {
                let bytes = next().to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
            let _ = from.send_to(&buf[..len], at);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    sent
}
