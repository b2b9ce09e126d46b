//! Registration with one rendezvous server, as a sans-IO machine: the policy of when to
//! reach the server, learn the reflexive address, register (with the name, or without it
//! when another key holds it there; once more when the server saw an address the record did
//! not carry), refresh, and back off after failures or a lost connection. The daemon's
//! `keep_registered` is its shell: it does each [`Step`] and feeds the outcome back.

use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;

/// How often a registered node registers again (records live five times as long).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// The first wait after a failure; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the shell does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Connect to the server (unless connected): `handle_reached`.
    Reach,
    /// Ask the server's UDP port for this node's reflexive address, so that the record
    /// carries it: `handle_stunned`, whatever the answer.
    Stun,
    /// Send this node's signed record: `handle_registered`.
    Register { with_name: bool },
}

/// How a registration went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// Stored; `observed_known` tells whether the record already carried the address the
    /// server saw this node at.
    Stored {
        observed_known: bool,
    },
    /// Another key holds the name at this server (the reason, for status).
    NameTaken(String),
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The next step, for `poll_step`.
    Next(Step),
    /// The shell is doing a step; its outcome comes as a `handle_*`.
    Doing(Step),
    /// Nothing until `at` (the refresh, or the end of a back-off), then a new round.
    Waiting { at: Instant },
}

#[derive(Debug)]
pub struct Registration {
    phase: Phase,
    backoff: Backoff,
    registered: bool,
    /// Whether this round registered again for a newly observed address already.
    republished: bool,
    last_error: Option<String>,
    name_refused: Option<String>,
}

