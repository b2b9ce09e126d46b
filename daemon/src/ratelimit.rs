//! Token buckets per peer (or per source IP), no clock of their own: time enters as `now`.
//! Used to bound what one peer can make a rendezvous, a relay, or a node do.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

use tern_proto::Address;

/// Peers tracked at once; past this, buckets that are full again are forgotten.
const MAX_TRACKED: usize = 16_384;

#[derive(Debug)]
pub struct RateLimiter<K = Address> {
    per_second: f64,
    burst: f64,
    buckets: HashMap<K, (f64, Instant)>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token from `peer`'s bucket if it has one.
    pub fn allow(&mut self, now: Instant, peer: K) -> bool {
        if self.buckets.len() >= MAX_TRACKED {
            let (rate, burst) = (self.per_second, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = self.buckets.entry(peer).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
