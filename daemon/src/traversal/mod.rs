//! Keeping a connection on the best path to a peer behind NATs. The dialling side owns the
//! decision: it starts on whichever path is up first (a punched direct path, or the relay),
//! moves the connection to the direct path when punching succeeds, back to the relay when the
//! direct path stops answering, and tries direct again later, backing off.
//!
//! Moving is one route change in the path table: quinn keeps its synthetic address, so the
//! connection and its streams never notice. The peer sees the packets arrive along the new
//! path and follows with QUIC connection migration; its replies reach us along either path.
//!
//! [`PathMonitor`] makes the decisions without I/O or a clock of its own (time comes in as
//! `now`); [`run`] is the thin async shell that sends the probes and applies the switches.
//! [`punch::Punch`] decides the probes of one hole punch the same way (`Node::probe` is its
//! shell), and [`race::Race`] the race of punching, relay and plain dials that makes a
//! connection (`Daemon::ensure_connected`).

pub mod punch;
pub mod race;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tern_proto::Address;
use tokio::time::Instant;

use tern_proto::record::Record;

use crate::node::Node;
use crate::rendezvous::{self, PUNCH_WINDOW};
use crate::transport::paths::{Route, canonical, is_link};

/// How often a direct path is checked with a sealed ping, and how long each check waits.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Checks missed in a row before the direct path counts as gone.
pub const MAX_MISSES: u32 = 3;
/// The first retry of the direct path after falling back to the relay, doubling up to
/// [`MAX_RETRY`] while punching keeps failing.
pub const FIRST_RETRY: Duration = Duration::from_secs(3);
pub const MAX_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct(SocketAddr),
    Relay,
}

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
        self.next_at = now + CHECK_INTERVAL;
        if answered {
            self.misses = 0;
            return None;
        }
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

/// How far an address reaches: this host, a private network, or the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reach {
    Host,
    Private,
    Internet,
}

/// `None` for addresses that are never a peer's endpoint: unspecified, broadcast, multicast,
/// link-local (a record cannot carry the scope), port 0.
fn reach(endpoint: SocketAddr) -> Option<Reach> {
    let endpoint = canonical(endpoint);
    if endpoint.port() == 0 {
        return None;
    }
    match endpoint.ip() {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            if ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || ip.is_link_local()
                || a == 0
            {
                None
            } else if ip.is_loopback() {
                Some(Reach::Host)
            } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
                Some(Reach::Private)
            } else {
                Some(Reach::Internet)
            }
        }
        IpAddr::V6(ip) => {
            if ip.is_unspecified() || ip.is_multicast() || ip.is_unicast_link_local() {
                None
            } else if ip.is_loopback() {
                Some(Reach::Host)
            } else if ip.is_unique_local() {
                Some(Reach::Private)
            } else {
                Some(Reach::Internet)
            }
        }
    }
}

/// Who wants the punch: this node (its operator dialled) or the peer (an introduction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    Us,
    Peer,
}

/// The endpoints of a peer's record worth probing, when the record came through the
/// rendezvous this node reaches at `rendezvous`. Endpoints are whatever the record's owner
/// wrote, so they never lead this node's probes further in than that rendezvous sits: a
/// record from a rendezvous on the internet never makes this node probe its own host, and
/// when the peer asked, not its private network either. (Two nodes behind one NAT still meet
/// on their LAN: the dialer probes the peer's private endpoints, and the peer answers probes
/// from wherever they come.)
pub fn probe_candidates(
    endpoints: &[SocketAddr],
    rendezvous: SocketAddr,
    asker: Asker,
) -> Vec<SocketAddr> {
    // A TCP link's synthetic address says nothing of where the rendezvous is: assume afar.
    let rendezvous_reach = match is_link(&rendezvous) {
        true => Reach::Internet,
        false => reach(rendezvous).unwrap_or(Reach::Internet),
    };
    let innermost = match asker {
        Asker::Us => rendezvous_reach.min(Reach::Private),
        Asker::Peer => rendezvous_reach,
    };
    let mut candidates: Vec<SocketAddr> = endpoints
        .iter()
        .map(|&e| canonical(e))
        .filter(|&e| reach(e).is_some_and(|r| r >= innermost))
        .collect();
    candidates.dedup();
    candidates.truncate(tern_proto::record::MAX_ENDPOINTS);
    candidates
}

