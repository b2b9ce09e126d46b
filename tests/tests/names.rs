//! Names and trust requests with real daemons on loopback, driven by `ternctl`.

use std::time::{Duration, Instant};

use serde_json::Value;
use tern_tests::{Daemon, json_rpc_service};

const MESSAGE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_node_is_reached_by_name_and_a_second_key_cannot_claim_it() {
    let alpha = Daemon::start(&["--hostname", "alpha"]);
    let b = Daemon::start(&["--rendezvous", &alpha.listen]);
    b.wait_registered();
    let service = json_rpc_service();
    let _exposed = alpha.serve(&[
        "expose",
        "2000",
        "--to",
        &format!("127.0.0.1:{service}"),
        "--open",
    ]);

    let out = b.ternctl(&["connect", "alpha", "2000", "--message", MESSAGE]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), alpha.log());
    let reply: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["result"]["echo"], "ping");

    let (ok, found) = b.ternctl_json(&["find", "alpha"]);
    assert!(ok, "{found}");
    assert_eq!(found["data"]["address"], alpha.address.as_str());
    assert_eq!(found["data"]["name"], "alpha");
    let id = alpha.ternctl_json(&["id"]).1;
    assert_eq!(found["data"]["public_key"], id["data"]["public_key"]);
    assert!(b.ternctl(&["ping", "alpha"]).status.success());

    // Another key asks for the same name, at start and later: refused, naming the holder.
    let c = Daemon::start(&["--rendezvous", &alpha.listen, "--hostname", "alpha"]);
    c.wait_status(Duration::from_secs(20), "told the name is taken", |s| {
        s["rendezvous"][0]["name_refused"]
            .as_str()
            .is_some_and(|why| why.contains(&alpha.address))
    });
    let (ok, claim) = c.ternctl_json(&["name", "set", "alpha"]);
    assert!(!ok);
    assert_eq!(claim["error"]["code"], "name_taken");
    assert!(
        claim["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&alpha.address)
    );
    let (_, found) = b.ternctl_json(&["find", "alpha"]);
    assert_eq!(found["data"]["address"], alpha.address.as_str());
    let (_, status) = alpha.ternctl_json(&["status"]);
    assert!(
        status["data"]["refused"]["name_claims_taken"]
            .as_u64()
            .unwrap()
            >= 2
    );
    // Still reachable by address, and by a name of its own.
    assert!(c.ternctl(&["name", "set", "gamma"]).status.success());
    let (_, gamma) = b.ternctl_json(&["find", "gamma"]);
    assert_eq!(gamma["data"]["address"], c.address.as_str());

    // Names that break the rule, and names nobody holds.
    let out = c.ternctl(&["name", "set", "Not_Valid"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("lowercase a-z, 0-9 and '-'"));
    let (ok, missing) = b.ternctl_json(&["connect", "nobody-here", "2000", "--message", MESSAGE]);
    assert!(!ok);
    assert_eq!(missing["error"]["code"], "not_found", "{missing}");
}

#[test]
fn aliases_come_first_and_a_pinned_name_cannot_move_to_another_key() {
    let first_rendezvous = Daemon::start(&[]);
    let alpha = Daemon::start(&[
        "--rendezvous",
        &first_rendezvous.listen,
        "--hostname",
        "alpha",
    ]);
    alpha.wait_registered();
    let b = Daemon::start(&["--rendezvous", &first_rendezvous.listen]);
    let (ok, found) = b.ternctl_json(&["find", "alpha"]);
    assert!(ok, "{found}");
    assert_eq!(found["data"]["address"], alpha.address.as_str());

    // B moves to another rendezvous, where another key holds "alpha".
    let other_rendezvous = Daemon::start(&[]);
    let impostor = Daemon::start(&[
        "--rendezvous",
        &other_rendezvous.listen,
        "--hostname",
        "alpha",
    ]);
    impostor.wait_registered();
    let b = b.restart(&["--rendezvous", &other_rendezvous.listen]);
    let (ok, refused) = b.ternctl_json(&["ping", "alpha"]);
    assert!(!ok);
    assert_eq!(refused["error"]["code"], "pin_mismatch");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains(&alpha.address) && message.contains(&impostor.address));
    assert!(message.contains("ternctl name forget alpha"));

    // The operator's alias wins over any rendezvous.
    assert!(
        b.ternctl(&["alias", "add", "alpha", &alpha.address])
            .status
            .success()
    );
    let (_, aliased) = b.ternctl_json(&["alias", "list"]);
    assert_eq!(aliased["data"]["alpha"], alpha.address.as_str());
    assert!(b.ternctl(&["alias", "remove", "alpha"]).status.success());
    assert!(!b.ternctl(&["alias", "remove", "alpha"]).status.success());

    // Accepting the change: forget the pin, and the next lookup pins the new key.
    assert!(b.ternctl(&["name", "forget", "alpha"]).status.success());
    let (ok, found) = b.ternctl_json(&["find", "alpha"]);
    assert!(ok, "{found}");
    assert_eq!(found["data"]["address"], impostor.address.as_str());
}

