//! Finding peers. Every ternd serves as a rendezvous on virtual port 1: it keeps the signed
//! records nodes register with it, indexes their names, answers lookups by address and by
//! name, and introduces nodes to each other for hole punching. A node registers its own
//! record with each configured rendezvous (or, with none, only with itself) and refreshes it.
//!
//! Records are signed by their owner and checked by every reader, so a rendezvous can lose or
//! withhold a record but never substitute a key, an endpoint or a name. (Relaying happens in
//! the node's socket layer: see `transport::socket` and `node::forward_relayed`.)

pub mod registration;
pub mod registry;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_proto::record::Record;
use tern_proto::rendezvous::{Answer, MAX_MESSAGE_LEN, MessageError, RENDEZVOUS_PORT, Request};
use tern_proto::{Address, Name};

use crate::node::{Access, DialError, ExchangeError, Node, OverlayStream};
pub use crate::ratelimit::RateLimiter;
use crate::traversal::{Asker, probe_candidates};
pub use registry::{RegisterError, Registry};

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

/// How long a record is valid; owners refresh well before.
pub const RECORD_LIFETIME: Duration = Duration::from_secs(300);
/// How long both sides keep probing each other's endpoints (a probe round every 150 ms).
pub const PUNCH_WINDOW: Duration = Duration::from_secs(2);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    #[error("cannot reach the rendezvous: {0}")]
    Dial(#[from] DialError),
    #[error("the rendezvous exchange failed: {0}")]
    Stream(String),
    #[error("rendezvous: {0}")]
    Exchange(#[from] ExchangeError),
    #[error("the rendezvous did not answer within {EXCHANGE_TIMEOUT:?}")]
    Timeout,
    #[error("the rendezvous sent a bad answer: {0}")]
    BadAnswer(#[from] MessageError),
    #[error("the rendezvous refused: {0}")]
    Refused(String),
    #[error("the rendezvous answered {0:?} to a {1} request")]
    Unexpected(Box<Answer>, &'static str),
    #[error(
        "the name {name} is held by {holder}: names go to the first key that claims them; pick \
         another name"
    )]
    NameTaken { name: Name, holder: Address },
    #[error("the rendezvous holds a newer record of this node (seq {stored_seq})")]
    Stale { stored_seq: u64 },
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

/// Asks `server` to introduce this node to `target` (see [`Request::Introduce`]).
pub async fn request_introduction(
    node: &Node,
    server: Address,
    target: Address,
    own: Record,
) -> Result<(), RendezvousError> {
    let request = Request::Introduce {
        target,
        record: Box::new(own),
    };
    match ask(node, server, &request).await? {
        Answer::Introduced => Ok(()),
        Answer::NotFound => Err(RendezvousError::Refused(format!(
            "{target} is not connected to it"
        ))),
        Answer::Refused(reason) => Err(RendezvousError::Refused(reason)),
        other => Err(RendezvousError::Unexpected(Box::new(other), "introduce")),
    }
}

/// One request to a connected rendezvous, one answer.
pub async fn ask(
    node: &Node,
    server: Address,
    request: &Request,
) -> Result<Answer, RendezvousError> {
    let encoded = request.encode();
    let exchange = node.exchange(server, RENDEZVOUS_PORT, &encoded, MAX_MESSAGE_LEN);
    let bytes = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| RendezvousError::Timeout)??;
    Ok(Answer::decode(&bytes)?)
}

/// Registers `record` and returns the address the rendezvous sees this node at.
pub async fn register(
    node: &Node,
    server: Address,
    record: Record,
) -> Result<SocketAddr, RendezvousError> {
    match ask(node, server, &Request::Register(Box::new(record))).await? {
        Answer::Registered { observed } => Ok(observed),
        Answer::NameTaken { name, holder } => Err(RendezvousError::NameTaken { name, holder }),
        Answer::Stale { stored_seq } => Err(RendezvousError::Stale { stored_seq }),
        Answer::Refused(reason) => Err(RendezvousError::Refused(reason)),
        other => Err(RendezvousError::Unexpected(Box::new(other), "register")),
    }
}

/// Looks `address` up; the record is verified by decoding and must be for that address.
pub async fn lookup(
    node: &Node,
    server: Address,
    address: Address,
) -> Result<Option<Record>, RendezvousError> {
    match ask(node, server, &Request::Lookup(address)).await? {
        Answer::Found(record) if record.address() == address && record.is_live(node.unix_now()) => {
            Ok(Some(*record))
        }
        Answer::Found(_) => Err(RendezvousError::Refused(format!(
            "answered a lookup for {address} with another node's or an expired record"
        ))),
        Answer::NotFound => Ok(None),
        Answer::Refused(reason) => Err(RendezvousError::Refused(reason)),
        other => Err(RendezvousError::Unexpected(Box::new(other), "lookup")),
    }
}

/// The live record that holds `name` at `server`; it must carry that name (it is signed, so
/// the server cannot attach a name to another node's record).
pub async fn lookup_name(
    node: &Node,
    server: Address,
    name: &Name,
) -> Result<Option<Record>, RendezvousError> {
    match ask(node, server, &Request::LookupName(name.clone())).await? {
        Answer::Found(record)
            if record.name.as_ref() == Some(name) && record.is_live(node.unix_now()) =>
        {
            Ok(Some(*record))
        }
        Answer::Found(record) => Err(RendezvousError::Refused(format!(
            "answered a lookup for the name {name} with a record of {} that does not claim it \
             or has expired",
            record.address()
        ))),
        Answer::NotFound => Ok(None),
        Answer::Refused(reason) => Err(RendezvousError::Refused(reason)),
        other => Err(RendezvousError::Unexpected(Box::new(other), "name lookup")),
    }
}
