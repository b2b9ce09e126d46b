//! The path monitor: without I/O or a clock of its own, decides when the dialling side checks
//! the direct path, when it falls back to the relay, and when it punches again (backing off).
//! Its shell is [`super::driver::run`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::Path;

/// How often a new or doubted direct path is checked with a sealed ping, and how long each
/// check waits.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often a path that answered [`STEADY_AFTER`] checks in a row is checked: a node with
/// thousands of connections would otherwise spend its time pinging them. One miss brings the
/// path back to [`CHECK_INTERVAL`], so a dead path is left within this plus
/// [`MAX_MISSES`] checks.
pub const STEADY_INTERVAL: Duration = Duration::from_secs(5);
pub const STEADY_AFTER: u32 = 5;
/// Checks missed in a row before the direct path counts as gone.
pub const MAX_MISSES: u32 = 3;
/// The first retry of the direct path after falling back to the relay, doubling up to
/// [`MAX_RETRY`] while punching keeps failing.
pub const FIRST_RETRY: Duration = Duration::from_secs(3);
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// What the shell should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ping this direct endpoint; report with [`PathMonitor::on_check`].
    Check(SocketAddr),
    /// Punch (introduction + probes); report with [`PathMonitor::on_punch`].
    Punch,
    /// Nothing until this instant.
    WaitUntil(Instant),
}

#[derive(Debug)]
pub struct PathMonitor {
    path: Path,
    misses: u32,
    /// Checks answered in a row.
    answered: u32,
    next_at: Instant,
    retry: Duration,
}

impl PathMonitor {
    /// A monitor for a connection that runs on `path` now: on the relay the first punch is
    /// due at once, on a direct path the first check after [`CHECK_INTERVAL`].
    pub fn new(now: Instant, path: Path) -> Self {
        Self {
            path,
            misses: 0,
            answered: 0,
            next_at: match path {
                Path::Direct(_) => now + CHECK_INTERVAL,
                Path::Relay => now,
            },
            retry: FIRST_RETRY,
        }
    }

    pub fn path(&self) -> Path {
        self.path
    }

    pub fn poll(&self, now: Instant) -> Action {
        if now < self.next_at {
            return Action::WaitUntil(self.next_at);
        }
        match self.path {
            Path::Direct(endpoint) => Action::Check(endpoint),
            Path::Relay => Action::Punch,
        }
    }

    /// A check of the direct path ended. Returns the new path when it changes.
    pub fn on_check(&mut self, answered: bool, now: Instant) -> Option<Path> {
        if answered {
            self.misses = 0;
            self.answered = self.answered.saturating_add(1);
            self.next_at = now
                + match self.answered >= STEADY_AFTER {
                    true => STEADY_INTERVAL,
                    false => CHECK_INTERVAL,
                };
            return None;
        }
        self.next_at = now + CHECK_INTERVAL;
        self.answered = 0;
        self.misses += 1;
        if self.misses < MAX_MISSES {
            return None;
        }
        self.misses = 0;
        self.path = Path::Relay;
        self.retry = FIRST_RETRY;
        self.next_at = now + self.retry;
        Some(Path::Relay)
    }

    /// A punch ended, answered at `endpoint` or not. Returns the new path when it changes.
    pub fn on_punch(&mut self, answered: Option<SocketAddr>, now: Instant) -> Option<Path> {
        match answered {
            Some(endpoint) => {
                self.path = Path::Direct(endpoint);
                self.misses = 0;
                self.answered = 0;
                self.next_at = now + CHECK_INTERVAL;
                Some(self.path)
            }
            None => {
                self.next_at = now + self.retry;
                self.retry = (self.retry * 2).min(MAX_RETRY);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> SocketAddr {
        "203.0.113.9:7440".parse().unwrap()
    }

    #[test]
    fn a_relayed_connection_punches_at_once_and_backs_off_while_punching_fails() {
        let t0 = Instant::now();
        let mut m = PathMonitor::new(t0, Path::Relay);
        assert_eq!(m.poll(t0), Action::Punch);
        assert_eq!(m.on_punch(None, t0), None);
        assert_eq!(m.poll(t0), Action::WaitUntil(t0 + FIRST_RETRY));
        let t1 = t0 + FIRST_RETRY;
        assert_eq!(m.poll(t1), Action::Punch);
        m.on_punch(None, t1);
        assert_eq!(m.poll(t1), Action::WaitUntil(t1 + FIRST_RETRY * 2));
        for _ in 0..10 {
            m.on_punch(None, t1);
        }
        assert_eq!(m.poll(t1), Action::WaitUntil(t1 + MAX_RETRY));
        assert_eq!(
            m.on_punch(Some(endpoint()), t1),
            Some(Path::Direct(endpoint()))
        );
        assert_eq!(m.poll(t1 + CHECK_INTERVAL), Action::Check(endpoint()));
    }

    #[test]
    fn a_direct_path_falls_back_after_missed_checks_and_is_retried_soon() {
        let t0 = Instant::now();
        let mut m = PathMonitor::new(t0, Path::Direct(endpoint()));
        assert_eq!(m.poll(t0), Action::WaitUntil(t0 + CHECK_INTERVAL));
        assert_eq!(m.poll(t0 + CHECK_INTERVAL), Action::Check(endpoint()));
        assert_eq!(m.on_check(false, t0), None);
        assert_eq!(m.on_check(true, t0), None, "one answer resets the count");
        for _ in 1..MAX_MISSES {
            assert_eq!(m.on_check(false, t0), None);
        }
        assert_eq!(m.on_check(false, t0), Some(Path::Relay));
        assert_eq!(m.path(), Path::Relay);
        assert_eq!(m.poll(t0), Action::WaitUntil(t0 + FIRST_RETRY));
        assert_eq!(m.poll(t0 + FIRST_RETRY), Action::Punch);
    }

    #[test]
    fn a_path_that_keeps_answering_is_checked_less_often_until_one_check_is_missed() {
        let t0 = Instant::now();
        let mut m = PathMonitor::new(t0, Path::Direct(endpoint()));
        for _ in 1..STEADY_AFTER {
            m.on_check(true, t0);
            assert_eq!(m.poll(t0), Action::WaitUntil(t0 + CHECK_INTERVAL));
        }
        m.on_check(true, t0);
        assert_eq!(m.poll(t0), Action::WaitUntil(t0 + STEADY_INTERVAL));
        assert_eq!(m.on_check(false, t0), None);
        assert_eq!(m.poll(t0), Action::WaitUntil(t0 + CHECK_INTERVAL));
        m.on_check(true, t0);
        assert_eq!(
            m.poll(t0),
            Action::WaitUntil(t0 + CHECK_INTERVAL),
            "doubted again"
        );
    }
}
