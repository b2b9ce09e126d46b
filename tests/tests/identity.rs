//! `ternd id` / `ternctl id` against real homes.

use serde_json::Value;
use std::process::Command;
use tern_tests::binary;

fn run_json(bin: &str, args: &[&str]) -> (bool, Value) {
    let out = Command::new(binary(bin)).args(args).output().unwrap();
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{bin} {args:?}: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.success(), doc)
}

#[test]
fn the_address_is_created_once_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_str().unwrap();
    let (ok, first) = run_json("ternd", &["id", "--home", home, "--json"]);
    assert!(ok);
    let (ok, second) = run_json("ternd", &["id", "--home", home, "--json"]);
    assert!(ok);
    assert_eq!(first["address"], second["address"]);
    let address: tern_proto::Address = first["address"].as_str().unwrap().parse().unwrap();

    let (ok, ctl) = run_json("ternctl", &["--home", home, "--json", "id"]);
    assert!(ok);
    assert_eq!(ctl["ok"], true);
    assert_eq!(ctl["data"]["address"], address.to_string());
    assert_eq!(ctl["data"]["public_key"], first["public_key"]);
}

#[test]
fn a_damaged_key_file_is_refused_by_name_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_str().unwrap();
    assert!(
        Command::new(binary("ternd"))
            .args(["id", "--home", home])
            .status()
            .unwrap()
            .success()
    );
    let key = dir.path().join("identity.key");
    std::fs::write(&key, b"{\"format\": \"tern-identity-v1\", \"secr").unwrap();

    let out = Command::new(binary("ternd"))
        .args(["id", "--home", home])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(key.to_str().unwrap()), "{stderr}");
    assert_eq!(
        std::fs::read(&key).unwrap(),
        b"{\"format\": \"tern-identity-v1\", \"secr"
    );

    let (ok, doc) = run_json("ternctl", &["--home", home, "--json", "id"]);
    assert!(!ok);
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["error"]["code"], "identity_unreadable");
}

#[test]
fn ternctl_id_without_an_identity_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("fresh");
    let (ok, doc) = run_json(
        "ternctl",
        &["--home", home.to_str().unwrap(), "--json", "id"],
    );
    assert!(!ok);
    assert_eq!(doc["error"]["code"], "no_identity");
    assert!(doc["error"]["hint"].as_str().unwrap().contains("ternd"));
    assert!(!home.join("identity.key").exists());
}
