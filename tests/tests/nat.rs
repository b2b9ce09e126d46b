//! Real daemons in the kernel NAT lab (network namespaces + nftables; needs root).

use std::time::{Duration, Instant};

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

/// Where an agent sits: on the public segment, or behind a NAT of some kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Site {
    Public,
    Behind(NatKind),
}

/// An agent at `site`, registered with the rendezvous; and its router, if it has one.
fn agent(
    net: &mut Internet,
    rendezvous_at: &str,
    site: Site,
    label: &str,
) -> (Daemon, Option<Router>) {
    let (host, router) = match site {
        Site::Public => (net.public_host(label).unwrap(), None),
        Site::Behind(kind) => {
            let (host, router) = net.behind_nat(label, kind).unwrap();
            (host, Some(router))
        }
    };
    let listen = match site {
        Site::Public => format!("{}:7440", host.address),
        Site::Behind(_) => "0.0.0.0:7440".to_string(),
    };
    let daemon = Daemon::start_in(
        Some(&host.namespace),
        &listen,
        &["--rendezvous", rendezvous_at],
    );
    daemon.wait_registered();
    (daemon, router)
}

/// `status`'s NAT behaviour of `daemon` once discovered (it takes a few seconds after
/// registering).
fn nat_seen(daemon: &Daemon) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, status) = daemon.ternctl_json(&["status"]);
        let nat = status["data"]["nat"].clone();
        if nat["kind"] != "unknown" || Instant::now() > deadline {
            return nat;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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
    // It asked the rendezvous over STUN, through the NAT, before registering.
    let log = b.log();
    let stun = log
        .lines()
        .find(|l| l.contains("reflexive address from STUN"))
        .unwrap_or_else(|| panic!("no STUN answer:\n{log}"));
    assert!(stun.contains(&format!("{}:", router.public)), "{stun}");
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

/// The path a pair should end on. Endpoint-independent mapping on both sides: punching
/// works. A symmetric (endpoint-dependent) side still gets through to a peer whose NAT
/// lets anyone in (no NAT, full cone): the peer learns the symmetric side's new mapping from
/// its probes (a peer-reflexive address). Otherwise the relay (birthday probing is not done),
/// reached over TCP from a network that blocks UDP.
fn expected_path(a: Site, b: Site) -> &'static str {
    let blocked = |s: Site| s == Site::Behind(NatKind::UdpBlocked);
    if blocked(a) || blocked(b) {
        return "relay";
    }
    let symmetric = |s: Site| s == Site::Behind(NatKind::Symmetric);
    let lets_anyone_in = |s: Site| matches!(s, Site::Public | Site::Behind(NatKind::FullCone));
    match (symmetric(a), symmetric(b)) {
        (false, false) => "direct",
        (true, false) if lets_anyone_in(b) => "direct",
        (false, true) if lets_anyone_in(a) => "direct",
        _ => "relay",
    }
}

