//! Crashes: `ternd` killed with SIGKILL in the middle of writing its home, in the middle of a
//! transfer, and local clients that vanish mid-stream. Nothing a crash interrupts may leave
//! the home unreadable or lose what was already confirmed.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tern_tests::{Daemon, binary, ternctl, ternctl_json};

/// A made-up node address (trust entries need no running node).
fn address(n: u32) -> String {
    format!("7e57:{:04x}:{:04x}", n >> 16, n & 0xffff)
}

#[test]
fn sigkill_during_writes_never_damages_the_home_or_loses_a_confirmed_change() {
    let rendezvous = Daemon::start(&[]);
    let peer = Daemon::start(&["--rendezvous", &rendezvous.listen, "--hostname", "peer"]);
    peer.wait_registered();
    let args = [
        "--rendezvous",
        rendezvous.listen.as_str(),
        "--hostname",
        "victim",
    ];
    let mut victim = Daemon::start(&args);
    let first_address = victim.address.clone();
    let confirmed: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut n = 0u32;
    for round in 0..8u64 {
        let home = victim.home.path().to_path_buf();
        let mut writers = Vec::new();
        for _ in 0..4 {
            n += 1;
            let (home, confirmed, trusted) = (home.clone(), confirmed.clone(), address(n));
            writers.push(std::thread::spawn(move || {
                if ternctl(&home, &["trust", "add", &trusted]).status.success() {
                    confirmed.lock().unwrap().push(trusted);
                }
                let _ = ternctl(
                    &home,
                    &["trust", "request", "peer", "--reason", "crash test"],
                );
                let _ = ternctl(&home, &["alias", "add", &format!("a{n}"), &address(n)]);
                let _ = ternctl(&home, &["name", "set", "victim"]);
            }));
        }
        // Killed at some point in the middle of all that.
        std::thread::sleep(Duration::from_millis(20 + round * 37 % 200));
        victim = victim.restart(&args);
        for writer in writers {
            let _ = writer.join();
        }
        assert_eq!(victim.address, first_address, "round {round}");
    }
    // Every document in the home is whole, and what was confirmed is there.
    for file in [
        "trust.json",
        "names.json",
        "trust-requests.json",
        "counter.json",
    ] {
        let path = victim.home.path().join(file);
        if let Ok(bytes) = std::fs::read(&path) {
            serde_json::from_slice::<Value>(&bytes)
                .unwrap_or_else(|e| panic!("{} is damaged: {e}", path.display()));
        }
    }
    let (ok, list) = victim.ternctl_json(&["trust", "list"]);
    assert!(ok, "{list}");
    let trusted: Vec<&str> = list["data"]["trusted"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for address in confirmed.lock().unwrap().iter() {
        assert!(trusted.contains(&address.as_str()), "{address} was lost");
    }
    assert!(!confirmed.lock().unwrap().is_empty());
    let (_, names) = victim.ternctl_json(&["name", "show"]);
    assert_eq!(names["data"]["own"], "victim");
    let (ok, found) = ternctl_json(peer.home.path(), &["find", "victim"]);
    assert!(ok, "{found}\n{}", victim.log());
    assert_eq!(found["data"]["address"], first_address.as_str());
}

/// `ternctl connect` from `a` to `b`'s `port`, stdin and stderr piped.
fn connect_to(a: &Daemon, b: &Daemon, port: &str) -> std::process::Child {
    Command::new(binary("ternctl"))
        .args(["--home", a.home.path().to_str().unwrap()])
        .args(["connect", &b.address, port])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_peer_killed_mid_transfer_fails_the_stream_clearly_and_a_redial_works_after_restart() {
    let (a, b) = Daemon::pair();
    let listen = b.serve(&["listen", "4100", "--open"]);
    let mut connect = connect_to(&a, &b, "4100");
    let mut stdin = connect.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = vec![0x5a; 64 << 10];
        // Until the stream breaks (a broken pipe once ternctl exits).
        while stdin.write_all(&chunk).is_ok() {}
    });
    std::thread::sleep(Duration::from_millis(500));
    drop(listen);
    let args = ["--rendezvous", a.listen.as_str()];
    let b_address = b.address.clone();
    let b = b.restart(&args);
    assert_eq!(b.address, b_address, "same address after the crash");

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = connect.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "connect never noticed the crash\n{}\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    connect
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "a broken stream must not look clean");
    assert!(stderr.starts_with("ternctl: "), "{stderr:?}");
    let _ = feeder.join();

    // The restarted node is reached again, by the same address, with a new stream.
    b.wait_registered();
    let _listen = b.serve(&["listen", "4100", "--open"]);
    let (ok, pong) = a.ternctl_json(&["ping", &b.address]);
    assert!(ok, "{pong}\n{}", a.log());
    let mut again = connect_to(&a, &b, "4100");
    again
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello again\n")
        .unwrap();
    let out = again.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn local_clients_that_vanish_mid_stream_leave_the_daemon_serving() {
    let (a, b) = Daemon::pair();
    let _listen = b.serve(&["listen", "4200", "--open"]);
    for _ in 0..20 {
        let mut connect = connect_to(&a, &b, "4200");
        let _ = connect.stdin.as_mut().unwrap().write_all(&[1; 10_000]);
        std::thread::sleep(Duration::from_millis(10));
        let _ = connect.kill();
        let _ = connect.wait();
    }
    for node in [&a, &b] {
        let (ok, status) = node.ternctl_json(&["status"]);
        assert!(ok, "{status}");
    }
    let (ok, pong) = a.ternctl_json(&["ping", &b.address]);
    assert!(ok, "{pong}");
}

#[test]
fn a_rendezvous_restarted_under_fifty_nodes_has_them_all_back_within_seconds() {
    use tern_daemon::daemon::{Daemon as Node, DaemonConfig};
    use tern_daemon::env::os::OsEnv;
    use tern_daemon::home::Home;
    const NODES: usize = 50;
    let rendezvous = Daemon::start(&[]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let homes: Vec<_> = (0..NODES).map(|_| tempfile::tempdir().unwrap()).collect();
    let server = rendezvous.listen.clone();
    let start = |home: &tempfile::TempDir| {
        let config = DaemonConfig::new(
            Home::at(home.path()),
            "127.0.0.1:0".parse().unwrap(),
            vec![server.clone()],
        );
        runtime.block_on(async { Node::start(config, OsEnv::shared()).unwrap() })
    };
    let nodes: Vec<_> = homes.iter().map(start).collect();
    let all_registered = |nodes: &[std::sync::Arc<Node>], within: Duration| {
        let deadline = Instant::now() + within;
        while !nodes.iter().all(|n| n.status()["registered"] == true) {
            assert!(
                Instant::now() < deadline,
                "not all registered within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    all_registered(&nodes, Duration::from_secs(60));

    let rendezvous = rendezvous.restart(&[]);
    // Each node notices its rendezvous went (the restarted server resets their connections)
    // and registers again: the server holds a connection to every one of them, so it can
    // introduce and relay to each, long before their next refresh a minute later.
    rendezvous.wait_status(Duration::from_secs(30), "connected to every node", |s| {
        s["peers"].as_u64().is_some_and(|n| n >= NODES as u64)
    });
    all_registered(&nodes, Duration::from_secs(5));
    let newcomer_home = tempfile::tempdir().unwrap();
    let newcomer = start(&newcomer_home);
    runtime.block_on(async {
        for node in nodes.iter().step_by(10) {
            let target = node.status()["address"].as_str().unwrap().parse().unwrap();
            newcomer.connector().connect(target).await.unwrap();
        }
    });
    drop(nodes);
    drop(newcomer);
}