/// The dialling side's shell of a [`PathMonitor`]: checks the direct path, punches, and
/// moves the connection to `peer` between the direct path and the `relay`, until the
/// connection goes. `own_record` makes this node's record for introductions (None: the
/// node is going).
pub async fn run(
    node: Node,
    peer: Address,
    relay: SocketAddr,
    server: Address,
    mut record: Record,
    path: Path,
    own_record: impl Fn() -> Option<Record>,
) {
    let mut monitor = PathMonitor::new(Instant::now(), path);
    loop {
        let action = monitor.poll(Instant::now());
        if let Action::WaitUntil(at) = action {
            tokio::time::sleep_until(at).await;
            continue;
        }
        if !node.is_connected(peer) {
            return;
        }
        let switched = match action {
            Action::Check(endpoint) => {
                let answered = node.check_path(peer, endpoint, CHECK_INTERVAL).await;
                monitor.on_check(answered, Instant::now())
            }
            Action::Punch => {
                // The peer may have moved (a new network, a NAT that rebound) since it was
                // last looked up: punch towards where its newest record says it is.
                if let Ok(Some(newer)) = rendezvous::lookup(&node, server, peer).await
                    && newer.seq > record.seq
                {
                    record = newer;
                }
                let Some(introduction) = own_record() else {
                    return;
                };
                let answered =
                    punch(&node, peer, server, relay, &record.endpoints, introduction).await;
                monitor.on_punch(answered, Instant::now())
            }
            Action::WaitUntil(_) => None,
        };
        if let Some(path) = switched {
            let route = match path {
                Path::Direct(endpoint) => Route::Direct(endpoint),
                Path::Relay => Route::Relay { relay, peer },
            };
            match node.set_route(peer, route) {
                true => tracing::info!(%peer, %route, "path switched"),
                false => return,
            }
        }
    }
}

/// One round of hole punching to `target` through the rendezvous `server` (reached at
/// `server_at`), introducing this node with `record`: the endpoint that answered first, if
/// any.
pub async fn punch(
    node: &Node,
    target: Address,
    server: Address,
    server_at: SocketAddr,
    endpoints: &[SocketAddr],
    record: Record,
) -> Option<SocketAddr> {
    let candidates = probe_candidates(endpoints, server_at, Asker::Us);
    // The introduction is answered once the target has started probing us, so our first
    // probes already meet an open NAT on its side.
    if let Err(e) = rendezvous::request_introduction(node, server, target, record).await {
        tracing::debug!(peer = %target, error = %e, "no introduction");
    }
    node.probe(target, &candidates, PUNCH_WINDOW).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> SocketAddr {
        "203.0.113.9:7440".parse().unwrap()
    }

    #[test]
    fn records_never_lead_probes_further_in_than_their_rendezvous_sits() {
        let endpoints: Vec<SocketAddr> = [
            "127.0.0.1:7440",
            "192.168.1.5:7440",
            "100.70.0.1:7440",
            "169.254.1.1:7440",
            "0.0.0.0:7440",
            "255.255.255.255:7440",
            "224.0.0.1:7440",
            "[fe80::1]:7440",
            "[::ffff:198.51.100.7]:7440",
            "203.0.113.9:0",
            "203.0.113.9:7440",
        ]
        .iter()
        .map(|e| e.parse().unwrap())
        .collect();
        let addrs = |list: &[&str]| -> Vec<SocketAddr> {
            list.iter().map(|e| e.parse().unwrap()).collect()
        };
        let public = "198.51.100.1:7440".parse().unwrap();
        assert_eq!(
            probe_candidates(&endpoints, public, Asker::Peer),
            addrs(&["198.51.100.7:7440", "203.0.113.9:7440"])
        );
        assert_eq!(
            probe_candidates(&endpoints, public, Asker::Us),
            addrs(&[
                "192.168.1.5:7440",
                "100.70.0.1:7440",
                "198.51.100.7:7440",
                "203.0.113.9:7440"
            ])
        );
        let lan = "10.0.0.1:7440".parse().unwrap();
        assert_eq!(
            probe_candidates(&endpoints, lan, Asker::Peer),
            probe_candidates(&endpoints, public, Asker::Us)
        );
        // Every node on one host (a test, a lab): loopback is fair.
        let host = "127.0.0.1:7440".parse().unwrap();
        assert_eq!(probe_candidates(&endpoints, host, Asker::Peer).len(), 5);
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
}
