//! Identities for large runs (benchmarks with hundreds or thousands of nodes): proof of work
//! costs ~0.1–0.2 s per identity, so they are made once from a fixed seed and cached in
//! `target/`.

use std::path::PathBuf;
use std::time::Instant;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use tern_proto::SecretIdentity;

/// `count` identities, the same on every run; made on every core the first time.
pub fn cached_identities(count: usize) -> Vec<SecretIdentity> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(format!("tern-netsim-identities-{count}.bin"));
    if let Ok(bytes) = std::fs::read(&path) {
        let cached: Vec<SecretIdentity> = bytes
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .filter_map(|line| SecretIdentity::from_key_file(&hex::decode(line).ok()?).ok())
            .collect();
        if cached.len() == count {
            return cached;
        }
    }
    let started = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let seeds: Vec<[u8; 32]> = (0..count)
        .map(|_| {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            seed
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let made: Vec<SecretIdentity> = std::thread::scope(|scope| {
        let workers: Vec<_> = seeds
            .chunks(count.div_ceil(cores).max(1))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|seed| SecretIdentity::from_seed(*seed))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("identity worker"))
            .collect()
    });
    let text: String = made
        .iter()
        .map(|i| format!("{}\n", hex::encode(i.to_key_file())))
        .collect();
    let _ = std::fs::write(&path, text);
    eprintln!(
        "made {count} identities in {:.1} s (cached in {})",
        started.elapsed().as_secs_f64(),
        path.display()
    );
    made
}
