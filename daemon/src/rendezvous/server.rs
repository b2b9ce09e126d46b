//! The rendezvous role every ternd plays, on virtual port 1: it keeps the records nodes
//! register with it (in its [`Registry`], saved to the home), answers look-ups by address and
//! name, and introduces nodes to each other for hole punching, within per-peer limits.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tern_proto::Address;
use tern_proto::record::Record;
use tern_proto::rendezvous::{Answer, MAX_MESSAGE_LEN, RENDEZVOUS_PORT, Request};

use super::client::ask;
use super::registry::Registry;
use super::{EXCHANGE_TIMEOUT, PUNCH_WINDOW, RegisterError, RendezvousError};
use crate::node::{Access, Node, OverlayStream};
use crate::ratelimit::RateLimiter;
use crate::traversal::{Asker, probe_candidates};

/// Rendezvous requests one peer may make: a burst, then this many a second.
const REQUESTS_PER_SECOND: f64 = 1000.0;
const REQUEST_BURST: f64 = 2000.0;
/// Introductions of one node (counted by the record's owner, both at the rendezvous and at
/// the target): each one makes the target probe.
const INTRODUCTIONS_PER_SECOND: f64 = 1.0;
const INTRODUCTION_BURST: f64 = 10.0;
/// New name claims, per key and per source IP: a few at once, then one a minute (per key)
/// or one every ten seconds (per source, which many nodes behind one NAT share).
const CLAIMS_PER_SECOND_PER_KEY: f64 = 1.0 / 60.0;
const CLAIM_BURST_PER_KEY: f64 = 5.0;
const CLAIMS_PER_SECOND_PER_SOURCE: f64 = 0.1;
const CLAIM_BURST_PER_SOURCE: f64 = 20.0;

/// The limits a rendezvous applies per peer, and what it refused.
pub struct Limits {
    /// Requests answered `Refused` (rate limits, bad or stale records, malformed requests).
    pub refused: std::sync::atomic::AtomicU64,
    /// Registrations that claimed a name another key holds.
    pub names_taken: std::sync::atomic::AtomicU64,
    requests: Mutex<RateLimiter>,
    introductions: Mutex<RateLimiter>,
    claims_per_key: Mutex<RateLimiter>,
    claims_per_source: Mutex<RateLimiter<IpAddr>>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            refused: Default::default(),
            names_taken: Default::default(),
            requests: Mutex::new(RateLimiter::new(REQUESTS_PER_SECOND, REQUEST_BURST)),
            introductions: Mutex::new(RateLimiter::new(
                INTRODUCTIONS_PER_SECOND,
                INTRODUCTION_BURST,
            )),
            claims_per_key: Mutex::new(RateLimiter::new(
                CLAIMS_PER_SECOND_PER_KEY,
                CLAIM_BURST_PER_KEY,
            )),
            claims_per_source: Mutex::new(RateLimiter::new(
                CLAIMS_PER_SECOND_PER_SOURCE,
                CLAIM_BURST_PER_SOURCE,
            )),
        }
    }
}

/// What the rendezvous role of a node works with.
pub struct Service {
    pub node: Node,
    pub registry: Arc<Mutex<Registry>>,
    pub limits: Arc<Limits>,
    /// Notified when a name is newly claimed (worth saving at once).
    pub claimed: Arc<tokio::sync::Notify>,
    /// Whether a peer is one of this node's own rendezvous servers: only those may
    /// introduce peers to it (each introduction makes it probe).
    pub is_own_server: Box<dyn Fn(Address) -> bool + Send + Sync>,
}

/// Serves rendezvous requests on port 1 until the node shuts down.
pub async fn serve(service: Arc<Service>) {
    let mut listener = match service.node.listen(RENDEZVOUS_PORT, Access::Open) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve as a rendezvous");
            return;
        }
    };
    while let Some(stream) = listener.accept().await {
        let service = service.clone();
        service.node.clone().spawn(async move {
            if let Err(e) = answer(stream, &service).await {
                tracing::debug!(error = %e, "rendezvous request failed");
            }
        });
    }
}

