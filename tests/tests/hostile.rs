//! Hostile peers against real daemons on loopback: strangers who register names where they
//! should not, replay records, ask for packet floods, forge pongs and flood handshakes. Each
//! test is an attack that worked before tern refused it (SPEC §11).
//!
//! The attacker is a `tern_daemon::Node` run in the test process (or a raw UDP socket):
//! a peer that speaks the protocol but does what ternd never would.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use tern_daemon::Node;
use tern_daemon::home::Home;
use tern_daemon::rendezvous::{self, RendezvousError};
use tern_proto::record::Record;
use tern_proto::rendezvous::{Answer, Request};
use tern_proto::{Name, SecretIdentity};
use tern_tests::Daemon;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn unix_now() -> u64 {
    use tern_daemon::env::EnvExt;
    tern_daemon::env::os::OsEnv.unix_now()
}

/// An attacker's node on loopback with a fresh identity (returned too: it signs records).
fn attacker() -> (Node, SecretIdentity) {
    let identity = SecretIdentity::generate().expect("random identity");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let node = tern_daemon::env::os::start_node(identity.clone(), socket, Default::default())
        .expect("attacker node");
    (node, identity)
}

fn name(text: &str) -> Name {
    text.parse().expect("a valid name")
}

/// The identity of a running daemon, read from its home (standing in for a record of it
/// that leaked: every introduction carries one).
fn identity_of(daemon: &Daemon) -> SecretIdentity {
    Home::at(daemon.home.path())
        .load_identity()
        .expect("the daemon's identity")
}

#[test]
fn a_name_registered_at_a_node_that_is_not_its_rendezvous_never_answers_its_lookups() {
    let rendezvous = Daemon::start(&[]);
    let bob = Daemon::start(&["--rendezvous", &rendezvous.listen, "--hostname", "bob"]);
    bob.wait_registered();
    // V uses `rendezvous`; like every ternd it is itself a rendezvous anyone can register at.
    let victim = Daemon::start(&["--rendezvous", &rendezvous.listen]);
    victim.wait_registered();
    let stranger = Daemon::start(&["--rendezvous", &victim.listen, "--hostname", "bob"]);
    stranger.wait_registered();
    assert_eq!(
        victim.ternctl_json(&["status"]).1["data"]["names_held"],
        1,
        "the stranger holds bob in V's registry"
    );

    let (ok, found) = victim.ternctl_json(&["find", "bob"]);
    assert!(ok, "{found}");
    assert_eq!(found["data"]["address"], bob.address.as_str());
    assert_eq!(found["data"]["via"], "rendezvous");
    let (_, names) = victim.ternctl_json(&["name", "show"]);
    assert_eq!(
        names["data"]["pinned"]["bob"]["address"],
        bob.address.as_str()
    );
    let (ok, pong) = victim.ternctl_json(&["ping", "bob"]);
    assert!(ok, "{pong}");
    // V's registry still answers the peers that use V as their rendezvous.
    let user = Daemon::start(&["--rendezvous", &victim.listen]);
    let (ok, found) = user.ternctl_json(&["find", "bob"]);
    assert!(ok, "{found}");
    assert_eq!(found["data"]["address"], stranger.address.as_str());
}

#[test]
fn a_pinned_name_resolves_through_its_key_before_any_rendezvous_is_asked_for_the_name() {
    let honest = Daemon::start(&[]);
    let alpha = Daemon::start(&["--rendezvous", &honest.listen, "--hostname", "alpha"]);
    alpha.wait_registered();
    let b = Daemon::start(&["--rendezvous", &honest.listen]);
    assert!(b.ternctl_json(&["find", "alpha"]).0, "pins alpha");
    // A second rendezvous, where another key holds "alpha", is asked first from now on.
    let other = Daemon::start(&[]);
    let impostor = Daemon::start(&["--rendezvous", &other.listen, "--hostname", "alpha"]);
    impostor.wait_registered();
    let b = b.restart(&[
        "--rendezvous",
        &other.listen,
        "--rendezvous",
        &honest.listen,
    ]);
    let (ok, found) = b.ternctl_json(&["find", "alpha"]);
    assert!(ok, "{found}");
    assert_eq!(found["data"]["address"], alpha.address.as_str());
    assert_eq!(found["data"]["resolved"], "pinned");
    let (ok, pong) = b.ternctl_json(&["ping", "alpha"]);
    assert!(ok, "{pong}");
    // Once alpha gives the name up, the pin no longer answers for it: the impostor is
    // reported, not silently taken.
    assert!(alpha.ternctl(&["name", "clear"]).status.success());
    let (ok, refused) = b.ternctl_json(&["find", "alpha"]);
    assert!(!ok, "{refused}");
    assert_eq!(refused["error"]["code"], "pin_mismatch");
}

