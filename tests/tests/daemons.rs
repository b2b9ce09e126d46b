//! Two real `ternd`s on loopback, driven by `ternctl` exactly as DESIGN.md's command line says.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tern_tests::{Daemon, binary, json_rpc_service, tcp_service};

/// Echoes every byte, then closes its write side.
fn echo_service() -> u16 {
    tcp_service(|conn| {
        let mut writer = conn.try_clone().unwrap();
        let mut reader = conn;
        let _ = std::io::copy(&mut reader, &mut writer);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    })
}

#[test]
fn a_message_reaches_an_exposed_service_once_trusted_and_is_refused_before() {
    let (a, b) = Daemon::pair();
    let service = json_rpc_service();
    let _exposed = a.serve(&["expose", "2000", "--to", &format!("127.0.0.1:{service}")]);
    let message = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

    // Private by default: B is refused, within seconds, by name.
    let out = b.ternctl(&["connect", &a.address, "2000", "--message", message]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&a.address) && stderr.contains("trust"),
        "{stderr}"
    );

    let (ok, _) = a.ternctl_json(&["trust", "add", &b.address]);
    assert!(ok);
    let out = b.ternctl(&["connect", &a.address, "2000", "--message", message]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        b.log()
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["result"]["echo"], "ping");

    let (ok, doc) = b.ternctl_json(&[
        "send",
        &a.address,
        "2000",
        "--data",
        r#"{"jsonrpc":"2.0","id":"x7","method":"tools/list"}"#,
    ]);
    assert!(ok, "{doc}");
    assert_eq!(doc["data"]["result"]["echo"], "tools/list");

    // Trust removal applies at once.
    assert!(a.ternctl_json(&["trust", "remove", &b.address]).0);
    assert!(
        !b.ternctl(&["connect", &a.address, "2000", "--message", message])
            .status
            .success()
    );
    let (_, list) = a.ternctl_json(&["trust", "list"]);
    assert_eq!(list["data"]["trusted"], serde_json::json!([]));
}

#[test]
fn status_peers_and_ping_report_the_connection_both_ways() {
    let (a, b) = Daemon::pair();
    let (_, status) = b.ternctl_json(&["status"]);
    // Registration happens right after start; give it a moment.
    for _ in 0..100 {
        if b.ternctl_json(&["status"]).1["data"]["registered"] == true {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        b.ternctl_json(&["status"]).1["data"]["registered"],
        true,
        "{status}"
    );
    let (ok, ping) = b.ternctl_json(&["ping", &a.address]);
    assert!(ok, "{ping}");
    assert!(ping["data"]["rtt_ms"].as_f64().unwrap() > 0.0);
    // A reaches B through its own registry (B registered there).
    assert!(a.ternctl_json(&["ping", &b.address]).0);
    let (ok, bench) = a.ternctl_json(&["bench", &b.address, "--bytes", "4194304"]);
    assert!(ok, "{bench}");
    assert_eq!(bench["data"]["bytes"], 4_194_304);
    assert!(bench["data"]["throughput_mib_s"].as_f64().unwrap() > 0.0);
    assert!(bench["data"]["rtt_ms"]["median"].as_f64().unwrap() > 0.0);
    let request_reply = &bench["data"]["request_reply_us"];
    assert!(request_reply["p50"].as_f64().unwrap() > 0.0, "{bench}");
    assert!(
        request_reply["p99"].as_f64() >= request_reply["p50"].as_f64(),
        "{bench}"
    );
    let (ok, peers) = a.ternctl_json(&["peers"]);
    assert!(ok);
    let peer = &peers["data"]["peers"][0];
    assert_eq!(peer["address"], b.address.as_str());
    assert_eq!(peer["path"], "direct");
    assert_eq!(peer["remote"], b.listen.as_str());
    for field in ["rtt_ms", "bytes_sent", "bytes_received", "since"] {
        assert!(peer[field].is_number(), "{field} missing in {peer}");
    }
}

#[test]
fn forward_and_expose_carry_a_large_payload_byte_exact_over_many_connections() {
    let (a, b) = Daemon::pair();
    let echo = echo_service();
    let (_exposed, _forward, local) = a.expose_to(&b, 3000, &echo.to_string(), true);

    let payload: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected: [u8; 32] = Sha256::digest(&payload).into();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let payload = payload.clone();
            std::thread::spawn(move || {
                let conn = TcpStream::connect(local).unwrap();
                let mut writer = conn.try_clone().unwrap();
                let sender = std::thread::spawn(move || {
                    writer.write_all(&payload).unwrap();
                    writer.shutdown(std::net::Shutdown::Write).unwrap();
                });
                let mut back = Vec::new();
                let mut reader = conn;
                reader.read_to_end(&mut back).unwrap();
                sender.join().unwrap();
                <[u8; 32]>::from(Sha256::digest(&back))
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), expected, "payload changed in transit");
    }
}

