//! The NAT matrix on the simulated network: every pair of the kernel lab's kinds connects,
//! and ends direct or on the relay exactly as the kernel lab's pairs do (tests/tests/nat.rs).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tern_daemon::daemon::DEFAULT_PORT;
use tern_netsim::sim::{App, NatConfig, Sim, run_paused, wait_registered};
use tern_proto::api::Request;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Site {
    Public,
    FullCone,
    HomeRouter,
    Symmetric,
    UdpBlocked,
}

const SITES: [Site; 5] = [
    Site::Public,
    Site::FullCone,
    Site::HomeRouter,
    Site::Symmetric,
    Site::UdpBlocked,
];

/// The kernel lab's rule (tests/tests/nat.rs): endpoint-independent mapping on both sides
/// punches; a symmetric side gets through only to a peer that lets anyone in; a network that
/// blocks UDP is relayed over TCP.
fn expected_path(a: Site, b: Site) -> &'static str {
    if a == Site::UdpBlocked || b == Site::UdpBlocked {
        return "relay";
    }
    let lets_anyone_in = |s: Site| matches!(s, Site::Public | Site::FullCone);
    match (a == Site::Symmetric, b == Site::Symmetric) {
        (false, false) => "direct",
        (true, false) if lets_anyone_in(b) => "direct",
        (false, true) if lets_anyone_in(a) => "direct",
        _ => "relay",
    }
}

/// A host in `site`, the `n`th site of the run: public hosts on 203.0.113.0/24, a NATed
/// one at 192.168.n.2 behind 203.0.113.(100 + n).
fn place(sim: &Sim, site: Site, n: u8) -> Ipv4Addr {
    let config = match site {
        Site::Public => return Ipv4Addr::new(203, 0, 113, 10 + n),
        Site::FullCone => NatConfig::full_cone(),
        Site::HomeRouter => NatConfig::home_router(),
        Site::Symmetric => NatConfig::symmetric(),
        Site::UdpBlocked => NatConfig::udp_blocked(),
    };
    sim.network()
        .add_nat(config, Ipv4Addr::new(203, 0, 113, 100 + n), [192, 168, n]);
    Ipv4Addr::new(192, 168, n, 2)
}

/// Connects `a` to `b` by name and returns the path `a` ends on, after the path monitor has
/// had time to move a relayed connection to a punched path.
async fn pair(a: Site, b: Site) -> String {
    let sim = Sim::new(11, Duration::from_millis(10));
    let rendezvous_ip = Ipv4Addr::new(203, 0, 113, 1);
    let rendezvous_at = SocketAddr::from((rendezvous_ip, DEFAULT_PORT));
    let _rendezvous = sim
        .start_node(rendezvous_ip, &[], None)
        .expect("rendezvous");
    let a_ip = place(&sim, a, 1);
    let b_ip = place(&sim, b, 2);
    let a = sim.start_node(a_ip, &[rendezvous_at], None).expect("a");
    let b = sim
        .start_node(b_ip, &[rendezvous_at], Some("b".parse().expect("name")))
        .expect("b");
    wait_registered(&[a.clone(), b.clone()]).await;
    let app = App::new(a.clone());
    let ping = Request::Ping { target: "b".into() };
    app.request(&ping).await.expect("a reaches b by name");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let peer = a
        .node()
        .peers()
        .into_iter()
        .find(|p| p.address == b.node().address())
        .expect("a stays connected to b");
    app.request(&ping).await.expect("a still reaches b");
    peer.path.to_string()
}

#[test]
fn every_pair_of_nat_kinds_connects_and_ends_on_the_lab_s_path() {
    let mut wrong = Vec::new();
    for a in SITES {
        for b in SITES {
            let path = run_paused(Duration::from_secs(300), pair(a, b));
            if path != expected_path(a, b) {
                wrong.push(format!(
                    "{a:?} → {b:?}: {path}, expected {}",
                    expected_path(a, b)
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "pairs on the wrong path:\n{}",
        wrong.join("\n")
    );
}

/// What each node's `status` says of its NAT, as it learnt through the rendezvous: the same
/// kinds the kernel lab's NATs show (tests/tests/nat.rs).
#[test]
fn each_node_tells_the_kind_of_nat_it_sits_behind() {
    let kinds = run_paused(Duration::from_secs(120), async {
        let sim = Sim::new(5, Duration::from_millis(10));
        let rendezvous_ip = Ipv4Addr::new(203, 0, 113, 1);
        let rendezvous_at = SocketAddr::from((rendezvous_ip, DEFAULT_PORT));
        let _rendezvous = sim
            .start_node(rendezvous_ip, &[], None)
            .expect("rendezvous");
        let mut nodes = Vec::new();
        for (n, site) in SITES.into_iter().enumerate() {
            let ip = place(&sim, site, n as u8 + 1);
            nodes.push(sim.start_node(ip, &[rendezvous_at], None).expect("node"));
        }
        wait_registered(&nodes).await;
        // The filtering test waits out its answer on a NAT that lets none in.
        tokio::time::sleep(Duration::from_secs(10)).await;
        nodes
            .iter()
            .map(|n| n.status()["nat"]["kind"].as_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
    });
    assert_eq!(
        kinds,
        ["none", "cone", "port-restricted", "symmetric", "unknown"],
        "{SITES:?}"
    );
}