#[test]
fn a_rendezvous_stores_a_record_only_from_its_owner() {
    let rendezvous = Daemon::start(&[]);
    let alice = Daemon::start(&["--rendezvous", &rendezvous.listen, "--hostname", "alice"]);
    alice.wait_registered();
    let at: SocketAddr = rendezvous.listen.parse().unwrap();
    let leaked = identity_of(&alice);
    runtime().block_on(async {
        let (attacker, me) = attacker();
        let server = attacker.connect_any(at).await.expect("reach the rendezvous");
        // Alice's newer record without her name: stored, it would release "alice".
        let nameless = Record::sign(&leaked, &[], None, u64::MAX / 2, unix_now() + 300).unwrap();
        let refused = rendezvous::register(&attacker, server, nameless).await;
        assert!(
            matches!(&refused, Err(RendezvousError::Refused(why)) if why.contains("its own record")),
            "{refused:?}"
        );
        let claim = Record::sign(
            &me,
            &[],
            Some(&name("alice")),
            1,
            unix_now() + 300,
        )
        .unwrap();
        let taken = rendezvous::register(&attacker, server, claim).await;
        assert!(
            matches!(taken, Err(RendezvousError::NameTaken { .. })),
            "{taken:?}"
        );
    });
    let b = Daemon::start(&["--rendezvous", &rendezvous.listen]);
    let (ok, found) = b.ternctl_json(&["find", "alice"]);
    assert!(ok, "{found}");
    assert_eq!(found["data"]["address"], alice.address.as_str());
    assert!(
        found["data"]["endpoints"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
}

#[test]
fn a_record_that_lives_for_years_is_refused() {
    let rendezvous = Daemon::start(&[]);
    let at: SocketAddr = rendezvous.listen.parse().unwrap();
    runtime().block_on(async {
        let (attacker, me) = attacker();
        let server = attacker
            .connect_any(at)
            .await
            .expect("reach the rendezvous");
        let years = unix_now() + 10 * 365 * 24 * 3600;
        let record = Record::sign(&me, &[], Some(&name("forever")), 1, years).unwrap();
        let refused = rendezvous::register(&attacker, server, record).await;
        assert!(
            matches!(&refused, Err(RendezvousError::Refused(why)) if why.contains("at most")),
            "{refused:?}"
        );
    });
    let (_, status) = rendezvous.ternctl_json(&["status"]);
    assert_eq!(status["data"]["names_held"], 0, "{status}");
    let b = Daemon::start(&["--rendezvous", &rendezvous.listen]);
    let (ok, _) = b.ternctl_json(&["find", "forever"]);
    assert!(!ok);
}

#[test]
fn an_introduction_from_a_peer_that_is_not_a_rendezvous_of_the_node_probes_nothing() {
    let rendezvous = Daemon::start(&[]);
    let victim = Daemon::start(&["--rendezvous", &rendezvous.listen]);
    victim.wait_registered();
    let target = UdpSocket::bind("127.0.0.1:0").expect("bind the would-be flood target");
    target
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let target_at = target.local_addr().unwrap();
    let at: SocketAddr = victim.listen.parse().unwrap();
    let victim_address = victim.address.parse().unwrap();
    runtime().block_on(async {
        let (attacker, me) = attacker();
        attacker.connect_any(at).await.expect("reach the victim");
        let record =
            Record::sign(&me, &[target_at; 8], None, unix_now(), unix_now() + 300).unwrap();
        let request = Request::Introduce {
            target: victim_address,
            record: Box::new(record),
        };
        let answer = rendezvous::ask(&attacker, victim_address, &request)
            .await
            .expect("an answer");
        assert!(
            matches!(&answer, Answer::Refused(why) if why.contains("not a rendezvous")),
            "{answer:?}"
        );
    });
    let deadline = Instant::now() + Duration::from_millis(2500);
    let mut received = 0;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        if target.recv_from(&mut buf).is_ok() {
            received += 1;
        }
    }
    assert_eq!(
        received, 0,
        "the victim probed the attacker's chosen endpoint"
    );
}

#[test]
fn a_pong_from_another_peer_or_path_never_answers_a_path_check() {
    use tern_proto::control::{ControlKeys, ControlMessage, Counter, ReplayWindow};
    runtime().block_on(async {
        let (victim, _) = attacker();
        let (peer, _) = attacker();
        peer.learn(victim.identity());
        // A path that does not answer: the check must fail.
        let dead = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead_at = dead.local_addr().unwrap();
        victim.learn(peer.identity());

        // The forger is a known peer of the victim, with its own session keys.
        let forger_id = SecretIdentity::generate().unwrap();
        let forger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let forger_at = forger.local_addr().unwrap();
        victim.learn(forger_id.public());
        let keys = ControlKeys::new(&forger_id, victim.identity());

        // It learns one ping id from a ping the victim sends it.
        let v = victim.clone();
        let forger_address = forger_id.address();
        tokio::spawn(async move {
            v.check_path(forger_address, forger_at, Duration::from_secs(1))
                .await
        });
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), forger.recv_from(&mut buf))
            .await
            .expect("the victim pings the forger")
            .unwrap();
        let Ok(ControlMessage::Ping { txid }) = keys.open(&buf[..n], &mut ReplayWindow::default())
        else {
            panic!("not a ping");
        };

        // While the victim checks its path to `peer`, the forger answers every nearby id.
        let v = victim.clone();
        let peer_address = peer.address();
        let check = tokio::spawn(async move {
            v.check_path(peer_address, dead_at, Duration::from_secs(1))
                .await
        });
        let mut counter = Counter::starting_at_unix_micros(unix_now() * 1_000_000);
        let victim_at = victim.local_addr();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(900) {
            for offset in 0..72u64 {
                let guess = txid.wrapping_sub(8).wrapping_add(offset);
                let pong = keys.seal(
                    counter.advance(),
                    &ControlMessage::Pong {
                        txid: guess,
                        observed: dead_at,
                    },
                );
                let _ = forger.send_to(&pong, victim_at).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !check.await.unwrap(),
            "a forged pong kept a dead path alive"
        );
        // The real peer on its real path still answers.
        assert!(
            victim
                .check_path(peer_address, peer.local_addr(), Duration::from_secs(1))
                .await
        );
    });
}

