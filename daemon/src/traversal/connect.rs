//! Making a connection to a peer: the shell of the [`Race`] machine, which finds the peer
//! (through the rendezvous servers or the DHT), punches and relays at once, and hands the winner's path to
//! a path monitor ([`super::run`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tern_proto::Address;
use tern_proto::dht::Reachable;
use tern_proto::record::Record;
use tokio::time::Instant;

use super::race::{self, Connected, PUNCH_HEAD_START, Race};
use super::{Path, punch, run};
use crate::discovery::{Discovery, FindError, Found, Via};
use crate::node::{DialError, Node};
use crate::rendezvous::RendezvousClient;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Find(#[from] FindError),
    #[error("could not reach {peer}: {detail}")]
    Unreachable { peer: Address, detail: String },
}

pub struct Connector {
    node: Node,
    rendezvous: Arc<RendezvousClient>,
    discovery: Arc<Discovery>,
    /// Peers whose connection a path monitor watches.
    monitored: Arc<Mutex<HashSet<Address>>>,
}

impl Connector {
    pub fn new(node: Node, rendezvous: Arc<RendezvousClient>, discovery: Arc<Discovery>) -> Self {
        Self {
            node,
            rendezvous,
            discovery,
            monitored: Arc::default(),
        }
    }

    /// A verified connection to `target`, found through the rendezvous if need be.
    ///
    /// Found through a rendezvous, the target can be punched to and relayed to at once: the
    /// rendezvous introduces us (both sides probe each other's endpoints from their one
    /// socket) while a connection through the relay is set up. The punch gets a head start of
    /// two round trips to the rendezvous; after that the first path up carries the first
    /// byte, and [`run`] moves the connection to the direct path if punching works later, and
    /// back to the relay if the direct path fails. A target in this node's own registry (we
    /// are its rendezvous) is dialled at its endpoints. A target found in the DHT is raced
    /// the same way through the first rendezvous it announced that answers.
    pub async fn connect(&self, target: Address) -> Result<(), ConnectError> {
        if target == self.node.address() {
            return Err(ConnectError::Unreachable {
                peer: target,
                detail: "that is this node's own address".into(),
            });
        }
        if self.node.is_connected(target) {
            return Ok(());
        }
        let Found { record, via } = self.discovery.find(target).await?;
        self.node.learn(&record.identity);
        match via {
            Via::Registry => self.race(target, &record, None).await,
            Via::Rendezvous(server) => self.race(target, &record, Some(server)).await,
            Via::Dht(announced) => {
                // A public node (or one on this LAN) needs no rendezvous: dial it plainly
                // while racing through the rendezvous it announced.
                let plain = self.dial_endpoints(target, &record.endpoints);
                let through = async {
                    let server = self.reach_announced(target, &announced).await;
                    self.race(target, &record, server).await
                };
                tokio::pin!(plain, through);
                tokio::select! {
                    dialled = &mut plain => match dialled {
                        Ok(()) => Ok(()),
                        Err(_) => through.await,
                    },
                    raced = &mut through => match raced {
                        Ok(()) => Ok(()),
                        Err(e) => plain.await.map_err(|_| e),
                    },
                }
            }
        }
    }