impl Registration {
    /// A machine that starts its first round at once; `jitter_seed` spreads the back-offs of
    /// many nodes.
    pub fn new(jitter_seed: u64) -> Self {
        Self {
            phase: Phase::Next(Step::Reach),
            backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF, jitter_seed),
            registered: false,
            republished: false,
            last_error: None,
            name_refused: None,
        }
    }

    /// The step to do now, if any.
    pub fn poll_step(&mut self) -> Option<Step> {
        match self.phase {
            Phase::Next(step) => {
                self.phase = Phase::Doing(step);
                Some(step)
            }
            _ => None,
        }
    }

    /// When `handle_timeout` is due, if nothing else happens first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { at } => Some(at),
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Phase::Waiting { at } = self.phase
            && now >= at
        {
            if self.registered {
                // A refresh: the connection held for a whole interval.
                self.backoff.reset();
            }
            self.start_round();
        }
    }

    pub fn handle_reached(&mut self, now: Instant, reached: Result<(), String>) {
        if self.phase != Phase::Doing(Step::Reach) {
            return;
        }
        match reached {
            Ok(()) => self.phase = Phase::Next(Step::Stun),
            Err(e) => self.fail(now, e),
        }
    }

    pub fn handle_stunned(&mut self) {
        if self.phase == Phase::Doing(Step::Stun) {
            self.phase = Phase::Next(Step::Register { with_name: true });
        }
    }

    pub fn handle_registered(&mut self, now: Instant, outcome: Registered) {
        let Phase::Doing(Step::Register { with_name }) = self.phase else {
            return;
        };
        match outcome {
            Registered::Stored { observed_known } => {
                if with_name {
                    self.name_refused = None;
                }
                if !observed_known && !self.republished {
                    // Publish the address the server saw too (the NAT's, seen from outside).
                    self.republished = true;
                    self.phase = Phase::Next(Step::Register { with_name: true });
                    return;
                }
                self.registered = true;
                self.last_error = None;
                self.phase = Phase::Waiting {
                    at: now + REFRESH_INTERVAL,
                };
            }
            // Stay reachable by address.
            Registered::NameTaken(reason) if with_name => {
                self.name_refused = Some(reason);
                self.phase = Phase::Next(Step::Register { with_name: false });
            }
            Registered::NameTaken(reason) | Registered::Failed(reason) => self.fail(now, reason),
        }
    }

    /// The connection to the server went (it restarted, or the path broke): register again
    /// soon, after a jittered back-off so that a server that keeps dropping its clients is
    /// not hammered.
    pub fn handle_connection_lost(&mut self, now: Instant) {
        if self.registered && matches!(self.phase, Phase::Waiting { .. }) {
            self.phase = Phase::Waiting {
                at: now + self.backoff.failed(),
            };
        }
    }

    /// Registered, and not failed since.
    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// Why the last round failed, while failures go on.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Why the server did not take this node's name, if it did not.
    pub fn name_refused(&self) -> Option<&str> {
        self.name_refused.as_deref()
    }

    fn start_round(&mut self) {
        self.republished = false;
        self.phase = Phase::Next(Step::Reach);
    }

    fn fail(&mut self, now: Instant, error: String) {
        self.registered = false;
        self.last_error = Some(error);
        self.phase = Phase::Waiting {
            at: now + self.backoff.failed(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: Registered = Registered::Stored {
        observed_known: true,
    };

    /// Runs one round: Reach, Stun, then the registrations `outcomes` answer.
    fn round(m: &mut Registration, now: Instant, outcomes: &[Registered]) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut outcomes = outcomes.iter().cloned();
        while let Some(step) = m.poll_step() {
            steps.push(step);
            match step {
                Step::Reach => m.handle_reached(now, Ok(())),
                Step::Stun => m.handle_stunned(),
                Step::Register { .. } => {
                    m.handle_registered(now, outcomes.next().expect("an outcome per registration"))
                }
            }
        }
        steps
    }

    #[test]
    fn stun_comes_first_then_the_named_record_then_a_refresh_every_interval() {
        let t0 = Instant::now();
        let mut m = Registration::new(1);
        let steps = round(&mut m, t0, &[STORED]);
        let named = Step::Register { with_name: true };
        assert_eq!(steps, [Step::Reach, Step::Stun, named]);
        assert!(m.is_registered());
        assert_eq!(m.poll_timeout(), Some(t0 + REFRESH_INTERVAL));
        m.handle_timeout(t0 + REFRESH_INTERVAL / 2);
        assert_eq!(m.poll_step(), None, "not due yet");
        m.handle_timeout(t0 + REFRESH_INTERVAL);
        assert_eq!(m.poll_step(), Some(Step::Reach));
    }

    #[test]
    fn a_newly_observed_address_is_published_once_more_and_a_taken_name_is_dropped() {
        let t0 = Instant::now();
        let mut m = Registration::new(1);
        let unknown = Registered::Stored {
            observed_known: false,
        };
        let taken = Registered::NameTaken("held by another key".into());
        let steps = round(&mut m, t0, &[unknown.clone(), taken, unknown]);
        let named = Step::Register { with_name: true };
        let bare = Step::Register { with_name: false };
        assert_eq!(steps, [Step::Reach, Step::Stun, named, named, bare]);
        assert!(m.is_registered());
        assert_eq!(m.name_refused(), Some("held by another key"));
        // The next round asks for the name again; given, the refusal is forgotten.
        m.handle_timeout(t0 + REFRESH_INTERVAL);
        round(&mut m, t0 + REFRESH_INTERVAL, &[STORED]);
        assert_eq!(m.name_refused(), None);
    }

    #[test]
    fn failures_back_off_doubling_to_the_cap_and_a_success_resets_it() {
        let mut now = Instant::now();
        let mut m = Registration::new(7);
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert_eq!(m.poll_step(), Some(Step::Reach));
            m.handle_reached(now, Err("no answer".into()));
            assert!(!m.is_registered());
            assert_eq!(m.last_error(), Some("no answer"));
            let at = m.poll_timeout().expect("a retry");
            waits.push(at - now);
            now = at;
            m.handle_timeout(now);
        }
        for (wait, step) in waits.iter().zip([1, 2, 4, 8, 16, 32, 60, 60]) {
            let step = Duration::from_secs(step);
            assert!(
                *wait >= step.mul_f64(0.75) && *wait <= step.mul_f64(1.25),
                "{waits:?}"
            );
        }
        round(&mut m, now, &[STORED]);
        assert_eq!(m.last_error(), None);
        // A refresh that held resets the back-off: the next loss waits about a second.
        now += REFRESH_INTERVAL;
        m.handle_timeout(now);
        round(&mut m, now, &[STORED]);
        m.handle_connection_lost(now);
        let wait = m.poll_timeout().expect("soon") - now;
        assert!(wait <= Duration::from_millis(1250), "{wait:?}");
    }

    #[test]
    fn a_lost_connection_registers_again_soon_but_not_at_once() {
        let t0 = Instant::now();
        let mut m = Registration::new(3);
        round(&mut m, t0, &[STORED]);
        m.handle_connection_lost(t0);
        let at = m.poll_timeout().expect("a new round");
        assert!(at > t0 && at < t0 + Duration::from_secs(2), "{:?}", at - t0);
        assert_eq!(m.poll_step(), None);
        m.handle_timeout(at);
        assert_eq!(m.poll_step(), Some(Step::Reach));
    }

    #[test]
    fn outcomes_for_steps_not_asked_for_are_ignored() {
        let t0 = Instant::now();
        let mut m = Registration::new(1);
        m.handle_registered(t0, STORED);
        m.handle_stunned();
        assert!(!m.is_registered());
        assert_eq!(m.poll_step(), Some(Step::Reach));
    }
}