#[test]
fn a_flood_of_unfinished_handshakes_does_not_lock_out_a_genuine_dial() {
    let victim = Daemon::start(&[]);
    let at: SocketAddr = victim.listen.parse().unwrap();
    runtime().block_on(async {
        // Initials that will never be finished, each from its own source address (loopback
        // has 2^24 of them: as good as spoofed).
        let sources = tern_tests::floods::loopback_sources(400);
        let flood = tern_tests::floods::unfinished_handshakes(at, &sources, 0);
        let genuine = async {
            // Dial once the flood has the victim asking sources to prove their address.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (_, status) = victim.ternctl_json(&["status"]);
                if status["data"]["limits_hit"]["handshakes_retried"].as_u64() > Some(0) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the flood never filled the slots: {status}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (node, _) = attacker();
            node.connect_any(at).await
        };
        let dialled = tokio::select! {
            _ = flood => unreachable!("the flood never ends"),
            dialled = genuine => dialled,
        };
        assert!(dialled.is_ok(), "{dialled:?}");
    });
    let (_, status) = victim.ternctl_json(&["status"]);
    let retried = &status["data"]["limits_hit"]["handshakes_retried"];
    assert!(retried.as_u64().is_some_and(|n| n > 0), "{status}");
}

#[test]
fn a_flood_of_long_trust_requests_is_listed_whole_and_printed_harmlessly() {
    use tern_daemon::services::trust_requests;
    use tern_proto::trust_request::{MAX_REASON_LEN, Message, SignedRequest};
    // More than one local API frame of pending requests (each reason at its maximum).
    const SENDERS: usize = 110;
    let victim = Daemon::start(&[]);
    let at: SocketAddr = victim.listen.parse().unwrap();
    let victim_address = victim.address.parse().unwrap();
    runtime().block_on(async {
        let small = tern_daemon::TransportConfig {
            socket_buffer_bytes: 64 << 10,
            ..Default::default()
        };
        let identities: Vec<_> = (0..SENDERS)
            .map(|_| tokio::task::spawn_blocking(SecretIdentity::generate))
            .collect();
        let mut sends = tokio::task::JoinSet::new();
        // All from one IP: at most 64 handshakes from one source are let in at once.
        let dials = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
        for (n, identity) in identities.into_iter().enumerate() {
            let identity = identity.await.unwrap().unwrap();
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let node =
                tern_daemon::env::os::start_node(identity.clone(), socket, small.clone()).unwrap();
            let mut reason = format!("agent {n} \u{1b}[2J\u{1b}[31mAPPROVED ");
            reason.extend(std::iter::repeat_n('x', MAX_REASON_LEN - reason.len()));
            let dials = dials.clone();
            sends.spawn(async move {
                let _dialling = dials.acquire().await.expect("open semaphore");
                node.connect(victim_address, at)
                    .await
                    .map_err(|e| e.to_string())?;
                let request = SignedRequest::sign(&identity, victim_address, unix_now(), &reason)
                    .expect("a reason of the maximum length");
                trust_requests::send(&node, victim_address, &Message::Request(Box::new(request)))
                    .await
                    .map_err(|e| e.to_string())?;
                node.close().await;
                Ok::<_, String>(())
            });
        }
        while let Some(sent) = sends.join_next().await {
            sent.unwrap().expect("a trust request delivered");
        }
    });
    let (ok, listed) = victim.ternctl_json(&["trust", "pending"]);
    assert!(ok, "{listed}");
    let pending = listed["data"]["pending"].as_array().unwrap();
    assert_eq!(pending.len(), SENDERS);
    let text = victim.ternctl(&["trust", "pending"]);
    assert!(text.status.success());
    let printed = String::from_utf8_lossy(&text.stdout);
    assert!(
        !printed.contains('\u{1b}'),
        "an escape sequence reached the terminal"
    );
    assert_eq!(printed.matches("\\u{1b}[2J").count(), SENDERS);
}

