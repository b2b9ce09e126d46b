//! Capped, jittered exponential back-off: every retry loop a peer or the OS can make fail
//! (registration, accept loops) waits this way, so that no failure turns into a busy loop or
//! many nodes retrying in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    /// splitmix64 state for the jitter, seeded by the caller (from its env's randomness).
    jitter: u64,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration, seed: u64) -> Self {
        Self {
            first,
            max,
            next: first,
            jitter: seed,
        }
    }

    /// How long to wait after one more failure in a row (75–125 % of the current step); the
    /// step doubles up to the cap.
    pub fn failed(&mut self) -> Duration {
        let wait = self.jittered(self.next);
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// 75–125 % of `base`.
    fn jittered(&mut self, base: Duration) -> Duration {
        self.jitter = self.jitter.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.jitter;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        base.mul_f64(0.75 + (z >> 11) as f64 / (1u64 << 53) as f64 / 2.0)
    }

    /// A success: the next failure waits the first step again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Whether the last call was a success (no failure since): for logging once per streak.
    pub fn is_fresh(&self) -> bool {
        self.next == self.first
    }
}

/// The next accepted connection from `accept`. An error (the process is out of file
/// descriptors, say) neither ends the caller's accept loop nor spins it: it is logged once
/// per streak and waited out, 10 ms at first, at most a second.
pub async fn accept_patiently<T, Fut>(what: &'static str, accept: impl Fn() -> Fut) -> T
where
    Fut: Future<Output = std::io::Result<T>>,
{
    // Accept errors are this host's own (out of descriptors): no peers to fall out of step with.
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1), 0);
    loop {
        match accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                if backoff.is_fresh() {
                    tracing::warn!(error = %e, "{what}: cannot accept a connection; backing off");
                }
                tokio::time::sleep(backoff.failed()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_with_jitter_and_reset_on_success() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8), 7);
        assert!(b.is_fresh());
        let waits: Vec<Duration> = (0..6).map(|_| b.failed()).collect();
        assert!(!b.is_fresh());
        for (wait, step) in waits.iter().zip([1, 2, 4, 8, 8, 8]) {
            let step = Duration::from_secs(step);
            assert!(
                *wait >= step.mul_f64(0.75) && *wait <= step.mul_f64(1.25),
                "{wait:?}"
            );
        }
        b.reset();
        assert!(b.failed() <= Duration::from_millis(1250));
    }

    #[tokio::test]
    async fn accept_errors_are_waited_out_not_the_end_of_the_loop() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let accepted = accept_patiently("test", || {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                match n {
                    0..3 => Err(std::io::Error::from_raw_os_error(libc::EMFILE)),
                    n => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(accepted, 3);
    }
}
