//! Checks the codecs against `vectors/*.json`. `TERN_WRITE_VECTORS=1 cargo test -p tern-proto
//! --test vectors` rewrites the files from this implementation (review the diff: a change to a
//! vector is a change to the wire format).

use serde_json::{Value, json};
use std::path::PathBuf;
use tern_proto::identity::{derive_address, work_hash};
use tern_proto::{Address, IdentityError, PublicIdentity, SecretIdentity};

fn vector_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("vectors")
        .join(name)
}

/// Compares `generated` with the stored file, or rewrites the file when asked to.
fn check_or_write(name: &str, generated: Value) {
    let path = vector_file(name);
    if std::env::var_os("TERN_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
        return;
    }
    let stored: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        stored,
        generated,
        "{} no longer matches the codec",
        path.display()
    );
}

fn seeds() -> Vec<[u8; 32]> {
    let ramp: [u8; 32] = std::array::from_fn(|i| i as u8);
    vec![[0u8; 32], [0x42; 32], ramp]
}

#[test]
fn address_derivation_vectors() {
    let identities: Vec<Value> = seeds()
        .into_iter()
        .map(|seed| {
            let id = SecretIdentity::from_seed(seed);
            let key = id.public().key_bytes();
            let nonce = id.public().nonce();
            // The stored vector is checked with the public API alone, as a second implementation would.
            assert_eq!(
                PublicIdentity::verify(key, nonce).unwrap().address(),
                id.address()
            );
            json!({
                "ed25519_seed": hex::encode(seed),
                "public_key": hex::encode(key),
                "work_nonce": nonce,
                "work_nonce_le": hex::encode(nonce.to_le_bytes()),
                "work_hash": hex::encode(work_hash(&key, nonce)),
                "address": id.address().to_string(),
            })
        })
        .collect();
    // A nonce that does not meet the work condition, with the address it would have derived.
    let id = SecretIdentity::from_seed(seeds()[0]);
    let key = id.public().key_bytes();
    let weak_nonce = 0;
    assert!(matches!(
        PublicIdentity::verify(key, weak_nonce),
        Err(IdentityError::InsufficientWork { .. })
    ));
    let refused = json!({
        "public_key": hex::encode(key),
        "work_nonce": weak_nonce,
        "work_hash": hex::encode(work_hash(&key, weak_nonce)),
        "address_if_accepted": derive_address(&key, weak_nonce).to_string(),
        "verdict": "refused: insufficient work",
    });
    check_or_write(
        "address.json",
        json!({ "identities": identities, "refused": [refused] }),
    );
}

#[test]
fn address_text_vectors() {
    let stored: Value =
        serde_json::from_slice(&std::fs::read(vector_file("address_text.json")).unwrap()).unwrap();
    for case in stored["valid"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let addr: Address = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            hex::encode(addr.to_bytes()),
            case["bytes"].as_str().unwrap()
        );
        assert_eq!(addr.to_string(), case["canonical"].as_str().unwrap());
    }
    for case in stored["invalid"].as_array().unwrap() {
        let text = case.as_str().unwrap();
        assert!(
            text.parse::<Address>().is_err(),
            "{text:?} should be refused"
        );
    }
}
