//! NAT traversal figures in the kernel lab (needs root): time from the first dial to the first
//! byte back, and to the direct path (median of 20 fresh pairs, all of which must end direct).
//! (Relayed against direct throughput is in the `datapath` benchmark.) Daemons run in this process; each one's UDP socket is bound inside its
//! namespace, so all their traffic crosses the lab's routers.
//! `cargo bench -p tern-tests --bench nat`

use std::time::{Duration, Instant};

use tern_daemon::Access;
use tern_netsim::internet::{Internet, NatKind};
use tern_tests::LabDaemon;
use tokio::io::AsyncWriteExt;

const PAIRS: usize = 20;

async fn registered(node: &LabDaemon) {
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
) -> (LabDaemon, LabDaemon) {
    let (host_a, _) = net.behind_nat(&format!("a{n}"), kinds.0).expect("site a");
    let (host_b, _) = net.behind_nat(&format!("b{n}"), kinds.1).expect("site b");
    let a = LabDaemon::start(&host_a, 7440, rendezvous);
    let b = LabDaemon::start(&host_b, 7440, rendezvous);
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

fn path_to(a: &LabDaemon, b: &LabDaemon) -> &'static str {
    let peer = b.daemon.node().address();
    a.daemon
        .node()
        .peers()
        .iter()
        .find(|p| p.address == peer)
        .map_or("none", |p| p.path)
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
        let _server = LabDaemon::start(&public, 7440, &[]);
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

    });
}