/// `ternctl connect` from `a` to `b`'s echo service, stdin and stdout piped.
fn pipe_to_echo(a: &Daemon, b: &Daemon) -> std::process::Child {
    std::process::Command::new(tern_tests::binary("ternctl"))
        .arg("--home")
        .arg(a.home.path())
        .args(["connect", &b.address, "7"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Streams `bytes` of a pattern through `b`'s echo service from `a` and checks every byte.
fn echo_exact(a: &Daemon, b: &Daemon, bytes: usize) {
    use std::io::Write;
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut child = pipe_to_echo(a, b);
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn({
        let data = data.clone();
        move || stdin.write_all(&data)
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == data,
        "echo differs: {} of {bytes} bytes back",
        out.stdout.len()
    );
}

/// Waits until `a`'s connection to `b` is on `path`; returns its peers entry.
fn wait_for_path(a: &Daemon, b: &Daemon, path: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let entry = peer_entry(a, b);
        if entry["path"] == path {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "still {entry} after {within:?}, not {path}\n--- a ---\n{}\n--- b ---\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every pair of sites connects and moves data byte-exact; the pair ends direct or on the
/// relay as [`expected_path`] says.
#[test]
fn nat_matrix_every_pair_connects_and_ends_on_the_expected_path() {
    let (mut net, _r, rendezvous_at) = internet_with_rendezvous();
    let sites = [
        Site::Public,
        Site::Behind(NatKind::FullCone),
        Site::Behind(NatKind::HomeRouter),
        Site::Behind(NatKind::CarrierGrade),
        Site::Behind(NatKind::Symmetric),
        Site::Behind(NatKind::UdpBlocked),
    ];
    let mut n = 0;
    for (i, &site_a) in sites.iter().enumerate() {
        for &site_b in &sites[i..] {
            n += 1;
            let (a, _) = agent(&mut net, &rendezvous_at, site_a, &format!("a{n}"));
            let (b, _) = agent(&mut net, &rendezvous_at, site_b, &format!("b{n}"));
            let (ok, ping) = a.ternctl_json(&["ping", &b.address]);
            assert!(
                ok,
                "{site_a:?} -> {site_b:?}: {ping}\n--- a ---\n{}\n--- b ---\n{}",
                a.log(),
                b.log()
            );
            let expected = expected_path(site_a, site_b);
            let entry = wait_for_path(&a, &b, expected, Duration::from_secs(10));
            if expected == "relay" {
                assert_eq!(
                    entry["remote"],
                    rendezvous_at.as_str(),
                    "{site_a:?} -> {site_b:?}"
                );
            }
            echo_exact(&a, &b, 300_000);
            assert!(
                b.ternctl_json(&["ping", &a.address]).0,
                "{site_b:?} -> {site_a:?}"
            );
            // It stays where it should be (a relayed pair keeps trying, and keeps failing).
            assert_eq!(
                peer_entry(&a, &b)["path"],
                expected,
                "{site_a:?} -> {site_b:?}"
            );
        }
    }
}

/// A direct path cut mid-transfer: the transfer goes on over the relay without an error;
/// once healed, the connection returns to the direct path.
#[test]
fn a_cut_direct_path_fails_over_to_the_relay_mid_transfer_and_comes_back() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    let (mut net, _r, rendezvous_at) = internet_with_rendezvous();
    let home = Site::Behind(NatKind::HomeRouter);
    let (a, router_a) = agent(&mut net, &rendezvous_at, home, "a");
    let (b, router_b) = agent(&mut net, &rendezvous_at, home, "b");
    let (router_a, router_b) = (router_a.unwrap(), router_b.unwrap());
    assert!(a.ternctl_json(&["ping", &b.address]).0);
    wait_for_path(&a, &b, "direct", Duration::from_secs(10));

    // A transfer through b's echo that runs until told to finish.
    let mut child = pipe_to_echo(&a, &b);
    let finish = std::sync::Arc::new(AtomicBool::new(false));
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut transfer = tern_tests::Guard(child);
    let writer = std::thread::spawn({
        let finish = finish.clone();
        move || {
            let mut sent = 0usize;
            let mut chunk = vec![0u8; 64 * 1024];
            while !finish.load(Ordering::Relaxed) {
                for (i, byte) in chunk.iter_mut().enumerate() {
                    *byte = ((sent + i) * 13 + (sent + i) / 509) as u8;
                }
                stdin.write_all(&chunk).unwrap();
                sent += chunk.len();
                std::thread::sleep(Duration::from_millis(20));
            }
            sent
        }
    });
    let reader = std::thread::spawn(move || {
        let mut received = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                return received;
            }
            for (i, &byte) in buf[..n].iter().enumerate() {
                let at = received + i;
                assert_eq!(byte, (at * 13 + at / 509) as u8, "byte {at} differs");
            }
            received += n;
        }
    });
    std::thread::sleep(Duration::from_secs(1));

    let cut = format!(
        "table inet tern_cut {{\n\
         chain incoming {{ type filter hook prerouting priority -300; ip saddr {} drop; }}\n\
         chain outgoing {{ type filter hook forward priority -300; ip daddr {} drop; }}\n}}\n",
        router_a.public, router_a.public
    );
    router_b.namespace.nft(&cut).unwrap();
    let on_relay = wait_for_path(&a, &b, "relay", Duration::from_secs(20));
    assert_eq!(on_relay["remote"], rendezvous_at.as_str());
    std::thread::sleep(Duration::from_secs(1));
    router_b
        .namespace
        .nft("delete table inet tern_cut\n")
        .unwrap();
    let back = wait_for_path(&a, &b, "direct", Duration::from_secs(30));
    assert!(
        back["remote"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", router_b.public))
    );

    std::thread::sleep(Duration::from_millis(500));
    finish.store(true, Ordering::Relaxed);
    let sent = writer.join().unwrap();
    let received = reader.join().unwrap();
    let status = transfer.0.wait().unwrap();
    let mut said = String::new();
    stderr.read_to_string(&mut said).unwrap();
    assert!(status.success(), "{said}");
    assert_eq!(received, sent, "every byte came back");
}

#[test]
fn status_tells_the_kind_of_nat_a_node_sits_behind() {
    let (mut net, _rendezvous, at) = internet_with_rendezvous();
    let expectations = [
        (Site::Public, "none"),
        (Site::Behind(NatKind::FullCone), "cone"),
        (Site::Behind(NatKind::HomeRouter), "port-restricted"),
        (Site::Behind(NatKind::CarrierGrade), "port-restricted"),
        (Site::Behind(NatKind::Symmetric), "symmetric"),
    ];
    let agents: Vec<_> = expectations
        .iter()
        .enumerate()
        .map(|(i, (site, _))| agent(&mut net, &at, *site, &format!("n{i}")).0)
        .collect();
    for ((site, kind), daemon) in expectations.iter().zip(&agents) {
        let nat = nat_seen(daemon);
        assert_eq!(nat["kind"], *kind, "{site:?}: {nat}\n{}", daemon.log());
    }
    // And `peers` says why a connection to the symmetric side stays relayed.
    let (symmetric, home) = (&agents[4], &agents[2]);
    assert!(symmetric.ternctl(&["ping", &home.address]).status.success());
    let entry = peer_entry(symmetric, home);
    assert_eq!(entry["path"], "relay", "{entry}");
    assert!(
        entry["relayed_because"]
            .as_str()
            .unwrap()
            .contains("symmetric"),
        "{entry}"
    );
}
