//! The connection race to a peer found through a rendezvous, as a sans-IO machine. Punching
//! starts first and gets a head start; then the relay is dialled beside it; the first path
//! up carries the connection (punching goes on behind a relayed one, in the path monitor).
//! A punched endpoint is dialled directly, abandoning a relay dial still in flight. When
//! neither works, the record's endpoints are dialled plainly, one after another (a peer with
//! no rendezvous in common starts there). `connect::Connector::connect` is its shell.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// The longest punching runs alone before the relay is dialled too.
pub const PUNCH_HEAD_START: Duration = Duration::from_millis(250);

/// What the shell starts or does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask for an introduction and punch (runs beside the rest): `handle_punched`.
    Punch,
    /// Dial through the rendezvous as relay (runs beside the rest): `handle_relayed`.
    Relay,
    /// Drop the relay dial in flight: a punched path won.
    AbandonRelay,
    /// Dial the punched endpoint: `handle_direct`.
    Direct(SocketAddr),
    /// Dial the record's endpoints one after another: `handle_endpoints`.
    Endpoints,
}

/// How the connection was made: the path monitor starts on `Direct` and `Relay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connected {
    Direct(SocketAddr),
    Relay,
    /// Dialled at an endpoint of the record, no rendezvous involved.
    Plain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Racing,
    Connected(Connected),
    /// Why no way worked, for the user.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Relay {
    NotTried,
    Dialling,
    Failed(String),
}

#[derive(Debug)]
pub struct Race {
    actions: std::collections::VecDeque<Action>,
    head_start_ends: Instant,
    punching: bool,
    relay: Relay,
    outcome: Outcome,
}

impl Race {
    /// A race from `now`; `head_start` is how long punching runs alone (two round trips to
    /// the rendezvous, at most [`PUNCH_HEAD_START`]). Without a rendezvous to relay and
    /// introduce (`via_rendezvous` false), only the endpoints are dialled.
    pub fn new(now: Instant, via_rendezvous: bool, head_start: Duration) -> Self {
        let first = match via_rendezvous {
            true => Action::Punch,
            false => Action::Endpoints,
        };
        Self {
            actions: [first].into(),
            head_start_ends: now + head_start,
            punching: via_rendezvous,
            relay: Relay::NotTried,
            outcome: Outcome::Racing,
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the head start ends, while it matters.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.punching && self.relay == Relay::NotTried && self.outcome == Outcome::Racing)
            .then_some(self.head_start_ends)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.head_start_ends && self.poll_timeout().is_some() {
            self.dial_relay();
        }
    }

    pub fn handle_punched(&mut self, answered: Option<SocketAddr>) {
        if !self.punching || self.outcome != Outcome::Racing {
            return;
        }
        self.punching = false;
        match answered {
            Some(endpoint) => {
                if self.relay == Relay::Dialling {
                    self.relay = Relay::NotTried;
                    self.actions.push_back(Action::AbandonRelay);
                }
                self.actions.push_back(Action::Direct(endpoint));
            }
            None => self.next_after_direct_failed(),
        }
    }

    pub fn handle_relayed(&mut self, relayed: Result<(), String>) {
        if self.relay != Relay::Dialling || self.outcome != Outcome::Racing {
            return;
        }
        match relayed {
            Ok(()) => self.outcome = Outcome::Connected(Connected::Relay),
            Err(e) => {
                self.relay = Relay::Failed(e);
                if !self.punching {
                    self.actions.push_back(Action::Endpoints);
                }
            }
        }
    }

    /// `connected_anyway`: the peer is connected all the same (it dialled this node meanwhile).
    pub fn handle_direct(
        &mut self,
        endpoint: SocketAddr,
        dialled: Result<(), String>,
        connected_anyway: bool,
    ) {
        if self.outcome != Outcome::Racing {
            return;
        }
        match (dialled, connected_anyway) {
            (Ok(()), _) => self.outcome = Outcome::Connected(Connected::Direct(endpoint)),
            (Err(_), true) => self.outcome = Outcome::Connected(Connected::Relay),
            (Err(_), false) => self.next_after_direct_failed(),
        }
    }

    pub fn handle_endpoints(&mut self, dialled: Result<(), String>) {
        if self.outcome != Outcome::Racing {
            return;
        }
        self.outcome = match (dialled, &self.relay) {
            (Ok(()), _) => Outcome::Connected(Connected::Plain),
            (Err(detail), Relay::Failed(e)) => {
                Outcome::Failed(format!("no punched path, through the relay: {e}; {detail}"))
            }
            (Err(detail), _) => Outcome::Failed(detail),
        };
    }

    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    fn dial_relay(&mut self) {
        self.relay = Relay::Dialling;
        self.actions.push_back(Action::Relay);
    }

