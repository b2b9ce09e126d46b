//! NAT traversal figures in the kernel lab (needs root): time from the first dial to the first
//! byte back, behind two home NATs (median of 20 fresh pairs, all of which must end direct);
//! relayed throughput against direct throughput through the same NAT lab; rendezvous lookups
//! per second. Daemons run in this process; each one's UDP socket is bound inside its
//! namespace, so all their traffic crosses the lab's routers.
//! `cargo bench -p tern-tests --bench nat`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_daemon::Access;
use tern_daemon::daemon::{Daemon, DaemonConfig};
use tern_daemon::env::os::{OsEnv, wrap_udp};
use tern_daemon::home::Home;
use tern_netsim::internet::{Host, Internet, NatKind};
use tokio::io::AsyncWriteExt;

const PAIRS: usize = 20;
const BULK: u64 = 64 << 20;

struct Node {
    daemon: Arc<Daemon>,
    _home: tempfile::TempDir,
}

fn start(host: &Host, port: u16, rendezvous: &[String]) -> Node {
    let home = tempfile::tempdir().expect("home");
    let socket = host
        .namespace
        .bind_udp(SocketAddr::from((host.address, port)))
        .expect("enter namespace")
        .expect("bind");
    let config = DaemonConfig::new(
        Home::at(home.path()),
        socket.local_addr().expect("addr"),
        rendezvous.to_vec(),
    );
    Node {
        daemon: Daemon::start_on(
            config,
            OsEnv::shared(),
            wrap_udp(socket, 8 << 20).expect("socket"),
        )
        .expect("daemon"),
        _home: home,
    }
}

async fn registered(node: &Node) {
    while node.daemon.status()["registered"] != true {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A pair behind NATs of the given kinds, both registered; `b` echoes on port 2000.
async fn pair(
    net: &mut Internet,
    rendezvous: &[String],
    kinds: (NatKind, NatKind),
    n: usize,
) -> (Node, Node) {
    let (host_a, _) = net.behind_nat(&format!("a{n}"), kinds.0).expect("site a");
    let (host_b, _) = net.behind_nat(&format!("b{n}"), kinds.1).expect("site b");
    let a = start(&host_a, 7440, rendezvous);
    let b = start(&host_b, 7440, rendezvous);
    registered(&a).await;
    registered(&b).await;
    let mut listener = b.daemon.node().listen(2000, Access::Open).expect("listen");
    tokio::spawn(async move {
        while let Some(mut stream) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut stream.recv, &mut stream.send).await;
                let _ = stream.send.shutdown().await;
            });
        }
    });
    (a, b)
}

fn path_to(a: &Node, b: &Node) -> &'static str {
    let peer = b.daemon.node().address();
    a.daemon
        .node()
        .peers()
        .iter()
        .find(|p| p.address == peer)
        .map_or("none", |p| p.path)
}

async fn throughput(a: &Node, b: &Node) -> f64 {
    let stream = a
        .daemon
        .apps()
        .dial(b.daemon.node().address(), 2000)
        .await
        .expect("dial");
    let (mut send, mut recv) = (stream.send, stream.recv);
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x5a_u8; 64 * 1024];
        let mut sent = 0;
        while sent < BULK {
            send.write_all(&chunk).await.expect("write");
            sent += chunk.len() as u64;
        }
        send.finish().expect("finish");
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    while let Some(n) = recv.read(&mut buf).await.expect("read") {
        got += n as u64;
    }
    writer.await.expect("writer");
    assert_eq!(got, BULK);
    BULK as f64 / (1024.0 * 1024.0) / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("the NAT benchmark needs root (network namespaces); skipped");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut net = Internet::new().expect("lab");
        let public = net.public_host("rendezvous").expect("public host");
        let server = start(&public, 7440, &[]);
        let rendezvous = vec![format!("{}:7440", public.address)];

        let home = (NatKind::HomeRouter, NatKind::HomeRouter);
        let one_symmetric = (NatKind::FullCone, NatKind::Symmetric);
        for (label, kinds, offset) in [
            ("home NAT <-> home NAT", home, 0),
            ("full-cone NAT -> symmetric NAT", one_symmetric, 50),
        ] {
            let (mut first_byte, mut to_direct) = (Vec::new(), Vec::new());
            for n in 0..PAIRS {
                let (a, b) = pair(&mut net, &rendezvous, kinds, offset + n).await;
                let start = Instant::now();
                let mut stream = a.daemon.apps().dial(b.daemon.node().address(), 2000).await.expect("dial");
                stream.send.write_all(b"x").await.expect("write");
                let mut byte = [0u8; 1];
                stream.recv.read_exact(&mut byte).await.expect("echo");
                first_byte.push(start.elapsed());
                while path_to(&a, &b) != "direct" {
                    assert!(start.elapsed() < Duration::from_secs(20), "pair {n} never went direct");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                to_direct.push(start.elapsed());
            }
            println!(
                "{label}, {PAIRS} fresh pairs: first dial to first byte median {:.1?} (max {:.1?}); to the direct path median {:.1?} (max {:.1?})",
                median(first_byte.clone()),
                first_byte.iter().max().expect("pairs"),
                median(to_direct.clone()),
                to_direct.iter().max().expect("pairs"),
            );
        }

        let (a, b) = pair(&mut net, &rendezvous, home, 100).await;
        let direct = throughput(&a, &b).await;
        let symmetric = (NatKind::Symmetric, NatKind::Symmetric);
        let (a, b) = pair(&mut net, &rendezvous, symmetric, 101).await;
        let start = Instant::now();
        a.daemon.connector().connect(b.daemon.node().address()).await.expect("relay");
        let to_relay = start.elapsed();
        assert_eq!(path_to(&a, &b), "relay");
        let relayed = throughput(&a, &b).await;
        println!("symmetric NAT <-> symmetric NAT: connected through the relay after {to_relay:.1?}");
        println!(
            "echo throughput, {} MiB: direct through two home NATs {direct:.1} MiB/s, through the relay {relayed:.1} MiB/s (ratio {:.2})",
            BULK >> 20,
            relayed / direct
        );

        let target = b.daemon.node().address();
        let rendezvous_address = server.daemon.node().address();
        let lookups = 2000;
        let start = Instant::now();
        for _ in 0..lookups {
            tern_daemon::rendezvous::lookup(a.daemon.node(), rendezvous_address, target)
                .await
                .expect("lookup")
                .expect("found");
        }
        println!(
            "rendezvous lookups, one client, sequential: {:.0}/s",
            lookups as f64 / start.elapsed().as_secs_f64()
        );
    });
}
