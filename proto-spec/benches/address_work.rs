//! Prints the cost of an identity: nonce search (median over 20 fresh keys) and verification.
//! `cargo bench -p tern-proto --bench address_work`

use std::time::{Duration, Instant};
use tern_proto::identity::{WORK_BITS, search_nonce};
use tern_proto::{PublicIdentity, SecretIdentity};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let keys: Vec<[u8; 32]> = (0..20)
        .map(|_| {
            SecretIdentity::generate()
                .expect("OS random source")
                .public()
                .key_bytes()
        })
        .collect();
    let mut searches: Vec<Duration> = keys
        .iter()
        .map(|key| {
            let start = Instant::now();
            std::hint::black_box(search_nonce(key));
            start.elapsed()
        })
        .collect();
    searches.sort();
    println!(
        "nonce search ({WORK_BITS} bits), 20 keys: median {:.1?}, min {:.1?}, max {:.1?}",
        percentile(&searches, 0.5),
        searches[0],
        searches[searches.len() - 1]
    );

    let ids: Vec<(_, _)> = keys.iter().map(|k| (*k, search_nonce(k))).collect();
    let rounds = 20_000;
    let start = Instant::now();
    for i in 0..rounds {
        let (key, nonce) = ids[i % ids.len()];
        std::hint::black_box(PublicIdentity::verify(key, nonce).expect("valid"));
    }
    let per = start.elapsed() / rounds as u32;
    println!("verification (2 hashes + point decompression): {per:.2?} per identity");
}