#[test]
fn connect_pipes_stdin_to_a_listener_and_half_closes() {
    let (a, b) = Daemon::pair();
    let mut listen = a.serve(&["listen", "4000", "--open"]);
    let mut connect = Command::new(binary("ternctl"))
        .args([
            "--home",
            b.home.path().to_str().unwrap(),
            "connect",
            &a.address,
            "4000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    connect
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    // stdin closed: the stream half-closes; the listener ends its side; connect exits 0.
    let status = connect.wait().unwrap();
    assert!(status.success());
    let mut got = vec![0u8; 18];
    listen
        .0
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut got)
        .unwrap();
    assert_eq!(got, b"line one\nline two\n");
}

#[test]
fn errors_say_what_is_wrong_and_what_to_do() {
    let empty = tempfile::tempdir().unwrap();
    let (ok, doc) = tern_tests::ternctl_json(empty.path(), &["status"]);
    assert!(!ok);
    assert_eq!(doc["error"]["code"], "no_daemon");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ternd.sock")
    );
    assert!(
        doc["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("ternd --home")
    );

    let a = Daemon::start(&[]);
    let out = a.ternctl(&["ping", "Not/An_Address"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("a1b2:c3d4:e5f6") && said.contains("lowercase a-z"),
        "{said}"
    );
    let out = a.ternctl(&["connect", &a.address]);
    assert_eq!(out.status.code(), Some(2), "a usage error exits 2");
    let (ok, doc) = a.ternctl_json(&["connect", "0000:0000:0001", "2000", "--message", "{}"]);
    assert!(!ok);
    assert_eq!(doc["error"]["code"], "not_found", "{doc}");
    let completion = a.ternctl(&["completions", "bash"]);
    assert!(completion.status.success());
    assert!(String::from_utf8_lossy(&completion.stdout).contains("ternctl"));
    let (ok, doc) = a.ternctl_json(&["listen", "7"]);
    assert!(!ok);
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reserved"),
        "{doc}"
    );
}

#[test]
fn a_tcp_reset_crosses_forward_and_expose_as_a_reset_not_a_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = Daemon::pair();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The service reads one byte, then either resets (first connection) or reports how the
    // client's end of the connection arrived (second connection).
    let server = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let service = server.local_addr().unwrap();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let (mut first, _) = server.accept().await.unwrap();
        let mut byte = [0u8; 1];
        first.read_exact(&mut byte).await.unwrap();
        first.set_zero_linger().unwrap();
        drop(first);
        let (mut second, _) = server.accept().await.unwrap();
        second.read_exact(&mut byte).await.unwrap();
        let end = second.read(&mut byte).await;
        seen_tx
            .send(matches!(end, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset))
            .unwrap();
    });
    let (_exposed, _forward, local) = a.expose_to(&b, 3100, &service.to_string(), true);

    runtime.block_on(async {
        // Service → client.
        let mut conn = tokio::net::TcpStream::connect(local).await.unwrap();
        conn.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 16];
        let end = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .unwrap();
        assert!(
            matches!(end, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "the client saw {end:?} instead of a reset"
        );
        // Client → service.
        let conn = tokio::net::TcpStream::connect(local).await.unwrap();
        let mut conn = conn;
        conn.write_all(b"y").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        conn.set_zero_linger().unwrap();
        drop(conn);
    });
    let reset_seen = seen_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        reset_seen,
        "the service saw a clean close instead of a reset"
    );
}