async fn answer(mut stream: OverlayStream, service: &Service) -> Result<(), RendezvousError> {
    let Service {
        node,
        registry,
        limits,
        claimed,
        ..
    } = service;
    let peer = stream.peer;
    let bytes = tokio::time::timeout(EXCHANGE_TIMEOUT, stream.recv.read_to_end(MAX_MESSAGE_LEN))
        .await
        .map_err(|_| RendezvousError::Timeout)?
        .map_err(|e| RendezvousError::Stream(e.to_string()))?;
    let now = tokio::time::Instant::now();
    fn allowed<K: std::hash::Hash + Eq>(
        limiter: &Mutex<RateLimiter<K>>,
        now: tokio::time::Instant,
        who: K,
    ) -> bool {
        limiter.lock().expect("rate limiter lock").allow(now, who)
    }
    let source = node.observed_address(peer).map(|at| at.ip());
    let answer = match Request::decode(&bytes) {
        _ if !allowed(&limits.requests, now, peer) => {
            Answer::Refused("too many requests; slow down".into())
        }
        Err(e) => Answer::Refused(e.to_string()),
        Ok(Request::Introduce { ref record, .. })
            if !allowed(&limits.introductions, now, record.address()) =>
        {
            Answer::Refused("too many introductions; slow down".into())
        }
        Ok(Request::Lookup(address)) => {
            let registry = registry.lock().expect("registry lock");
            registry
                .lookup(node.unix_now(), address)
                .map_or(Answer::NotFound, |r| Answer::Found(Box::new(r.clone())))
        }
        Ok(Request::Introduce { target, record }) => {
            introduce(service, peer, target, *record).await
        }
        Ok(Request::LookupName(name)) => {
            let registry = registry.lock().expect("registry lock");
            registry
                .lookup_name(node.unix_now(), &name)
                .map_or(Answer::NotFound, |r| Answer::Found(Box::new(r.clone())))
        }
        // Records leak (every introduction carries one): a record stored from anyone but its
        // owner could release the owner's name or point its peers at stale endpoints.
        Ok(Request::Register(record)) if record.address() != peer => Answer::Refused(format!(
            "a record of {} sent by {peer}: a node registers only its own record, over its own \
             connection",
            record.address()
        )),
        Ok(Request::Register(record)) => {
            let mut registry = registry.lock().expect("registry lock");
            let new_claim = registry.is_new_claim(&record);
            let claim_allowed = !new_claim
                || (allowed(&limits.claims_per_key, now, record.address())
                    && source.is_some_and(|ip| allowed(&limits.claims_per_source, now, ip)));
            if !claim_allowed {
                Answer::Refused("too many new name claims; try again in a minute".into())
            } else {
                let registered = registry.register(node.unix_now(), *record);
                if new_claim && registered.is_ok() {
                    claimed.notify_one();
                }
                match (registered, node.observed_address(peer)) {
                    (Ok(()), Some(observed)) => Answer::Registered { observed },
                    (Ok(()), None) => Answer::Refused("the connection went away".into()),
                    (Err(RegisterError::NameTaken { name, holder }), _) => {
                        Answer::NameTaken { name, holder }
                    }
                    (Err(RegisterError::Stale { stored, .. }), _) => {
                        Answer::Stale { stored_seq: stored }
                    }
                    (Err(e), _) => Answer::Refused(e.to_string()),
                }
            }
        }
    };
    match &answer {
        Answer::Refused(reason) => {
            limits
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(%peer, %reason, "rendezvous request refused");
        }
        Answer::NameTaken { .. } => {
            limits
                .names_taken
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        _ => {}
    }
    stream
        .send
        .write_all(&answer.encode())
        .await
        .map_err(|e| RendezvousError::Stream(e.to_string()))?;
    let _ = stream.send.finish();
    let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, stream.send.stopped()).await;
    Ok(())
}