    /// No direct path: the relay, unless it failed already (or is being dialled).
    fn next_after_direct_failed(&mut self) {
        match self.relay {
            Relay::NotTried => self.dial_relay(),
            Relay::Dialling => {}
            Relay::Failed(_) => self.actions.push_back(Action::Endpoints),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD_START: Duration = Duration::from_millis(40);

    fn endpoint() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 7440))
    }

    fn actions(race: &mut Race) -> Vec<Action> {
        std::iter::from_fn(|| race.poll_action()).collect()
    }

    #[test]
    fn a_punch_within_the_head_start_is_dialled_directly_and_no_relay_is_tried() {
        let t0 = Instant::now();
        let mut race = Race::new(t0, true, HEAD_START);
        assert_eq!(actions(&mut race), [Action::Punch]);
        assert_eq!(race.poll_timeout(), Some(t0 + HEAD_START));
        race.handle_punched(Some(endpoint()));
        assert_eq!(actions(&mut race), [Action::Direct(endpoint())]);
        race.handle_direct(endpoint(), Ok(()), true);
        assert_eq!(
            race.outcome(),
            &Outcome::Connected(Connected::Direct(endpoint()))
        );
    }

    #[test]
    fn after_the_head_start_the_relay_races_the_punch_and_the_first_up_wins() {
        let t0 = Instant::now();
        let mut race = Race::new(t0, true, HEAD_START);
        actions(&mut race);
        race.handle_timeout(t0 + HEAD_START / 2);
        assert_eq!(actions(&mut race), [], "the head start is not over");
        race.handle_timeout(t0 + HEAD_START);
        assert_eq!(actions(&mut race), [Action::Relay]);
        assert_eq!(race.poll_timeout(), None);
        race.handle_relayed(Ok(()));
        assert_eq!(race.outcome(), &Outcome::Connected(Connected::Relay));
        race.handle_punched(Some(endpoint()));
        assert_eq!(actions(&mut race), [], "decided: the monitor punches on");
    }

    #[test]
    fn a_punch_that_answers_while_the_relay_dials_abandons_the_relay() {
        let t0 = Instant::now();
        let mut race = Race::new(t0, true, HEAD_START);
        actions(&mut race);
        race.handle_timeout(t0 + HEAD_START);
        actions(&mut race);
        race.handle_punched(Some(endpoint()));
        assert_eq!(
            actions(&mut race),
            [Action::AbandonRelay, Action::Direct(endpoint())]
        );
        // The direct dial fails: the relay is dialled again.
        race.handle_direct(endpoint(), Err("timed out".into()), false);
        assert_eq!(actions(&mut race), [Action::Relay]);
        race.handle_relayed(Ok(()));
        assert_eq!(race.outcome(), &Outcome::Connected(Connected::Relay));
    }

    #[test]
    fn when_punch_and_relay_both_fail_the_endpoints_are_dialled_and_the_error_names_both() {
        let t0 = Instant::now();
        let mut race = Race::new(t0, true, HEAD_START);
        actions(&mut race);
        race.handle_punched(None);
        assert_eq!(
            actions(&mut race),
            [Action::Relay],
            "no punch: relay at once"
        );
        race.handle_relayed(Err("relay refused".into()));
        assert_eq!(actions(&mut race), [Action::Endpoints]);
        race.handle_endpoints(Err("no answer at 192.0.2.1:7440".into()));
        assert_eq!(
            race.outcome(),
            &Outcome::Failed(
                "no punched path, through the relay: relay refused; no answer at 192.0.2.1:7440"
                    .into()
            )
        );
    }

    #[test]
    fn a_relay_failure_waits_for_the_punch_still_running() {
        let t0 = Instant::now();
        let mut race = Race::new(t0, true, HEAD_START);
        actions(&mut race);
        race.handle_timeout(t0 + HEAD_START);
        actions(&mut race);
        race.handle_relayed(Err("relay refused".into()));
        assert_eq!(actions(&mut race), [], "the punch may still answer");
        race.handle_punched(Some(endpoint()));
        assert_eq!(actions(&mut race), [Action::Direct(endpoint())]);
        race.handle_direct(endpoint(), Err("reset".into()), false);
        assert_eq!(actions(&mut race), [Action::Endpoints]);
        race.handle_endpoints(Ok(()));
        assert_eq!(race.outcome(), &Outcome::Connected(Connected::Plain));
    }

    #[test]
    fn without_a_rendezvous_only_the_endpoints_are_dialled() {
        let t0 = Instant::now();
        let mut race = Race::new(t0, false, HEAD_START);
        assert_eq!(actions(&mut race), [Action::Endpoints]);
        assert_eq!(race.poll_timeout(), None);
        race.handle_endpoints(Err("its record lists no endpoints".into()));
        assert_eq!(
            race.outcome(),
            &Outcome::Failed("its record lists no endpoints".into())
        );
    }
}
