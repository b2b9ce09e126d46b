//! The DHT on a local testnet (printed figures, not timed tests; run in release):
//! `cargo bench -p tern-daemon --bench dht`.
//!
//! A 200-node Mainline testnet on 127.0.0.1 (never the public DHT); 50 tern nodes join it and
//! publish their announcements (under their key and their address index) ten times each; one
//! more node resolves them by address, 500 look-ups round-robin, each answer verified as in
//! `ternctl find`. Prints publish and resolve latency (p50, p99, max) and the success rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_daemon::daemon::{Daemon, DaemonConfig};
use tern_daemon::dht::DhtSettings;
use tern_daemon::env::os::OsEnv;
use tern_daemon::home::Home;

const DHT_NODES: usize = 200;
const PUBLISHERS: usize = 50;
const PUBLISHES_EACH: usize = 10;
const LOOKUPS: usize = 500;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn summary(what: &str, mut samples: Vec<Duration>, attempts: usize) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: {}/{attempts} succeeded ({:.1} %), p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        samples.len(),
        100.0 * samples.len() as f64 / attempts as f64,
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().expect("one sample at least")),
    );
}

fn main() {
    let testnet = mainline::Testnet::builder(DHT_NODES)
        .build()
        .expect("a local DHT testnet on 127.0.0.1");
    let bootstrap: Vec<String> = testnet.bootstrap[..8].to_vec();
    let homes = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let start = |n: usize| {
            let home = Home::at(homes.path().join(format!("node-{n}")));
            let mut config = DaemonConfig::new(home, "127.0.0.1:0".parse().unwrap(), vec![]);
            config.dht = Some(DhtSettings {
                bootstrap: bootstrap.clone(),
            });
            Daemon::start(config, OsEnv::shared()).expect("a tern node")
        };
        let publishers: Vec<Arc<Daemon>> = (0..PUBLISHERS).map(start).collect();
        let resolver = start(PUBLISHERS);
        // Each node publishes itself once on its own first: measure the publishes after that.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !publishers
            .iter()
            .all(|d| d.status()["dht"]["last_publish"].is_u64())
        {
            assert!(
                Instant::now() < deadline,
                "the nodes never published themselves"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let mut published = Vec::new();
        let mut failed = Vec::new();
        for round in 0..PUBLISHES_EACH {
            let rounds: Vec<_> = publishers
                .iter()
                .map(|d| {
                    let d = d.clone();
                    tokio::spawn(async move {
                        let dht = d.dht().expect("the DHT is on");
                        let announcement = dht.announcement(d.rendezvous(), &[]);
                        let started = Instant::now();
                        dht.publish(&announcement).await.map(|()| started.elapsed())
                    })
                })
                .collect();
            for publish in rounds {
                match publish.await.expect("a publish task") {
                    Ok(took) => published.push(took),
                    Err(e) => failed.push(format!("round {round}: {e}")),
                }
            }
        }
        summary(
            &format!("publish ({PUBLISHERS} nodes x {PUBLISHES_EACH}, {DHT_NODES}-node DHT)"),
            published,
            PUBLISHERS * PUBLISHES_EACH,
        );
        for e in failed.iter().take(3) {
            println!("  failed: {e}");
        }

        let dht = resolver.dht().expect("the DHT is on");
        let mut resolved = Vec::new();
        for n in 0..LOOKUPS {
            let target = publishers[n % PUBLISHERS].node().address();
            let started = Instant::now();
            let found = dht.find(target).await;
            if found.is_some_and(|a| a.record.address() == target) {
                resolved.push(started.elapsed());
            }
        }
        summary(
            &format!("resolve by address ({LOOKUPS} look-ups; goal 100 %, p99 <= 2000 ms)"),
            resolved,
            LOOKUPS,
        );
        for d in publishers.iter().chain([&resolver]) {
            d.stop().await;
        }
    });
}
