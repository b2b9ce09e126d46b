//! The scenarios shipped in `netsim/scenarios/`, run as a user runs them: `tern-netsim run FILE
//! --seed 7`, each exiting 0 with every check passed; the same seed twice gives the same
//! report; and a wrong file is refused before anything runs, naming the file, line and key.

mod common;

use common::{netsim, scenarios, text};

/// Runs a shipped scenario with seed 7 and returns its JSON report.
fn passes(name: &str) -> serde_json::Value {
    let file = scenarios().join(format!("{name}.toml"));
    let json = std::env::temp_dir().join(format!("tern-netsim-{}-{name}.json", std::process::id()));
    let output = netsim(&[
        "run",
        file.to_str().unwrap(),
        "--seed",
        "7",
        "--json",
        json.to_str().unwrap(),
    ]);
    let report = std::fs::read_to_string(&json).ok();
    let _ = std::fs::remove_file(&json);
    assert!(output.status.success(), "{name} failed:\n{}", text(&output));
    let report: serde_json::Value = serde_json::from_str(&report.expect("a JSON report")).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["seed"], 7);
    report
}

#[test]
fn partition_during_a_transfer() {
    passes("partition-transfer");
}

#[test]
fn one_way_partition() {
    passes("one-way-partition");
}

#[test]
fn rendezvous_down_and_up() {
    passes("rendezvous-down");
}

#[test]
fn nat_rebinding_mid_connection() {
    passes("nat-rebinding");
}

#[test]
fn crash_and_restart_mid_session() {
    let report = passes("crash-restart");
    let events = report["events"].as_array().unwrap();
    let lost = events
        .iter()
        .filter_map(|e| e["event"].as_str())
        .find(|e| e.starts_with("rpc: lost its peer"))
        .expect("the app saw the crash");
    assert!(
        lost.len() > "rpc: lost its peer: ".len(),
        "a reason: {lost}"
    );
}

#[test]
fn lossy_long_path() {
    passes("lossy-path");
}

#[test]
fn nat_matrix_in_process() {
    let report = passes("nat-matrix");
    assert_eq!(report["checks"].as_array().unwrap().len(), 37);
}

#[test]
fn hundred_node_mesh() {
    let report = passes("mesh-100");
    assert_eq!(report["apps"]["everyone"]["delivered"], 9900);
}

#[test]
fn the_same_seed_gives_the_same_report() {
    for name in ["crash-restart", "nat-matrix"] {
        let file = scenarios().join(format!("{name}.toml"));
        let output = netsim(&["run", file.to_str().unwrap(), "--check-determinism"]);
        assert!(output.status.success(), "{name}:\n{}", text(&output));
        assert!(
            text(&output).contains("gave the same report"),
            "{}",
            text(&output)
        );
    }
}

#[test]
fn another_seed_gives_another_run() {
    let file = scenarios().join("crash-restart.toml");
    let report = |seed: &str| {
        let output = netsim(&["run", file.to_str().unwrap(), "--seed", seed]);
        assert!(output.status.success(), "{}", text(&output));
        let out = String::from_utf8_lossy(&output.stdout).to_string();
        out.lines()
            .find(|l| l.contains("datagrams"))
            .unwrap()
            .to_string()
    };
    assert_ne!(report("7"), report("8"));
}

#[test]
fn a_wrong_file_is_refused_naming_the_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("tern-netsim-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read_to_string(scenarios().join("crash-restart.toml")).unwrap();
    let cases = [
        ("kind = \"rpc\"", "kind = \"rcp\"", "`kind`"),
        ("rate = 5", "rat = 5", "`rat`"),
        ("crash = \"bob\"", "crash = \"bobby\"", "`event`"),
        (
            "duration = \"120s\"",
            "duration = \"two minutes\"",
            "`duration`",
        ),
    ];
    for (from, to, key) in cases {
        assert!(good.contains(from), "{from}");
        let bad = good.replacen(from, to, 1);
        let line = bad.lines().position(|l| l.contains(to)).unwrap() + 1;
        let file = dir.join("bad.toml");
        std::fs::write(&file, &bad).unwrap();
        for command in ["check", "run"] {
            let output = netsim(&[command, file.to_str().unwrap()]);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{command} {to}: {}",
                text(&output)
            );
            let said = text(&output);
            let expected = format!("{}:", file.display());
            assert!(said.contains(&expected), "{said}");
            // An event's problem is reported at the event's table, a key's at its line.
            if key != "`event`" {
                assert!(
                    said.contains(&format!("{}:{line}: {key}", file.display())),
                    "{said}"
                );
            } else {
                assert!(said.contains(key) && said.contains("bobby"), "{said}");
            }
        }
    }
    let good_file = dir.join("good.toml");
    std::fs::write(&good_file, &good).unwrap();
    let output = netsim(&["check", good_file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    std::fs::remove_dir_all(&dir).unwrap();
}
