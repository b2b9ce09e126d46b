//! Token buckets per peer (or per source IP), no clock of their own: time enters as `now`.
//! Used to bound what one peer can make a rendezvous, a relay, or a node do.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use tern_proto::Address;

/// Peers tracked at once. Past this, buckets that are full again are forgotten (a sweep at
/// most once a second, so a full table never costs a scan per call), and peers that still
/// find no room share one bucket: many identities cannot buy many bursts.
const MAX_TRACKED: usize = 16_384;
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

type Bucket = (f64, Instant);

#[derive(Debug)]
pub struct RateLimiter<K = Address> {
    per_second: f64,
    burst: f64,
    buckets: HashMap<K, Bucket>,
    /// For peers that found the table full.
    overflow: Option<Bucket>,
    swept: Option<Instant>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst,
            buckets: HashMap::new(),
            overflow: None,
            swept: None,
        }
    }

    /// Takes one token from `peer`'s bucket if it has one.
    pub fn allow(&mut self, now: Instant, peer: K) -> bool {
        let (rate, burst) = (self.per_second, self.burst);
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&peer) {
            if self
                .swept
                .is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_INTERVAL)
            {
                self.swept = Some(now);
                self.buckets
                    .retain(|_, (tokens, at)| refill(*tokens, *at, now, rate) < burst);
            }
            if self.buckets.len() >= MAX_TRACKED {
                let shared = self.overflow.get_or_insert((burst, now));
                return take(shared, now, rate, burst);
            }
        }
        let bucket = self.buckets.entry(peer).or_insert((burst, now));
        take(bucket, now, rate, burst)
    }
}

fn refill(tokens: f64, at: Instant, now: Instant, rate: f64) -> f64 {
    tokens + now.saturating_duration_since(at).as_secs_f64() * rate
}

fn take(bucket: &mut Bucket, now: Instant, rate: f64, burst: f64) -> bool {
    let (tokens, at) = bucket;
    *tokens = refill(*tokens, *at, now, rate).min(burst);
    *at = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate_and_peers_are_independent() {
        let (a, b) = (Address::from_bytes([1; 6]), Address::from_bytes([2; 6]));
        let mut limiter = RateLimiter::<Address>::new(2.0, 3.0);
        let t0 = Instant::now();
        assert_eq!((0..5).filter(|_| limiter.allow(t0, a)).count(), 3);
        assert!(limiter.allow(t0, b), "another peer has its own bucket");
        assert!(!limiter.allow(t0 + Duration::from_millis(400), a));
        assert!(limiter.allow(t0 + Duration::from_millis(500), a));
        assert_eq!(
            (0..10)
                .filter(|_| limiter.allow(t0 + Duration::from_secs(60), a))
                .count(),
            3
        );
    }

    #[test]
    fn a_full_table_sends_newcomers_to_one_shared_bucket() {
        let mut limiter = RateLimiter::<u32>::new(1.0, 2.0);
        let t0 = Instant::now();
        for key in 0..MAX_TRACKED as u32 {
            assert!(limiter.allow(t0, key));
        }
        // Every tracked bucket is drained a little: none can be forgotten yet.
        let newcomers = (0..10u32)
            .filter(|n| limiter.allow(t0, MAX_TRACKED as u32 + n))
            .count();
        assert_eq!(newcomers, 2, "ten new identities share one burst");
        assert!(limiter.allow(t0, 5), "a tracked peer keeps its own bucket");
        // Later the tracked buckets are full again, are swept, and newcomers get their own.
        let later = t0 + Duration::from_secs(10);
        assert!(limiter.allow(later, u32::MAX));
        assert!(limiter.buckets.len() < MAX_TRACKED);
    }
}