/// Passes the asker's record on to `target`, or, when this node is the target, starts
/// probing the record's endpoints so that both NATs open towards each other. A rendezvous
/// forwards only the asker's own record; the target accepts a record (it is signed) only
/// from one of its own rendezvous servers, and probes only the endpoints
/// [`probe_candidates`] allows. Probing is bounded in count, rate and time either way.
async fn introduce(service: &Service, asker: Address, target: Address, record: Record) -> Answer {
    let node = &service.node;
    let peer = record.address();
    if target == node.address() {
        if !(service.is_own_server)(asker) {
            return Answer::Refused(format!(
                "{asker} is not a rendezvous of this node: only those introduce peers to it"
            ));
        }
        if peer == node.address() || peer == asker {
            return Answer::Refused("an introduction of this node or of its rendezvous".into());
        }
        let Some(server_at) = node.remote_of(asker) else {
            return Answer::Refused("the rendezvous is not reached directly".into());
        };
        node.learn(&record.identity);
        let candidates = probe_candidates(&record.endpoints, server_at, Asker::Peer);
        let node = node.clone();
        node.clone().spawn(async move {
            let answered = node.probe(peer, &candidates, PUNCH_WINDOW).await;
            tracing::debug!(%peer, ?answered, "punched towards an introduced peer");
        });
        return Answer::Introduced;
    }
    if peer != asker {
        return Answer::Refused("an introduction must carry the asker's own record".into());
    }
    if !node.is_connected(target) {
        return Answer::NotFound;
    }
    let forwarded = Request::Introduce {
        target,
        record: Box::new(record),
    };
    ask(node, target, &forwarded)
        .await
        .unwrap_or_else(|e| Answer::Refused(e.to_string()))
}

/// How often changed records are written out (a crash loses at most this much).
const PERSIST_INTERVAL: Duration = Duration::from_secs(5);

/// The registry's records in the home, so that a restarted rendezvous still holds the nodes
/// registered with it (and the names they claimed).
pub struct RecordsFile {
    node: Node,
    registry: Arc<Mutex<Registry>>,
    path: PathBuf,
    /// The registry as last written to `path`.
    written: Mutex<Vec<u8>>,
    /// Notified when a name is newly claimed: worth saving at once.
    pub claimed: Arc<tokio::sync::Notify>,
}

impl RecordsFile {
    /// Restores the live records `path` holds into `registry`.
    pub fn restore(node: Node, registry: Arc<Mutex<Registry>>, path: PathBuf) -> Self {
        if let Ok(bytes) = node.env().read_file(&path) {
            let (loaded, skipped) = registry
                .lock()
                .expect("registry lock")
                .load_file(node.unix_now(), &bytes);
            tracing::info!(loaded, skipped, file = %path.display(), "rendezvous records restored");
        }
        Self {
            node,
            registry,
            path,
            written: Mutex::new(Vec::new()),
            claimed: Arc::default(),
        }
    }

    /// Writes the registry to the home if it changed (atomically: temp file, rename).
    pub fn save(&self) {
        let now = self
            .registry
            .lock()
            .expect("registry lock")
            .to_file(self.node.unix_now());
        let mut written = self.written.lock().expect("records lock");
        if *written == now {
            return;
        }
        match self.node.env().write_file(&self.path, &now) {
            Ok(()) => *written = now,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot save rendezvous records")
            }
        }
    }
}

/// Saves the registry every few seconds, and at once when a name is newly claimed.
pub async fn persist(records: Weak<RecordsFile>) {
    let Some(claimed) = records.upgrade().map(|r| r.claimed.clone()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PERSIST_INTERVAL) => {}
            _ = claimed.notified() => {}
        }
        let Some(records) = records.upgrade() else {
            return;
        };
        records.save();
    }
}
