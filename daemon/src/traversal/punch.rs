//! Hole punching towards one peer, as a sans-IO machine: which candidate endpoint to probe
//! when, and which path won. Probes go to every candidate at once and again each interval
//! until one is answered or the window closes; a candidate learnt during the window (the
//! address the peer's own probes came from, or a new record's endpoints) joins at once.
//! `Node::probe` is its shell: it sends each probe as a sealed ping and feeds the answers
//! back.

use std::net::SocketAddr;
use std::time::Duration;

use tern_proto::record::MAX_ENDPOINTS;
use tokio::time::Instant;

/// How often a candidate is probed again (and how long a probe waits for its answer).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(150);

/// How one probe went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    Answered,
    /// No answer within the interval: probe again at once.
    Unanswered,
    /// Not sent (no route from here, or over the probe budget): wait an interval first, so
    /// that it cannot spin.
    NotSent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Punching,
    /// The first candidate that answered: a direct path.
    Direct(SocketAddr),
    /// The window closed with no answer.
    GaveUp,
}

#[derive(Debug)]
struct Candidate {
    at: SocketAddr,
    next_probe: Instant,
    in_flight: bool,
}

#[derive(Debug)]
pub struct Punch {
    candidates: Vec<Candidate>,
    closes: Instant,
    /// Set by `handle_timeout` once `closes` has passed: only answers in flight count now.
    closed: bool,
    won: Option<SocketAddr>,
}

impl Punch {
    /// Punching to `candidates` for `window` from `now`.
    pub fn new(now: Instant, candidates: &[SocketAddr], window: Duration) -> Self {
        let mut punch = Self {
            candidates: Vec::new(),
            closes: now + window,
            closed: false,
            won: None,
        };
        for &at in candidates {
            punch.add_candidate(now, at);
        }
        punch
    }

    /// A candidate learnt now; it is probed at once. Ignored once the window has closed,
    /// when known already, or past the number of endpoints a record may carry (plus one
    /// peer-reflexive).
    pub fn add_candidate(&mut self, now: Instant, at: SocketAddr) {
        if self.closed
            || now >= self.closes
            || self.candidates.len() > MAX_ENDPOINTS
            || self.candidates.iter().any(|c| c.at == at)
        {
            return;
        }
        self.candidates.push(Candidate {
            at,
            next_probe: now,
            in_flight: false,
        });
    }

    /// The next candidate to probe now, if any: the shell sends the probe and reports with
    /// `handle_probed`.
    pub fn poll_probe(&mut self, now: Instant) -> Option<SocketAddr> {
        if self.won.is_some() || self.closed || now >= self.closes {
            return None;
        }
        let due = self
            .candidates
            .iter_mut()
            .find(|c| !c.in_flight && c.next_probe <= now)?;
        due.in_flight = true;
        Some(due.at)
    }

    pub fn handle_probed(&mut self, now: Instant, at: SocketAddr, probed: Probed) {
        let Some(candidate) = self.candidates.iter_mut().find(|c| c.at == at) else {
            return;
        };
        candidate.in_flight = false;
        match probed {
            Probed::Answered => {
                self.won.get_or_insert(at);
            }
            Probed::Unanswered => candidate.next_probe = now,
            Probed::NotSent => candidate.next_probe = now + PROBE_INTERVAL,
        }
    }

