//! The simulator at scale (printed figures, not timed tests; run in release):
//! `cargo bench -p tern-netsim --bench scale`.
//!
//! - The shipped 100-node mesh (every node pings every other by name): simulated seconds per
//!   wall second; then the same mesh kept up for ten more simulated minutes with JSON-RPC
//!   between 50 pairs (one call a second each) and every connection's keepalives, the
//!   simulator's speed once the mesh stands (the difference of the two runs).
//! - A 1,000-node join: a rendezvous and 1,000 nodes register, then 1,000 random pairs
//!   connect with one stream each (1 KiB each way, checked): wall time and peak RSS.
//!   Identities come from a fixture cached in `target/` (proof of work costs ~0.1 s each).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use tern_daemon::daemon::{DEFAULT_PORT, Daemon};
use tern_daemon::env::Env;
use tern_daemon::home::Home;
use tern_netsim::scenario;
use tern_netsim::sim::{App, Sim, run_paused, wait_registered};
use tern_proto::api::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JOINING: usize = 1000;
const PORT: u16 = 5000;
const MESSAGE: usize = 1024;

fn main() {
    join();
    mesh();
}

/// Runs a scenario in-process from seed 7: (simulated, wall) seconds.
fn timed(text: &str) -> (f64, f64) {
    let scenario = scenario::parse("mesh", text).expect("the mesh scenario");
    let report =
        scenario::run_in_process(&scenario, 7, Arc::new(AtomicU64::new(0))).expect("the mesh runs");
    assert!(report.passed(), "{}", report.text());
    (report.simulated.as_secs_f64(), report.wall.as_secs_f64())
}

fn mesh() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/mesh-100.toml");
    let shipped = std::fs::read_to_string(&file).expect("the shipped mesh scenario");
    let (simulated, wall) = timed(&shipped);
    println!(
        "100-node mesh, all 9,900 pairs pinged by name: {simulated:.1} simulated s in {wall:.1} \
         wall s = {:.1} simulated s per wall s (goal >= 10)",
        simulated / wall
    );
    let mut standing = shipped.replace("duration = \"600s\"", "duration = \"900s\"");
    for pair in 1..=50 {
        standing.push_str(&format!(
            "\n[[app]]\nname = \"rpc-{pair}\"\nkind = \"rpc\"\nfrom = \"peer-{pair}\"\n\
             to = \"peer-{}\"\nstart = \"60s\"\nrequests = 600\nrate = 1\n",
            pair + 50
        ));
    }
    let (longer, longer_wall) = timed(&standing);
    let (extra, extra_wall) = (longer - simulated, longer_wall - wall);
    println!(
        "  the standing mesh, {extra:.0} more simulated s (50 JSON-RPC pairs, 1 call/s each): \
         {extra_wall:.1} more wall s = {:.1} simulated s per wall s",
        extra / extra_wall.max(1e-3)
    );
}

fn host(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(203, 0, 113, 10)) + n as u32)
}

/// Peak resident memory of this process so far, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn join() {
    let identities = tern_netsim::fixture::cached_identities(JOINING + 1);
    let wall = Instant::now();
    let (registered_at, connected_at) = run_paused(Duration::from_secs(3600), async move {
        let sim = Sim::new(11, Duration::from_millis(15));
        let started = tokio::time::Instant::now();
        for (n, identity) in identities.iter().enumerate() {
            let home = Home::at(format!("/sim/{}", host(n)));
            sim.host(host(n))
                .write_file(&home.identity_path(), &identity.to_key_file())
                .expect("a simulated disk takes every write");
        }
        let rendezvous_at = SocketAddr::from((host(0), DEFAULT_PORT));
        let _rendezvous = sim.start_node(host(0), &[], None).expect("rendezvous");
        let nodes: Vec<Arc<Daemon>> = (1..=JOINING)
            .map(|n| {
                sim.start_node(host(n), &[rendezvous_at], None)
                    .expect("node")
            })
            .collect();
        wait_registered(&nodes).await;
        let registered_at = started.elapsed();
        let apps: Vec<Arc<App>> = nodes
            .iter()
            .map(|d| Arc::new(App::new(d.clone())))
            .collect();
        let mut held = Vec::new();
        for app in &apps {
            let listen = Request::Listen {
                port: PORT,
                open: true,
            };
            held.push(app.request(&listen).await.expect("listen").connection);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut pairs = Vec::new();
        while pairs.len() < JOINING {
            let (a, b) = (
                (rng.next_u32() as usize) % JOINING,
                (rng.next_u32() as usize) % JOINING,
            );
            if a != b {
                pairs.push((a, b));
            }
        }
        let mut incoming = vec![0usize; JOINING];
        for &(_, b) in &pairs {
            incoming[b] += 1;
        }
        let mut running = Vec::new();
        for (b, &count) in incoming.iter().enumerate() {
            let app = apps[b].clone();
            running.push(tokio::spawn(async move {
                for _ in 0..count {
                    let mut stream = app
                        .request(&Request::Accept {
                            port: PORT,
                            attach: false,
                        })
                        .await
                        .expect("accept")
                        .connection;
                    tokio::spawn(async move {
                        let mut got = vec![0u8; MESSAGE];
                        stream.read_exact(&mut got).await.expect("the message");
                        stream.write_all(&got).await.expect("echo");
                        stream.shutdown().await.expect("finish");
                    });
                }
            }));
        }
        for &(a, b) in &pairs {
            let (app, target) = (apps[a].clone(), nodes[b].node().address().to_string());
            running.push(tokio::spawn(async move {
                let dial = Request::Dial {
                    target,
                    port: PORT,
                    attach: false,
                };
                let mut stream = app.request(&dial).await.expect("dial").connection;
                let message = vec![(a % 251) as u8; MESSAGE];
                stream.write_all(&message).await.expect("send");
                let mut back = vec![0u8; MESSAGE];
                stream.read_exact(&mut back).await.expect("the echo");
                assert_eq!(back, message, "the echo differs");
            }));
        }
        for task in running {
            task.await.expect("a pair");
        }
        drop(held);
        (registered_at, started.elapsed())
    });
    println!(
        "{JOINING}-node join: all registered by {:.1} simulated s; {JOINING} random pairs connected \
         with a stream each (1 KiB echoed) by {:.1} simulated s; wall {:.1} s (goal < 60 s); peak \
         RSS {:.0} MiB",
        registered_at.as_secs_f64(),
        connected_at.as_secs_f64(),
        wall.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
}
