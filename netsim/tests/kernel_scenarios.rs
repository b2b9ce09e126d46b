//! Shipped scenarios in the kernel lab (`tern-netsim run --kernel`: real ternd processes in
//! network namespaces behind nftables NAT; needs root), and the NAT matrix compared pair by
//! pair with the simulator's. A binary of its own, so that it runs in real time while no
//! simulation takes the machine's cores.

mod common;

use common::{netsim, scenarios, text};

/// Each pair's path, from a NAT matrix report: "a-x -> b-y" → "direct" or "relay".
fn matrix_paths(report: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| {
            let check = c["check"].as_str()?.strip_prefix("path ")?;
            let pair = check.split(" is ").next()?.to_string();
            let found = c["detail"].as_str()?.strip_prefix("the path was ")?;
            Some((pair, found.to_string()))
        })
        .collect()
}

fn run_json(args: &[&str], name: &str) -> serde_json::Value {
    let json = std::env::temp_dir().join(format!("tern-netsim-{}-{name}.json", std::process::id()));
    let mut all = args.to_vec();
    all.extend(["--json", json.to_str().unwrap()]);
    let output = netsim(&all);
    let report = std::fs::read_to_string(&json);
    let _ = std::fs::remove_file(&json);
    let report = report.unwrap_or_else(|_| panic!("no report from {args:?}:\n{}", text(&output)));
    serde_json::from_str(&report).unwrap()
}

/// The same NAT matrix file in the simulator and in the kernel lab (real ternd processes in
/// network namespaces behind nftables NAT): every pair ends on the same path in both.
#[test]
fn the_nat_matrix_ends_the_same_in_the_simulator_and_the_kernel_lab() {
    let file = scenarios().join("nat-matrix.toml");
    let file = file.to_str().unwrap();
    let simulated = matrix_paths(&run_json(&["run", file], "matrix-sim"));
    let kernel = run_json(&["run", file, "--kernel"], "matrix-kernel");
    assert_eq!(kernel["mode"], "kernel");
    let kernel = matrix_paths(&kernel);
    assert_eq!(simulated.len(), 36, "{simulated:?}");
    let differ: Vec<String> = simulated
        .iter()
        .filter(|(pair, path)| kernel.get(*pair) != Some(path))
        .map(|(pair, path)| format!("{pair}: simulator {path}, kernel {:?}", kernel.get(pair)))
        .collect();
    assert!(
        differ.is_empty(),
        "the two modes differ:\n{}",
        differ.join("\n")
    );
}

#[test]
fn a_crash_and_restart_in_the_kernel_lab() {
    let file = scenarios().join("crash-restart.toml");
    let report = run_json(&["run", file.to_str().unwrap(), "--kernel"], "crash-kernel");
    assert_eq!(report["passed"], true, "{report}");
}

#[test]
fn what_the_kernel_lab_cannot_do_is_refused_before_it_starts() {
    let file = scenarios().join("nat-rebinding.toml");
    let output = netsim(&["run", file.to_str().unwrap(), "--kernel"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("not in kernel mode"),
        "{}",
        text(&output)
    );
}

/// A user's own commands inside nodes' namespaces (ternctl here, as an agent would use it),
/// their exit codes checked; one is meant to fail.
#[test]
fn exec_steps_run_the_user_s_commands_inside_nodes_and_check_their_exit_codes() {
    let file = scenarios().join("kernel-agent.toml");
    let report = run_json(&["run", file.to_str().unwrap(), "--kernel"], "agent-kernel");
    assert_eq!(report["passed"], true, "{report}");
    let in_process = netsim(&["run", file.to_str().unwrap()]);
    assert_eq!(in_process.status.code(), Some(2), "{}", text(&in_process));
    assert!(
        text(&in_process).contains("--kernel"),
        "{}",
        text(&in_process)
    );
}