#[test]
fn datagrams_reach_a_listening_client_and_private_ports_drop_untrusted_ones() {
    let (a, b) = Daemon::pair();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client_a = tern_ctl::Client::for_home(Some(a.home.path().to_path_buf())).unwrap();
        let client_b = tern_ctl::Client::for_home(Some(b.home.path().to_path_buf())).unwrap();
        let listener = client_a.listen(6000, false).await.unwrap();

        client_b
            .send_datagram(&a.address, 6000, 777, b"before trust")
            .await
            .unwrap();
        let early =
            tokio::time::timeout(Duration::from_millis(500), listener.recv_datagram()).await;
        assert!(
            early.is_err(),
            "an untrusted datagram was delivered: {early:?}"
        );

        client_a.trust_add(&b.address).await.unwrap();
        // Datagrams are unreliable: send a few, expect at least one.
        for _ in 0..3 {
            client_b
                .send_datagram(&a.address, 6000, 777, "après trust".as_bytes())
                .await
                .unwrap();
        }
        let datagram = tokio::time::timeout(Duration::from_secs(5), listener.recv_datagram())
            .await
            .expect("no datagram arrived")
            .unwrap()
            .unwrap();
        assert_eq!(datagram.from.to_string(), b.address);
        assert_eq!(datagram.source_port, 777);
        assert_eq!(datagram.payload, "après trust".as_bytes());

        let too_big = vec![0u8; 4000];
        let err = client_b
            .send_datagram(&a.address, 6000, 1, &too_big)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "datagram_not_sent", "{err}");
    });
}

#[test]
fn an_attached_socket_carries_the_stream_and_a_bad_handover_breaks_only_that_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = Daemon::pair();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client_a = tern_ctl::Client::for_home(Some(a.home.path().to_path_buf())).unwrap();
        let client_b = tern_ctl::Client::for_home(Some(b.home.path().to_path_buf())).unwrap();
        let listener = client_a.listen(6100, true).await.unwrap();
        let accept = || async { listener.accept().await.unwrap().stream };

        // Any connected stream socket will do: here one end of a Unix socket pair.
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let pending = client_b.dial_pending(&a.address, 6100).await.unwrap();
        let attached = tokio::spawn(pending.attach(theirs.into_std().unwrap()));
        let mut remote = accept().await;
        let mut ours = ours;
        ours.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        remote.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        remote.write_all(b"pong").await.unwrap();
        remote.shutdown().await.unwrap();
        let mut reply = Vec::new();
        ours.shutdown().await.unwrap();
        ours.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"pong");
        let outcome = attached.await.unwrap().unwrap();
        assert_eq!(outcome["end"], "clean", "{outcome}");

        // A client that leaves without handing over a socket breaks its stream, visibly.
        let pending = client_b.dial_pending(&a.address, 6100).await.unwrap();
        let id = pending.id;
        let mut remote = accept().await;
        drop(pending);
        let mut rest = Vec::new();
        assert!(remote.read_to_end(&mut rest).await.is_ok());
        let outcome = client_a.outcome(remote.id).await.unwrap();
        assert_eq!(outcome["end"], "broken", "{outcome}");
        let outcome = client_b.outcome(id).await.unwrap();
        assert_eq!(outcome["end"], "broken", "{outcome}");

        // The stream lives while the client that attached it does.
        let (_ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let pending = client_b.dial_pending(&a.address, 6100).await.unwrap();
        let attached = tokio::spawn(pending.attach(theirs.into_std().unwrap()));
        let mut remote = accept().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        attached.abort();
        let mut rest = Vec::new();
        assert!(
            remote.read_to_end(&mut rest).await.is_ok(),
            "the stream reached end of file"
        );
        let outcome = client_a.outcome(remote.id).await.unwrap();
        assert_eq!(outcome["end"], "broken", "{outcome}");

        // A descriptor that is not a stream socket is refused, with a reason.
        let pending = client_b.dial_pending(&a.address, 6100).await.unwrap();
        let _remote = accept().await;
        let datagram = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let outcome = pending.attach(datagram).await.unwrap();
        assert_eq!(outcome["end"], "broken", "{outcome}");
        assert!(
            outcome["detail"]
                .as_str()
                .unwrap()
                .contains("not a stream socket"),
            "{outcome}"
        );

        // Stream bytes where the descriptor should be.
        let mut raw = tokio::net::UnixStream::connect(b.home.path().join("ternd.sock"))
            .await
            .unwrap();
        let dial =
            serde_json::json!({"op": "dial", "target": a.address, "port": 6100, "attach": true});
        let body = serde_json::to_vec(&dial).unwrap();
        raw.write_u32(body.len() as u32).await.unwrap();
        raw.write_all(&body).await.unwrap();
        let read = async |conn: &mut tokio::net::UnixStream| {
            let len = conn.read_u32().await.unwrap() as usize;
            let mut body = vec![0u8; len];
            conn.read_exact(&mut body).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        };
        assert_eq!(read(&mut raw).await["ok"], true);
        let _remote = accept().await;
        raw.write_all(b"hello").await.unwrap();
        let outcome = read(&mut raw).await;
        assert_eq!(outcome["data"]["end"], "broken", "{outcome}");
        assert!(
            client_b.status().await.is_ok(),
            "the daemon stopped answering"
        );
    });
}