    /// Closes the window once its time has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.closes {
            self.closed = true;
        }
    }

    /// Whether new candidates and probes are still taken.
    pub fn is_open(&self) -> bool {
        !self.closed && self.won.is_none()
    }

    /// When a probe is next due or the window closes, whichever is first; None once decided
    /// or closed (then only the answers of probes in flight are awaited).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.is_open() {
            return None;
        }
        let next_probe = self
            .candidates
            .iter()
            .filter(|c| !c.in_flight)
            .map(|c| c.next_probe);
        next_probe.chain([self.closes]).min()
    }

    /// Probes sent after the window closed may still be answered: it is given up only when
    /// none is in flight (or at once, with no candidate at all).
    pub fn outcome(&self) -> Outcome {
        let over = self.closed || self.candidates.is_empty();
        match self.won {
            Some(at) => Outcome::Direct(at),
            None if over && !self.candidates.iter().any(|c| c.in_flight) => Outcome::GaveUp,
            None => Outcome::Punching,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    const WINDOW: Duration = Duration::from_secs(2);

    #[test]
    fn every_candidate_is_probed_at_once_and_the_first_answer_wins() {
        let t0 = Instant::now();
        let mut punch = Punch::new(t0, &[at(1), at(2), at(2), at(3)], WINDOW);
        let sent: Vec<_> = std::iter::from_fn(|| punch.poll_probe(t0)).collect();
        assert_eq!(sent, [at(1), at(2), at(3)], "each once, duplicates dropped");
        assert_eq!(punch.outcome(), Outcome::Punching);
        let t1 = t0 + Duration::from_millis(40);
        punch.handle_probed(t1, at(2), Probed::Answered);
        punch.handle_probed(t1, at(3), Probed::Answered);
        assert_eq!(punch.outcome(), Outcome::Direct(at(2)));
        assert_eq!(punch.poll_probe(t1), None, "decided: no more probes");
        assert_eq!(punch.poll_timeout(), None);
    }

    #[test]
    fn unanswered_candidates_are_probed_again_and_unsendable_ones_wait_an_interval() {
        let t0 = Instant::now();
        let mut punch = Punch::new(t0, &[at(1), at(2)], WINDOW);
        assert_eq!(punch.poll_probe(t0), Some(at(1)));
        assert_eq!(punch.poll_probe(t0), Some(at(2)));
        assert_eq!(punch.poll_timeout(), Some(t0 + WINDOW), "both in flight");
        let t1 = t0 + PROBE_INTERVAL;
        punch.handle_probed(t1, at(1), Probed::Unanswered);
        punch.handle_probed(t0, at(2), Probed::NotSent);
        assert_eq!(punch.poll_timeout(), Some(t1));
        assert_eq!(punch.poll_probe(t1), Some(at(1)));
        assert_eq!(
            punch.poll_probe(t1),
            Some(at(2)),
            "its interval is over too"
        );
    }

    #[test]
    fn a_candidate_learnt_while_punching_is_probed_at_once_but_not_after_the_window() {
        let t0 = Instant::now();
        let mut punch = Punch::new(t0, &[at(1)], WINDOW);
        assert_eq!(punch.poll_probe(t0), Some(at(1)));
        let t1 = t0 + Duration::from_millis(300);
        punch.add_candidate(t1, at(9));
        assert_eq!(punch.poll_probe(t1), Some(at(9)));
        punch.handle_timeout(t0 + WINDOW);
        assert!(!punch.is_open());
        punch.add_candidate(t0 + WINDOW, at(10));
        assert_eq!(punch.poll_probe(t0 + WINDOW), None);
    }

    #[test]
    fn the_window_closes_only_once_no_probe_is_in_flight_and_a_late_answer_still_wins() {
        let t0 = Instant::now();
        let mut punch = Punch::new(t0, &[at(1), at(2)], WINDOW);
        punch.poll_probe(t0);
        punch.poll_probe(t0);
        let closed = t0 + WINDOW;
        punch.handle_timeout(closed);
        assert_eq!(
            punch.poll_timeout(),
            None,
            "closed: only answers are awaited"
        );
        punch.handle_probed(closed, at(1), Probed::Unanswered);
        assert_eq!(punch.outcome(), Outcome::Punching, "a probe in flight");
        assert_eq!(punch.poll_probe(closed), None, "no probes after the window");
        punch.handle_probed(closed, at(2), Probed::Answered);
        assert_eq!(punch.outcome(), Outcome::Direct(at(2)));
        let mut silent = Punch::new(t0, &[at(1)], WINDOW);
        silent.poll_probe(t0);
        silent.handle_timeout(closed);
        silent.handle_probed(closed, at(1), Probed::Unanswered);
        assert_eq!(silent.outcome(), Outcome::GaveUp);
    }

    #[test]
    fn no_candidates_gives_up_at_once() {
        let t0 = Instant::now();
        assert_eq!(Punch::new(t0, &[], WINDOW).outcome(), Outcome::GaveUp);
    }
}