    /// Races punching and the relay through `via` (or, without one, dials the record's
    /// endpoints), and starts the path monitor on the winner.
    async fn race(
        &self,
        target: Address,
        record: &Record,
        via: Option<Address>,
    ) -> Result<(), ConnectError> {
        // The rendezvous that introduces us also relays, when this node reaches it directly.
        let rendezvous = via.and_then(|server| Some((server, self.node.remote_of(server)?)));
        let head_start = rendezvous
            .and_then(|(server, _)| self.node.rtt(server))
            .map_or(PUNCH_HEAD_START, |rtt| (rtt * 2).min(PUNCH_HEAD_START))
            + Duration::from_millis(20);
        let mut race = Race::new(Instant::now(), rendezvous.is_some(), head_start);
        type Leg<'a, T> =
            Option<std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>>;
        let mut punching: Leg<'_, Option<SocketAddr>> = None;
        let mut relaying: Leg<'_, Result<(), DialError>> = None;
        loop {
            while let Some(action) = race.poll_action() {
                match (action, rendezvous) {
                    (race::Action::Punch, Some((server, at))) => {
                        let introduction = self.rendezvous.own_record(false);
                        let punch = punch(
                            &self.node,
                            target,
                            server,
                            at,
                            &record.endpoints,
                            introduction,
                        );
                        punching = Some(Box::pin(punch));
                    }
                    (race::Action::Relay, Some((_, at))) => {
                        relaying = Some(Box::pin(self.node.connect_via_relay(target, at)));
                    }
                    // Only a race through a rendezvous punches or relays.
                    (race::Action::Punch, None) => race.handle_punched(None),
                    (race::Action::Relay, None) => {
                        race.handle_relayed(Err("no rendezvous to relay through".into()))
                    }
                    (race::Action::AbandonRelay, _) => relaying = None,
                    (race::Action::Direct(endpoint), _) => {
                        let dialled = self.node.connect(target, endpoint).await;
                        if let Err(e) = &dialled {
                            tracing::debug!(peer = %target, error = %e, "punched, yet the dial failed");
                        }
                        let dialled = dialled.map_err(|e| e.to_string());
                        race.handle_direct(endpoint, dialled, self.node.is_connected(target));
                    }
                    (race::Action::Endpoints, _) => {
                        race.handle_endpoints(self.dial_endpoints(target, &record.endpoints).await);
                    }
                }
            }
            match (race.outcome(), rendezvous) {
                (race::Outcome::Racing, _) => {}
                (race::Outcome::Connected(connected), Some((server, relay))) => {
                    let path = match *connected {
                        Connected::Direct(endpoint) => Path::Direct(endpoint),
                        Connected::Relay => {
                            tracing::info!(peer = %target, %relay, "connected through the relay; punching goes on");
                            Path::Relay
                        }
                        Connected::Plain => return Ok(()),
                    };
                    self.monitor(target, relay, server, record, path);
                    return Ok(());
                }
                (race::Outcome::Connected(_), None) => return Ok(()),
                (race::Outcome::Failed(detail), _) => {
                    return Err(ConnectError::Unreachable {
                        peer: target,
                        detail: detail.clone(),
                    });
                }
            }
            let head_start_ends = race.poll_timeout();
            tokio::select! {
                biased;
                relayed = async { relaying.as_mut().expect("guarded").await }, if relaying.is_some() => {
                    relaying = None;
                    if let Err(e) = &relayed {
                        tracing::debug!(peer = %target, error = %e, "relay failed");
                    }
                    race.handle_relayed(relayed.map_err(|e| e.to_string()));
                }
                answered = async { punching.as_mut().expect("guarded").await }, if punching.is_some() => {
                    punching = None;
                    race.handle_punched(answered);
                }
                _ = async { tokio::time::sleep_until(head_start_ends.expect("guarded")).await }, if head_start_ends.is_some() => {
                    race.handle_timeout(Instant::now());
                }
            }
        }
    }

    /// Connects to the first rendezvous `target` announced in the DHT that answers (with the
    /// key it announced), to be introduced and relayed through it.
    async fn reach_announced(&self, target: Address, announced: &[Reachable]) -> Option<Address> {
        for r in announced {
            if r.server == self.node.address() {
                continue;
            }
            match self.node.connect(r.server, r.at).await {
                Ok(()) => return Some(r.server),
                Err(e) => {
                    tracing::debug!(peer = %target, server = %r.server, error = %e, "announced rendezvous unreachable")
                }
            }
        }
        None
    }

    /// Plain dials to each endpoint in turn; what each failure was, if none answered.
    async fn dial_endpoints(
        &self,
        target: Address,
        endpoints: &[SocketAddr],
    ) -> Result<(), String> {
        let mut errors = Vec::new();
        for &endpoint in endpoints {
            match self.node.connect(target, endpoint).await {
                Ok(()) => return Ok(()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(if errors.is_empty() {
            "its record lists no endpoints".into()
        } else {
            errors.join("; ")
        })
    }

    /// Starts the path monitor for the connection to `target`, unless one runs.
    fn monitor(
        &self,
        target: Address,
        relay: SocketAddr,
        server: Address,
        record: &Record,
        path: Path,
    ) {
        if !self.monitored.lock().expect("monitor lock").insert(target) {
            return;
        }
        let rendezvous: Weak<RendezvousClient> = Arc::downgrade(&self.rendezvous);
        let (monitored, record, node) = (self.monitored.clone(), record.clone(), self.node.clone());
        self.node.spawn(async move {
            let introduction = || rendezvous.upgrade().map(|r| r.own_record(false));
            run(node, target, relay, server, record, path, introduction).await;
            monitored.lock().expect("monitor lock").remove(&target);
        });
    }
}