#[test]
fn idle_tcp_links_neither_fill_the_link_table_nor_stay() {
    use std::io::Read;
    let victim = Daemon::start(&[]);
    let at: SocketAddr = victim.listen.parse().unwrap();
    // More idle links than the whole table holds, from one other address.
    let idle: Vec<std::net::TcpStream> = (0..1100)
        .filter_map(|_| connect_from("127.0.0.2", at))
        .collect();
    assert!(idle.len() > 1024, "only {} connections", idle.len());
    runtime().block_on(async {
        let (node, _) = attacker();
        let linked = node.connect_any_over_tcp(at).await;
        assert!(linked.is_ok(), "a genuine TCP link was refused: {linked:?}");
    });
    // An idle link is closed once it has sent nothing for the first-datagram deadline.
    let mut first = idle.into_iter().next().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 16];
    let read = first.read(&mut buf);
    assert!(
        matches!(read, Ok(0))
            || read.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the idle link stayed open"
    );
}

/// A TCP connection to `to` from the loopback address `from` (any port).
fn connect_from(from: &str, to: SocketAddr) -> Option<std::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(format!("{from}:0").parse().ok()?).ok()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let stream = runtime.block_on(socket.connect(to)).ok()?.into_std().ok()?;
    stream.set_nonblocking(false).ok()?;
    Some(stream)
}