#[test]
fn a_client_that_makes_its_attached_sockets_blocking_cannot_stall_the_daemon() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = Daemon::pair();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client_a = tern_ctl::Client::for_home(Some(a.home.path().to_path_buf())).unwrap();
        let client_b = tern_ctl::Client::for_home(Some(b.home.path().to_path_buf())).unwrap();
        let listener = client_a.listen(6101, true).await.unwrap();
        // More streams than the daemon has runtime workers, each socket's open file set to
        // blocking by the client (which shares it with the daemon): a daemon that trusted
        // O_NONBLOCK would block a worker in read(2) on each one after the first bytes.
        let mut streams = Vec::new();
        for _ in 0..8 {
            let (mut ours, theirs) = tokio::net::UnixStream::pair().unwrap();
            let theirs = theirs.into_std().unwrap();
            theirs.set_nonblocking(false).unwrap();
            let pending = client_b.dial_pending(&a.address, 6101).await.unwrap();
            let attached = tokio::spawn(pending.attach(theirs));
            let mut remote = listener.accept().await.unwrap().stream;
            ours.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            remote.read_exact(&mut got).await.unwrap();
            streams.push((ours, remote, attached));
        }
        let status = tokio::time::timeout(Duration::from_secs(5), client_b.status()).await;
        assert!(matches!(status, Ok(Ok(_))), "the daemon stopped answering");
        for (mut ours, mut remote, attached) in streams {
            remote.write_all(b"pong").await.unwrap();
            remote.shutdown().await.unwrap();
            ours.shutdown().await.unwrap();
            let mut reply = Vec::new();
            ours.read_to_end(&mut reply).await.unwrap();
            assert_eq!(reply, b"pong");
            let outcome = attached.await.unwrap().unwrap();
            assert_eq!(outcome["end"], "clean", "{outcome}");
        }
    });
}

#[test]
fn a_restarted_rendezvous_still_holds_the_records_registered_with_it() {
    let (a, b) = Daemon::pair();
    b.wait_registered();
    // Records are written within 5 s of a change.
    std::thread::sleep(Duration::from_millis(5500));
    let a = a.restart(&[]);
    let (_, status) = a.ternctl_json(&["status"]);
    assert_eq!(status["data"]["records_held"], 2, "{status}\n{}", a.log());
    // And it can find B by that record right away (B's connection went down with A).
    let (ok, ping) = a.ternctl_json(&["ping", &b.address]);
    assert!(ok, "{ping}\n{}", a.log());
}

#[test]
fn the_example_agent_serves_and_calls_through_two_daemons() {
    let (a, b) = Daemon::pair();
    let agent = tern_tests::binary("examples/echo_agent");
    let mut server = Command::new(&agent)
        .args(["serve", "2500"])
        .env("TERN_HOME", a.home.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(server.stderr.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let _server = tern_tests::Guard(server);
    a.ternctl(&["trust", "add", &b.address]);
    let out = Command::new(&agent)
        .args(["call", &a.address, "2500", "héllo"])
        .env("TERN_HOME", b.home.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["result"]["text"], "héllo");
    assert_eq!(reply["result"]["from"], b.address.as_str());
}

#[test]
fn malformed_local_api_frames_get_clear_errors_and_the_daemon_carries_on() {
    use std::os::unix::net::UnixStream;
    let a = Daemon::start(&[]);
    let socket = a.home.path().join("ternd.sock");
    let read_frame = |conn: &mut UnixStream| -> serde_json::Value {
        let mut header = [0u8; 4];
        conn.read_exact(&mut header).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        conn.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    };
    for body in [
        &b"not json"[..],
        br#"{"op":"format_disk"}"#,
        br#"{"op":"dial","target":7}"#,
    ] {
        let mut conn = UnixStream::connect(&socket).unwrap();
        conn.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
        conn.write_all(body).unwrap();
        let answer = read_frame(&mut conn);
        assert_eq!(answer["ok"], false);
        assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
    }
    // An oversized length, and a client that vanishes mid-frame.
    let mut conn = UnixStream::connect(&socket).unwrap();
    conn.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert_eq!(read_frame(&mut conn)["error"]["code"], "bad_request");
    let mut conn = UnixStream::connect(&socket).unwrap();
    conn.write_all(&[0, 0, 1, 0, b'{']).unwrap();
    drop(conn);
    assert!(
        a.ternctl_json(&["status"]).0,
        "the daemon stopped answering"
    );
}
