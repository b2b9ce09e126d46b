//! MCP over tern with real third-party software: the official MCP Python SDK client calling
//! `mcp-server-time` through `ternctl mcp connect` / `ternctl mcp expose` on two daemons.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tern_tests::{Daemon, binary, process_group_alive, python_client, venv_bin};

/// Arguments of the Python MCP clients: ternctl, the client node's home, the server node (an
/// address or a name), the service name.
fn mcp_client_args(client: &Daemon, server: &str, name: &str) -> Vec<std::ffi::OsString> {
    vec![
        binary("ternctl").into(),
        client.home.path().into(),
        server.into(),
        name.into(),
    ]
}

#[test]
fn the_python_sdk_client_calls_mcp_server_time_through_two_daemons_by_name() {
    let a = Daemon::start(&["--hostname", "clock-agent"]);
    let b = Daemon::start(&["--rendezvous", &a.listen]);
    let server = venv_bin("mcp-server-time");
    let _exposed = a.serve(&["mcp", "expose", "time", "--", server.to_str().unwrap()]);
    a.ternctl(&["trust", "add", &b.address]);

    for _ in 0..2 {
        // Each session gets a fresh server process; run two to show that.
        let seen = python_client(
            "mcp_time_client.py",
            &mcp_client_args(&b, "clock-agent", "time"),
            || a.log(),
        );
        assert_eq!(
            seen["tools"],
            serde_json::json!(["convert_time", "get_current_time"])
        );
        assert_eq!(seen["is_error"], false);
        let time: serde_json::Value = serde_json::from_str(seen["text"].as_str().unwrap()).unwrap();
        assert_eq!(time["timezone"], "UTC");
    }
}

#[test]
fn a_server_that_dies_mid_call_fails_the_client_and_leaves_no_process_behind() {
    let (a, b) = Daemon::pair();
    let pid_file = a.home.path().join("server.pgid");
    let script = format!(
        "echo $$ > {}; sleep 300 & read line; echo partial; exit 3",
        pid_file.display()
    );
    let _exposed = a.serve(&[
        "mcp", "expose", "flaky", "--open", "--", "sh", "-c", &script,
    ]);

    let mut connect = Command::new(binary("ternctl"))
        .args([
            "--home",
            b.home.path().to_str().unwrap(),
            "mcp",
            "connect",
            &a.address,
            "flaky",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = connect.stdin.take().unwrap();
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}\n")
        .unwrap();
    // stdin stays open: the server's death alone must end the client.
    let out = connect.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.stdout, b"partial\n",
        "output before the crash is delivered"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("flaky"));

    let pgid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_group_alive(pgid) {
        assert!(
            Instant::now() < deadline,
            "the server's process group {pgid} outlived its stream"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn server_to_client_requests_progress_and_cancellation_cross_the_overlay() {
    let (a, b) = Daemon::pair();
    let server = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        server.exists(),
        "{} is missing: run `npm ci` in tests/node (.ci/run does this)",
        server.display()
    );
    let _exposed = a.serve(&[
        "mcp",
        "expose",
        "everything",
        "--",
        "node",
        server.to_str().unwrap(),
        "stdio",
    ]);
    a.ternctl(&["trust", "add", &b.address]);

    let seen = python_client(
        "mcp_everything_client.py",
        &mcp_client_args(&b, &a.address, "everything"),
        || a.log(),
    );
    assert_eq!(
        seen["asked"],
        serde_json::json!({"sampling": 1, "elicitation": 1, "roots": 1})
    );
    assert!(
        seen["sampling"]
            .as_str()
            .unwrap()
            .contains("sampled by the test client")
    );
    assert!(
        seen["elicitation"]
            .as_str()
            .unwrap()
            .contains("Ada Lovelace")
    );
    assert!(
        seen["roots"]
            .as_str()
            .unwrap()
            .contains("file:///tmp/tern-root")
    );
    assert_eq!(seen["progress"], serde_json::json!([1.0, 2.0, 3.0, 4.0]));
    assert_eq!(seen["cancelled"], true);
    assert_eq!(
        seen["echo"], true,
        "a large non-ASCII message did not survive verbatim"
    );
}