#[test]
fn a_control_packet_flood_from_one_host_leaves_other_peers_path_checks_answered() {
    runtime().block_on(async {
        let (victim, _) = attacker();
        let (peer, _) = attacker();
        peer.learn(victim.identity());
        victim.learn(peer.identity());
        let victim_at = victim.local_addr();
        // Sealed control packets claiming to be from `peer` (so each costs a decryption),
        // from another host as fast as two threads can send.
        let mut forged = vec![tern_proto::packet::TernType::SealedControl as u8];
        forged.extend_from_slice(&peer.address().to_bytes());
        forged.extend_from_slice(&victim.address().to_bytes());
        forged.resize(1200, 0x5a);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flooders: Vec<_> = (0..2)
            .map(|_| {
                let (stop, mut forged) = (stop.clone(), forged.clone());
                std::thread::spawn(move || {
                    let flooder = UdpSocket::bind("127.0.0.2:0").unwrap();
                    let mut sent = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        forged[13..21].copy_from_slice(&sent.to_be_bytes());
                        let _ = flooder.send_to(&forged, victim_at);
                        sent += 1;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut answered = 0;
        for _ in 0..20 {
            let check =
                victim.check_path(peer.address(), peer.local_addr(), Duration::from_secs(1));
            answered += usize::from(check.await);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for flooder in flooders {
            flooder.join().unwrap();
        }
        assert_eq!(
            answered,
            20,
            "{:?} {:?}",
            victim.drops(),
            victim.limits_hit()
        );
        assert!(victim.limits_hit().control_packets_limited > 0);
    });
}

#[test]
fn a_node_whose_clock_stepped_back_registers_again_at_once() {
    let rendezvous = Daemon::start(&[]);
    let node = Daemon::start(&["--rendezvous", &rendezvous.listen, "--hostname", "drifter"]);
    node.wait_registered();
    let at: SocketAddr = rendezvous.listen.parse().unwrap();
    let me = identity_of(&node);
    let node = node.restart_after(&["--rendezvous", &rendezvous.listen], || {
        // While the node is down, its last life's record (signed while its clock ran a day
        // ahead) reaches the rendezvous: every record the node makes now is older.
        runtime().block_on(async {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let past =
                tern_daemon::env::os::start_node(me.clone(), socket, Default::default()).unwrap();
            let server = past.connect_any(at).await.expect("reach the rendezvous");
            let day_ahead = (unix_now() + 24 * 3600) * 1_000_000;
            let endpoints = ["192.0.2.1:9".parse().unwrap()];
            let record = Record::sign(&me, &endpoints, None, day_ahead, unix_now() + 300).unwrap();
            rendezvous::register(&past, server, record).await.unwrap();
            past.close().await;
        })
    });
    node.wait_registered();
    let peer = Daemon::start(&["--rendezvous", &rendezvous.listen]);
    let (ok, found) = peer.ternctl_json(&["find", "drifter"]);
    assert!(ok, "{found}\n{}", node.log());
    assert_eq!(found["data"]["address"], node.address.as_str());
    let (ok, pong) = peer.ternctl_json(&["ping", "drifter"]);
    assert!(ok, "{pong}");
}

#[test]
fn whoever_takes_over_a_rendezvous_address_is_not_used_unless_the_operator_says_so() {
    let rendezvous = Daemon::start(&[]);
    let spec = rendezvous.listen.clone();
    let node = Daemon::start(&["--rendezvous", &spec]);
    node.wait_registered();
    drop(rendezvous);
    // Another key now answers at the rendezvous's IP and port.
    let impostor = Daemon::start_in(None, &spec, &[]);
    let node = node.restart(&["--rendezvous", &spec]);
    let status = node.wait_status(Duration::from_secs(20), "refused the impostor", |s| {
        s["rendezvous"][0]["last_error"].is_string()
    });
    let server = &status["rendezvous"][0];
    assert_eq!(server["registered"], false, "{server}");
    assert!(server["address"].is_null(), "{server}");
    assert!(
        server["last_error"].as_str().unwrap().contains("pinned"),
        "{server}"
    );
    let (_, at_impostor) = impostor.ternctl_json(&["find", &node.address]);
    assert_ne!(
        at_impostor["ok"], true,
        "the node registered with the impostor"
    );

    // The operator accepts the new key by giving it.
    let given = format!("{}@{spec}", impostor.address);
    let node = node.restart(&["--rendezvous", &given]);
    node.wait_registered();
}

#[test]
fn a_relay_never_forwards_to_a_source_the_peer_did_not_prove() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use tern_proto::packet::TernType;
    runtime().block_on(async {
        let (relay, _) = attacker();
        let (a, _) = attacker();
        let (b, _) = attacker();
        // A reaches the relay through a forwarder that, on cue, sends A's packets on from the
        // victim's address instead (as a spoofer would), and never passes the victim's mail.
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let out = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let victim = Arc::new(tokio::net::UdpSocket::bind("127.0.0.3:0").await.unwrap());
        let (spoofing, relayed_to_victim) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let relay_at = relay.local_addr();
        let a_at = a.local_addr();
        let forwarders = [
            tokio::spawn({
                let (front, out, victim, spoofing) =
                    (front.clone(), out.clone(), victim.clone(), spoofing.clone());
                async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let (n, _) = front.recv_from(&mut buf).await.unwrap();
                        let from = if spoofing.load(Relaxed) {
                            &victim
                        } else {
                            &out
                        };
                        let _ = from.send_to(&buf[..n], relay_at).await;
                    }
                }
            }),
            tokio::spawn({
                let (front, out) = (front.clone(), out.clone());
                async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let (n, _) = out.recv_from(&mut buf).await.unwrap();
                        let _ = front.send_to(&buf[..n], a_at).await;
                    }
                }
            }),
            tokio::spawn({
                let (victim, counted) = (victim.clone(), relayed_to_victim.clone());
                async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let (n, _) = victim.recv_from(&mut buf).await.unwrap();
                        if n > 0 && buf[0] == TernType::Relay as u8 {
                            counted.fetch_add(1, Relaxed);
                        }
                    }
                }
            }),
        ];
        a.connect(relay.address(), front.local_addr().unwrap())
            .await
            .unwrap();
        b.connect(relay.address(), relay_at).await.unwrap();
        b.learn(a.identity());
        b.connect_via_relay(a.address(), relay_at).await.unwrap();
        // Traffic on A's own connection to the relay (so that the relay's quinn sees A's
        // packets come from the victim), and relayed from B to A (frames the relay must not
        // send there).
        let sinks: Vec<_> = [&a, &relay]
            .into_iter()
            .map(|node| {
                let mut listener = node.listen(4000, tern_daemon::Access::Open).unwrap();
                tokio::spawn(async move {
                    while let Some(mut stream) = listener.accept().await {
                        tokio::spawn(async move {
                            while let Ok(Some(_)) = stream.recv.read_chunk(1 << 16, true).await {}
                        });
                    }
                })
            })
            .collect();
        let sources: Vec<_> = [(b.clone(), a.address()), (a.clone(), relay.address())]
            .into_iter()
            .map(|(from, to)| {
                tokio::spawn(async move {
                    let chunk = vec![7u8; 16 << 10];
                    loop {
                        let Ok(mut stream) = from.open_stream(to, 4000).await else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        while stream.send.write_all(&chunk).await.is_ok() {}
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        spoofing.store(true, Relaxed);
        tokio::time::sleep(Duration::from_secs(4)).await;
        for task in forwarders.into_iter().chain(sources).chain(sinks) {
            task.abort();
        }
        assert_eq!(
            relayed_to_victim.load(Relaxed),
            0,
            "the relay sent relay frames to an address the peer never proved"
        );
    });
}

#[test]
fn one_identity_keeps_at_most_four_connections_and_an_idle_echo_stream_is_reset() {
    let victim = Daemon::start(&[]);
    let at: SocketAddr = victim.listen.parse().unwrap();
    let victim_address = victim.address.parse().unwrap();
    runtime().block_on(async {
        // Ten nodes with one key, each holding its own connection to the victim.
        let (first, me) = attacker();
        let mut nodes = vec![first];
        for _ in 1..10 {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            nodes.push(
                tern_daemon::env::os::start_node(me.clone(), socket, Default::default()).unwrap(),
            );
        }
        for node in &nodes {
            node.connect(victim_address, at).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let closed = nodes
            .iter()
            .filter(|n| !n.is_connected(victim_address))
            .count();
        assert_eq!(
            closed, 6,
            "the victim keeps the newest 4 connections of one identity"
        );

        // An echo stream that goes quiet is reset, not kept (and buffered) for ever.
        let newest = nodes.last().unwrap();
        let mut stream = newest
            .open_stream(victim_address, tern_daemon::daemon::ECHO_PORT)
            .await
            .unwrap();
        stream.send.write_all(b"x").await.unwrap();
        let mut echoed = [0u8; 1];
        stream.recv.read_exact(&mut echoed).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(40), stream.recv.read(&mut echoed))
            .await
            .expect("an idle echo stream ends within its idle timeout");
        assert!(ended.is_err(), "reset, not finished cleanly: {ended:?}");
    });
    let (_, status) = victim.ternctl_json(&["status"]);
    assert!(
        status["data"]["limits_hit"]["connections_closed"].as_u64() >= Some(6),
        "{status}"
    );
}

#[test]
fn a_home_others_can_write_is_refused_and_home_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let node = Daemon::start(&[]);
    let (ok, _) = node.ternctl_json(&["trust", "add", "7e57:0000:0001"]);
    assert!(ok);
    for file in ["identity.key", "trust.json", "counter.json"] {
        let mode = std::fs::metadata(node.home.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{file} has mode {mode:o}");
    }
    // Another local user could swap the identity or the socket in such a home.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut ternd = tern_tests::Guard(
        std::process::Command::new(tern_tests::binary("ternd"))
            .arg("--home")
            .arg(shared.path())
            .args(["--listen", "127.0.0.1:0"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = ternd.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "ternd started in a home others can write"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut ternd.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("writable by others"), "{stderr}");
}
