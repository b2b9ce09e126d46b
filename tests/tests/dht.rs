//! Discovery beyond one rendezvous, with real daemons on loopback: the Mainline DHT (a local
//! testnet of 50 DHT nodes bound to 127.0.0.1, never the public DHT) and several rendezvous
//! servers at once.

use std::time::Duration;

use mainline::{MutableItem, SigningKey, Testnet};
use serde_json::Value;
use tern_netsim::internet::{Internet, NatKind};
use tern_proto::dht::{ADDRESS_SALT, Announcement, address_index_seed};
use tern_proto::record::Record;
use tern_proto::{Address, SecretIdentity};
use tern_tests::{Daemon, free_local_addr};

const DHT_NODES: usize = 50;

fn local_dht() -> Testnet {
    Testnet::builder(DHT_NODES)
        .build()
        .expect("a local DHT testnet on 127.0.0.1")
}

/// `--dht-bootstrap` for each of the testnet's first nodes.
fn bootstrap_args(testnet: &Testnet) -> Vec<String> {
    testnet.bootstrap[..4]
        .iter()
        .flat_map(|at| ["--dht-bootstrap".to_string(), at.clone()])
        .collect()
}

/// `base` then `more`, as owned arguments.
fn with(base: &[&str], more: &[String]) -> Vec<String> {
    base.iter()
        .map(|a| a.to_string())
        .chain(more.iter().cloned())
        .collect()
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Polls `find TARGET` until `check` holds for its JSON.
fn find_until(node: &Daemon, target: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    node.wait_ternctl(&["find", target], Duration::from_secs(30), what, check)
}

fn wait_published(node: &Daemon) {
    node.wait_status(Duration::from_secs(30), "published in the DHT", |s| {
        s["dht"]["last_publish"].is_u64()
            && s["dht"]["stored_by"]["address_index"].as_u64() > Some(0)
    });
}

#[test]
fn a_node_is_found_in_the_dht_by_address_and_pinned_name_with_its_rendezvous_down_and_again_after_it_moved()
 {
    let testnet = local_dht();
    let dht = bootstrap_args(&testnet);
    let rendezvous = Daemon::start(&[]);
    let alpha_args = with(
        &["--rendezvous", &rendezvous.listen, "--hostname", "alpha"],
        &dht,
    );
    let alpha = Daemon::start(&refs(&alpha_args));
    let b = Daemon::start(&refs(&with(&["--rendezvous", &rendezvous.listen], &dht)));
    alpha.wait_registered();
    b.wait_registered();
    wait_published(&alpha);
    let status = b.ternctl_json(&["status"]).1;
    assert!(
        status["data"]["dht"]["routing_table"].as_u64() > Some(0),
        "{status}"
    );

    // Through the rendezvous first: the name is pinned to alpha's key.
    let (ok, found) = b.ternctl_json(&["find", "alpha"]);
    assert!(ok, "{found}");
    assert_eq!(found["data"]["via"], "rendezvous");

    drop(rendezvous);
    let by_address = find_until(&b, &alpha.address, "came from the DHT", |f| {
        f["ok"] == true && f["data"]["via"] == "dht"
    });
    assert_eq!(by_address["data"]["address"], alpha.address.as_str());
    assert!(
        by_address["data"]["endpoints"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e == alpha.listen.as_str())),
        "{by_address}"
    );
    let (ok, by_name) = b.ternctl_json(&["find", "alpha"]);
    assert!(ok, "{by_name}");
    assert_eq!(by_name["data"]["via"], "dht");
    assert_eq!(by_name["data"]["resolved"], "pinned");
    let out = b.ternctl(&["ping", "alpha"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        b.log()
    );

    // Alpha moves to another port: it republishes, and is found there.
    let moved = free_local_addr().to_string();
    let alpha = alpha.restart_on(&moved, &refs(&alpha_args), || {});
    assert_eq!(alpha.listen, moved);
    find_until(&b, &alpha.address, "showed the new endpoint", |f| {
        f["data"]["endpoints"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e == moved.as_str()))
    });
}

/// Puts `value` at `address`'s index in the DHT, as anyone can.
fn put_at_index(testnet: &Testnet, address: Address, value: &[u8], seq: i64) {
    let index = SigningKey::from_bytes(&address_index_seed(address));
    let dht = testnet.nodes[DHT_NODES - 1].clone().as_async();
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(dht.put_mutable(
            MutableItem::new(index, value, seq, Some(ADDRESS_SALT)),
            None,
        ))
        .expect("the testnet stores the value");
}

