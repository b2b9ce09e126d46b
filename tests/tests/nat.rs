//! Real daemons in the kernel NAT lab (network namespaces + nftables; needs root).

use tern_netsim::internet::{Internet, NatKind};
use tern_tests::Daemon;

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
