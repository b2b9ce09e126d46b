//! Real daemons in the kernel NAT lab (network namespaces + nftables; needs root).

use tern_netsim::internet::{Internet, NatKind, Router};
use tern_tests::Daemon;

/// A lab internet with a public rendezvous; returns it, the rendezvous daemon and `HOST:PORT`.
fn internet_with_rendezvous() -> (Internet, Daemon, String) {
    let mut net = Internet::new().unwrap();
    let public = net.public_host("rendezvous").unwrap();
    let at = format!("{}:7440", public.address);
    let rendezvous = Daemon::start_in(Some(&public.namespace), &at, &[]);
    (net, rendezvous, at)
}

/// Two agents behind NATs of the given kinds, registered with the rendezvous; and b's router.
fn agents(
    net: &mut Internet,
    rendezvous_at: &str,
    kinds: (NatKind, NatKind),
    n: usize,
) -> (Daemon, Daemon, Router) {
    let (inside_a, _) = net.behind_nat(&format!("a{n}"), kinds.0).unwrap();
    let (inside_b, router_b) = net.behind_nat(&format!("b{n}"), kinds.1).unwrap();
    let args = ["--rendezvous", rendezvous_at];
    let a = Daemon::start_in(Some(&inside_a.namespace), "0.0.0.0:7440", &args);
    let b = Daemon::start_in(Some(&inside_b.namespace), "0.0.0.0:7440", &args);
    a.wait_registered();
    b.wait_registered();
    (a, b, router_b)
}

/// `a`'s `peers` entry for `b`.
fn peer_entry(a: &Daemon, b: &Daemon) -> serde_json::Value {
    let (_, peers) = a.ternctl_json(&["peers"]);
    peers["data"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == b.address.as_str())
        .unwrap_or_else(|| panic!("no connection to {} in {peers}", b.address))
        .clone()
}

#[test]
fn a_node_behind_a_home_nat_registers_through_it_and_is_reached_over_its_connection() {
    let mut net = Internet::new().unwrap();
    let public = net.public_host("rendezvous").unwrap();
    let (inside, router) = net.behind_nat("agent", NatKind::HomeRouter).unwrap();
    let rendezvous_at = format!("{}:7440", public.address);
    let r = Daemon::start_in(Some(&public.namespace), &rendezvous_at, &[]);
    let b = Daemon::start_in(
        Some(&inside.namespace),
        "0.0.0.0:7440",
        &["--rendezvous", &rendezvous_at],
    );
    b.wait_registered();

    // B learned the address its NAT gives it, and publishes it.
    let (_, status) = b.ternctl_json(&["status"]);
    let endpoints = status["data"]["endpoints"].as_array().unwrap();
    assert!(
        endpoints.iter().any(|e| e
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", router.public))),
        "no NAT-mapped endpoint in {endpoints:?}"
    );
    // The rendezvous sees B at its router's public address, and reaches B over that path.
    let (ok, peers) = r.ternctl_json(&["peers"]);
    assert!(ok);
    assert_eq!(peers["data"]["peers"][0]["address"], b.address.as_str());
    assert!(
        peers["data"]["peers"][0]["remote"]
            .as_str()
            .unwrap()
            .starts_with(&router.public.to_string())
    );
    let (ok, ping) = r.ternctl_json(&["ping", &b.address]);
    assert!(ok, "{ping}\n{}", r.log());
    let (ok, bench) = r.ternctl_json(&["bench", &b.address, "--bytes", "1048576"]);
    assert!(ok, "{bench}");
}

/// Both agents behind NATs with endpoint-independent mapping: the rendezvous introduces them,
/// both punch, and the connection is direct, through both NATs.
#[test]
fn agents_behind_two_nats_punch_through_and_talk_directly() {
    let (mut net, _r, rendezvous_at) = internet_with_rendezvous();
    let pairs = [
        (NatKind::HomeRouter, NatKind::HomeRouter),
        (NatKind::FullCone, NatKind::HomeRouter),
        (NatKind::CarrierGrade, NatKind::HomeRouter),
    ];
    for (i, (kind_a, kind_b)) in pairs.into_iter().enumerate() {
        let (a, b, router_b) = agents(&mut net, &rendezvous_at, (kind_a, kind_b), i);

        let (ok, ping) = a.ternctl_json(&["ping", &b.address]);
        assert!(
            ok,
            "{kind_a:?} -> {kind_b:?}: {ping}\n--- a ---\n{}\n--- b ---\n{}",
            a.log(),
            b.log()
        );
        let to_b = peer_entry(&a, &b);
        assert!(
            to_b["remote"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}:", router_b.public)),
            "{kind_a:?} -> {kind_b:?}: not direct through b's NAT: {to_b}"
        );
        // And a stream both ways over it: B serves, A sends a message; then the reverse.
        let _served = b.serve(&["listen", "4000", "--open"]);
        let out = a.ternctl(&["connect", &b.address, "4000"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            b.ternctl_json(&["ping", &a.address]).0,
            "{kind_b:?} -> {kind_a:?}"
        );
    }
}

/// Neither side has endpoint-independent mapping: punching cannot work, so the rendezvous
/// relays the (end-to-end encrypted) QUIC packets, and streams work all the same.
#[test]
fn agents_behind_two_symmetric_nats_talk_through_the_relay() {
    let (mut net, _r, rendezvous_at) = internet_with_rendezvous();
    let (a, b, _) = agents(
        &mut net,
        &rendezvous_at,
        (NatKind::Symmetric, NatKind::Symmetric),
        0,
    );

    let (ok, ping) = a.ternctl_json(&["ping", &b.address]);
    assert!(ok, "{ping}\n--- a ---\n{}\n--- b ---\n{}", a.log(), b.log());
    let to_b = peer_entry(&a, &b);
    assert_eq!(to_b["path"], "relay", "{to_b}");
    assert_eq!(to_b["remote"], rendezvous_at.as_str());
    let (ok, bench) = a.ternctl_json(&["bench", &b.address, "--bytes", "2097152"]);
    assert!(ok, "{bench}");
    assert!(b.ternctl_json(&["ping", &a.address]).0);
}