#[test]
fn forged_and_stale_dht_values_are_refused_and_counted() {
    let testnet = local_dht();
    let b = Daemon::start(&refs(&bootstrap_args(&testnet)));
    let victim = SecretIdentity::from_seed([71; 32]);
    let other = SecretIdentity::from_seed([72; 32]);
    let endpoint = "127.0.0.1:9".parse().unwrap();
    let in_an_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let record = |who: &SecretIdentity, seq, expires| {
        Record::sign(who, &[endpoint], None, seq, expires).expect("record")
    };
    let forgeries: Vec<Vec<u8>> = vec![
        b"not an announcement".to_vec(),
        // Another node's valid announcement, put at the victim's index.
        Announcement::sign(&other, record(&other, 1, in_an_hour), &[])
            .unwrap()
            .as_bytes()
            .to_vec(),
        // The victim's record, wrapped and signed by someone else.
        Announcement::sign(&other, record(&victim, 1, in_an_hour), &[])
            .unwrap()
            .as_bytes()
            .to_vec(),
        // The victim's own, long expired.
        Announcement::sign(&victim, record(&victim, 1, 1_000), &[])
            .unwrap()
            .as_bytes()
            .to_vec(),
    ];
    let target = victim.address().to_string();
    for (n, forged) in forgeries.iter().enumerate() {
        put_at_index(&testnet, victim.address(), forged, n as i64 + 1);
        let (ok, found) = b.ternctl_json(&["find", &target]);
        assert!(!ok, "forgery {n} accepted: {found}");
        assert_eq!(found["error"]["code"], "not_found", "{found}");
        let status = b.ternctl_json(&["status"]).1;
        assert!(
            status["data"]["dht"]["refused"].as_u64() >= Some(n as u64 + 1),
            "forgery {n} not counted: {status}"
        );
    }
    // The same slot with the victim's real announcement: found, so the forgeries were read.
    let real = Announcement::sign(&victim, record(&victim, 9, in_an_hour), &[]).unwrap();
    put_at_index(&testnet, victim.address(), real.as_bytes(), 10);
    let (ok, found) = b.ternctl_json(&["find", &target]);
    assert!(ok, "{found}");
    assert_eq!(found["data"]["via"], "dht");
    assert_eq!(found["data"]["endpoints"][0], "127.0.0.1:9");
}

#[test]
fn several_rendezvous_one_down_still_resolve_and_a_name_two_servers_give_two_keys_is_a_conflict() {
    let first = Daemon::start(&[]);
    let second = Daemon::start(&[]);
    let alpha = Daemon::start(&["--rendezvous", &first.listen, "--hostname", "alpha"]);
    let impostor = Daemon::start(&["--rendezvous", &second.listen, "--hostname", "alpha"]);
    let both = Daemon::start(&[
        "--rendezvous",
        &first.listen,
        "--rendezvous",
        &second.listen,
        "--hostname",
        "both",
    ]);
    for node in [&alpha, &impostor, &both] {
        node.wait_registered();
    }
    both.wait_status(Duration::from_secs(20), "registered with both", |s| {
        s["rendezvous"]
            .as_array()
            .is_some_and(|servers| servers.iter().all(|s| s["registered"] == true))
    });

    let (ok, conflict) = both.ternctl_json(&["find", "alpha"]);
    assert!(!ok, "{conflict}");
    assert_eq!(conflict["error"]["code"], "name_conflict", "{conflict}");
    let message = conflict["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&alpha.address) && message.contains(&impostor.address),
        "{message}"
    );
    // By address each is found, at whichever server holds it.
    for node in [&alpha, &impostor] {
        let (ok, found) = both.ternctl_json(&["find", &node.address]);
        assert!(ok, "{found}");
    }

    // With one server down, a node registered with both is still found through the other.
    let c = Daemon::start(&[
        "--rendezvous",
        &first.listen,
        "--rendezvous",
        &second.listen,
    ]);
    c.wait_registered();
    drop(first);
    let (ok, found) = c.ternctl_json(&["find", "both"]);
    assert!(ok, "{found}\n{}", c.log());
    assert_eq!(found["data"]["address"], both.address.as_str());
}

#[test]
fn two_nodes_behind_nats_with_no_rendezvous_in_common_find_each_other_in_the_dht_and_connect_through_the_published_relay()
 {
    let mut net = Internet::new().expect("the kernel lab (needs root)");
    let dht_host = net.public_host("dht").unwrap();
    let ip = dht_host.address;
    let testnet = dht_host
        .namespace
        .enter(|| Testnet::builder(DHT_NODES).bind_address(ip).build())
        .unwrap()
        .expect("a DHT testnet on the lab's public segment");
    let dht = bootstrap_args(&testnet);
    let servers: Vec<(Daemon, String)> = ["rv-a", "rv-b"]
        .into_iter()
        .map(|label| {
            let host = net.public_host(label).unwrap();
            let at = format!("{}:7440", host.address);
            (Daemon::start_in(Some(&host.namespace), &at, &[]), at)
        })
        .collect();
    let behind = |net: &mut Internet, label, kind, server: &str| {
        let (host, router) = net.behind_nat(label, kind).unwrap();
        let args = with(&["--rendezvous", server], &dht);
        let node = Daemon::start_in(Some(&host.namespace), "0.0.0.0:7440", &refs(&args));
        node.wait_registered();
        (node, router)
    };
    // A symmetric NAT facing a home router: no punch gets through, so only a relay works.
    let (a, _router_a) = behind(&mut net, "a", NatKind::Symmetric, &servers[0].1);
    let (b, _router_b) = behind(&mut net, "b", NatKind::HomeRouter, &servers[1].1);
    wait_published(&b);

    let found = find_until(&a, &b.address, "came from the DHT", |f| f["ok"] == true);
    assert_eq!(found["data"]["via"], "dht", "{found}");
    let out = a.ternctl(&["ping", &b.address]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.log()
    );
    let (_, peers) = a.ternctl_json(&["peers"]);
    let entry = peers["data"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == b.address.as_str())
        .unwrap_or_else(|| panic!("no connection to b: {peers}"))
        .clone();
    assert_eq!(entry["path"], "relay", "{entry}");
    let relay_ip = servers[1].1.rsplit_once(':').unwrap().0;
    assert!(
        entry["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with(relay_ip)),
        "relayed through b's published rendezvous {relay_ip}: {entry}"
    );
}