#[test]
fn a_name_survives_a_rendezvous_restart() {
    let rendezvous = Daemon::start(&[]);
    let alpha = Daemon::start(&["--rendezvous", &rendezvous.listen, "--hostname", "alpha"]);
    alpha.wait_registered();
    let rendezvous = rendezvous.restart(&[]);
    let b = Daemon::start(&["--rendezvous", &rendezvous.listen]);
    let (ok, found) = b.ternctl_json(&["find", "alpha"]);
    assert!(ok, "{found}\n{}", rendezvous.log());
    assert_eq!(found["data"]["address"], alpha.address.as_str());
    let (ok, claim) = b.ternctl_json(&["name", "set", "alpha"]);
    assert!(!ok, "{claim}");
    assert_eq!(claim["error"]["code"], "name_taken");
}

#[test]
fn a_trust_request_once_approved_opens_private_ports_both_ways() {
    let alpha = Daemon::start(&["--hostname", "alpha"]);
    let b = Daemon::start(&["--rendezvous", &alpha.listen]);
    b.wait_registered();
    let service = json_rpc_service();
    let _exposed = alpha.serve(&["expose", "2000", "--to", &format!("127.0.0.1:{service}")]);
    let _b_exposed = b.serve(&["expose", "2001", "--to", &format!("127.0.0.1:{service}")]);

    let (ok, refused) = b.ternctl_json(&["connect", "alpha", "2000", "--message", MESSAGE]);
    assert!(!ok);
    assert_eq!(refused["error"]["code"], "refused", "{refused}");

    let out = b.ternctl(&["trust", "request", "alpha", "--reason", "agent b, build 7"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Asking again does not pile up.
    assert!(
        b.ternctl(&["trust", "request", "alpha", "--reason", "agent b, build 7"])
            .status
            .success()
    );
    let (_, pending) = alpha.ternctl_json(&["trust", "pending"]);
    let pending = pending["data"]["pending"].as_array().unwrap().clone();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["address"], b.address.as_str());
    assert_eq!(pending[0]["reason"], "agent b, build 7");
    // Still refused until approved.
    assert!(
        !b.ternctl(&["connect", "alpha", "2000", "--message", MESSAGE])
            .status
            .success()
    );

    let (ok, approved) = alpha.ternctl_json(&["trust", "approve", &b.address]);
    assert!(ok, "{approved}");
    assert_eq!(approved["data"]["told"], true, "{approved}");
    let out = b.ternctl(&["connect", "alpha", "2000", "--message", MESSAGE]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(r#""echo":"ping""#));
    // Approval trusts both ways.
    let out = alpha.ternctl(&["connect", &b.address, "2001", "--message", MESSAGE]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        alpha.ternctl_json(&["trust", "pending"]).1["data"]["pending"],
        serde_json::json!([])
    );
    assert!(
        !alpha
            .ternctl(&["trust", "approve", &b.address])
            .status
            .success()
    );

    // A rejected request leaves the requester untrusted, and it is told.
    let c = Daemon::start(&["--rendezvous", &alpha.listen]);
    assert!(c.ternctl(&["trust", "request", "alpha"]).status.success());
    assert_eq!(
        c.ternctl_json(&["trust", "pending"]).1["data"]["outgoing"][0]["address"],
        alpha.address.as_str()
    );
    assert!(
        alpha
            .ternctl(&["trust", "reject", &c.address])
            .status
            .success()
    );
    assert_eq!(
        c.ternctl_json(&["trust", "pending"]).1["data"]["outgoing"],
        serde_json::json!([])
    );
    assert!(
        !c.ternctl(&["connect", "alpha", "2000", "--message", MESSAGE])
            .status
            .success()
    );
    assert!(
        !alpha.ternctl_json(&["trust", "list"]).1["data"]["trusted"]
            .to_string()
            .contains(&c.address)
    );

    // A requester that is down when its request is approved is told once it is back.
    let d = Daemon::start(&["--rendezvous", &alpha.listen]);
    assert!(d.ternctl(&["trust", "request", "alpha"]).status.success());
    let d_address = d.address.clone();
    let d = d.restart_after(&["--rendezvous", &alpha.listen], || {
        let (ok, approved) = alpha.ternctl_json(&["trust", "approve", &d_address]);
        assert!(ok, "{approved}");
        assert_eq!(approved["data"]["told"], false, "{approved}");
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.ternctl_json(&["trust", "list"]).1["data"]["trusted"]
        .to_string()
        .contains(&alpha.address)
    {
        assert!(Instant::now() < deadline, "never told:\n{}", alpha.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}
