//! A2A over tern with real third-party software: an `a2a-sdk` client and agent, talking
//! JSON-RPC over HTTP (blocking, and SSE streaming) through `ternctl forward` → `ternctl expose`.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tern_tests::{Daemon, Guard, client_script, python_client, venv_bin};

#[test]
fn an_a2a_client_gets_blocking_and_streamed_answers_through_two_daemons_by_name() {
    let a = Daemon::start(&["--hostname", "counter-agent"]);
    let b = Daemon::start(&["--rendezvous", &a.listen]);
    // One free port number, used by the agent on 127.0.0.2 and by the forward on 127.0.0.1.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _agent = Guard(
        Command::new(venv_bin("python"))
            .arg(client_script("a2a_counter_agent.py"))
            .args(["127.0.0.2", &port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.2", port)).is_err() {
        assert!(Instant::now() < deadline, "the A2A agent did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _exposed = a.serve(&["expose", "5000", "--to", &format!("127.0.0.2:{port}")]);
    a.ternctl(&["trust", "add", &b.address]);
    let _forward = b.serve(&[
        "forward",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "counter-agent:5000",
    ]);

    let url = format!("http://127.0.0.1:{port}/");
    let seen = python_client("a2a_counter_client.py", &[&url, "4"], || b.log());

    let blocking = seen["blocking"].as_array().unwrap();
    let last = blocking.last().unwrap();
    assert_eq!(last["kind"], "task");
    assert_eq!(last["text"], "counted to 4");
    assert_eq!(last["state"], 3, "TASK_STATE_COMPLETED");

    let streamed = seen["streamed"].as_array().unwrap();
    let ticks: Vec<&serde_json::Value> = streamed
        .iter()
        .filter(|e| e["text"].as_str().unwrap_or("").starts_with("tick"))
        .collect();
    let texts: Vec<&str> = ticks.iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        ["tick 0", "tick 1", "tick 2", "tick 3"],
        "events in order"
    );
    assert!(streamed.iter().any(|e| e["text"] == "counted to 4"));
    // Unbuffered: the agent spaces ticks 0.3 s apart, and so must their arrivals.
    let first = ticks[0]["at"].as_f64().unwrap();
    let fourth = ticks[3]["at"].as_f64().unwrap();
    assert!(
        fourth - first > 0.6,
        "SSE events were held back: {streamed:?}"
    );
}
