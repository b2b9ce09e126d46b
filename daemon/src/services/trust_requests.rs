//! Trust requests: a peer asks this node's operator to trust it (`ternctl trust request`),
//! the operator answers with `trust approve` or `trust reject`, and the answer goes back so
//! that approval adds each side to the other's trust list. The book of pending (incoming)
//! and outgoing requests lives in the home as `trust-requests.json`; incoming requests are
//! kept as their signed bytes and verified again when read back. [`TrustRequests`] sends
//! them, answers them, and serves the trust request port.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use tern_proto::Address;
use tern_proto::api::{PAGE_BUDGET, page};
use tern_proto::trust_request::{
    self, Answer, MAX_MESSAGE_LEN, Message, SignedRequest, TRUST_REQUEST_PORT,
};

use super::names::{NameError, Names};
use super::trust::Trust;
use crate::node::{Access, ExchangeError, Listener, Node};
use crate::ratelimit::RateLimiter;
use crate::store::{Document, StoreError};
use crate::traversal::connect::{ConnectError, Connector};

pub const REQUESTS_FILE: &str = "trust-requests.json";
/// Incoming requests kept at once; past this, a new one evicts the oldest.
pub const MAX_PENDING: usize = 256;
/// How long an unanswered incoming request is kept: 3 days.
pub const PENDING_LIFETIME_SECS: u64 = 3 * 24 * 3600;
/// How far a request's time may be from ours (clock skew; older ones are replays).
pub const MAX_SKEW_SECS: u64 = 600;
/// Requests one peer may send: a few, then one every ten seconds.
pub const REQUESTS_PER_SECOND: f64 = 0.1;
pub const REQUEST_BURST: f64 = 3.0;
const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RequestBook {
    /// Requests to this node, by sender: the signed request in hex and when it arrived.
    #[serde(default)]
    pending: BTreeMap<Address, Pending>,
    /// Requests this node sent and that are not answered yet: peer → Unix seconds sent.
    #[serde(default)]
    outgoing: BTreeMap<Address, u64>,
    /// Answers given here that the requester has not been told yet: peer → approved.
    #[serde(default)]
    untold: BTreeMap<Address, bool>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Pending {
    request: String,
    received: u64,
}

/// Why an incoming request was not recorded; the text goes back to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestRefusal {
    #[error("the request was signed by {signer} but arrived from {peer}")]
    WrongSender { signer: Address, peer: Address },
    #[error("the request is addressed to {0}, not to this node")]
    WrongAddressee(Address),
    #[error("the request's time is more than {MAX_SKEW_SECS} s from this node's clock")]
    Stale,
}

impl RequestBook {
    /// Records a verified request from `peer` to `me`; a newer request from the same peer
    /// replaces the older one. Returns whether it is new (not a repeat of a pending one).
    pub fn receive(
        &mut self,
        request: &SignedRequest,
        peer: Address,
        me: Address,
        now_unix: u64,
    ) -> Result<bool, RequestRefusal> {
        let signer = request.from.address();
        if signer != peer {
            return Err(RequestRefusal::WrongSender { signer, peer });
        }
        if request.to != me {
            return Err(RequestRefusal::WrongAddressee(request.to));
        }
        if request.sent.abs_diff(now_unix) > MAX_SKEW_SECS {
            return Err(RequestRefusal::Stale);
        }
        let repeat = self
            .pending(peer)
            .is_some_and(|old| old.reason == request.reason);
        self.pending
            .retain(|_, p| now_unix < p.received.saturating_add(PENDING_LIFETIME_SECS));
        if !self.pending.contains_key(&peer) && self.pending.len() >= MAX_PENDING {
            // Many identities cost nothing: they may push out old requests, never lock the
            // inbox.
            let oldest = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.received)
                .map(|(&address, _)| address);
            if let Some(oldest) = oldest {
                tracing::info!(peer = %oldest, "trust inbox full: the oldest request is dropped");
                self.pending.remove(&oldest);
            }
        }
        self.pending.insert(
            peer,
            Pending {
                request: hex::encode(request.as_bytes()),
                received: now_unix,
            },
        );
        Ok(!repeat)
    }

    /// The verified pending request from `peer`, if any.
    pub fn pending(&self, peer: Address) -> Option<SignedRequest> {
        let pending = self.pending.get(&peer)?;
        let bytes = hex::decode(&pending.request).ok()?;
        SignedRequest::decode(&bytes)
            .ok()
            .filter(|r| r.from.address() == peer)
    }

    pub fn take_pending(&mut self, peer: Address) -> Option<SignedRequest> {
        let request = self.pending(peer);
        self.pending.remove(&peer);
        request
    }

    /// The pending requests as the local API shows them, in address order (damaged and
    /// expired entries left out).
    pub fn pending_list(&self, now_unix: u64) -> Vec<Value> {
        self.pending
            .iter()
            .filter(|(_, p)| now_unix < p.received.saturating_add(PENDING_LIFETIME_SECS))
            .filter_map(|(&peer, pending)| {
                let request = self.pending(peer)?;
                Some(json!({
                    "address": peer,
                    "public_key": hex::encode(request.from.key_bytes()),
                    "reason": request.reason,
                    "sent": request.sent,
                    "received": pending.received,
                }))
            })
            .collect()
    }

    pub fn add_outgoing(&mut self, peer: Address, now_unix: u64) {
        self.outgoing.insert(peer, now_unix);
    }

    /// Ends our request to `peer`; false if we had none (an answer nobody asked for).
    pub fn end_outgoing(&mut self, peer: Address) -> bool {
        self.outgoing.remove(&peer).is_some()
    }

    pub fn has_outgoing(&self, peer: Address) -> bool {
        self.outgoing.contains_key(&peer)
    }

    /// Notes an answer to tell `peer` later (it could not be reached); bounded like pending.
    pub fn add_untold(&mut self, peer: Address, approved: bool) {
        if self.untold.len() < MAX_PENDING {
            self.untold.insert(peer, approved);
        }
    }

    pub fn take_untold(&mut self, peer: Address) -> Option<bool> {
        self.untold.remove(&peer)
    }

    pub fn untold(&self) -> Vec<(Address, bool)> {
        self.untold
            .iter()
            .map(|(&peer, &approved)| (peer, approved))
            .collect()
    }

    pub fn outgoing_list(&self) -> Vec<Value> {
        self.outgoing
            .iter()
            .map(|(peer, sent)| json!({ "address": peer, "sent": sent }))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("the answer was unreadable: {0}")]
    BadAnswer(#[from] tern_proto::wire::DecodeError),
    #[error("no answer within {EXCHANGE_TIMEOUT:?}")]
    Timeout,
    #[error("{peer} refused: {reason}")]
    Refused { peer: Address, reason: String },
}

/// Sends one message to `peer` (already connected) and reads its answer.
pub async fn send(node: &Node, peer: Address, message: &Message) -> Result<(), SendError> {
    let encoded = message.encode();
    let exchange = node.exchange(peer, TRUST_REQUEST_PORT, &encoded, MAX_MESSAGE_LEN);
    let bytes = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| SendError::Timeout)??;
    match Answer::decode(&bytes)? {
        Answer::Accepted => Ok(()),
        Answer::Refused(reason) => Err(SendError::Refused { peer, reason }),
    }
}

/// Why a trust request, or the answer to one, went wrong.
#[derive(Debug, thiserror::Error)]
pub enum TrustRequestError {
    #[error(
        "no pending trust request from {0}; `ternctl trust pending` lists them (to trust a node \
         that did not ask: `ternctl trust add`)"
    )]
    NoPending(Address),
    #[error("trust request to {peer} not delivered: {source}")]
    NotDelivered { peer: Address, source: SendError },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The trust request service: this node's requests to others, its operator's answers to
/// requests from others, and the service on the trust request port.
pub struct TrustRequests {
    node: Node,
    names: Arc<Names>,
    connector: Arc<Connector>,
    trust: Arc<Trust>,
    book: Document<RequestBook>,
    limiter: Mutex<RateLimiter>,
    /// Trust request messages refused (forged, stale, too many, no request of ours).
    refused: AtomicU64,
}

impl TrustRequests {
    /// Serves the trust request port and retells undelivered answers, as tasks of the node.
    pub fn start(
        node: Node,
        names: Arc<Names>,
        connector: Arc<Connector>,
        trust: Arc<Trust>,
        book: Document<RequestBook>,
    ) -> Arc<Self> {
        let listener = node
            .listen(TRUST_REQUEST_PORT, Access::Open)
            .expect("a fresh node has no listener on the trust request port");
        let service = Arc::new(Self {
            node: node.clone(),
            names,
            connector,
            trust,
            book,
            limiter: Mutex::new(RateLimiter::new(REQUESTS_PER_SECOND, REQUEST_BURST)),
            refused: AtomicU64::new(0),
        });
        node.spawn(serve(Arc::downgrade(&service), listener));
        node.spawn(retell(Arc::downgrade(&service)));
        service
    }

    /// Trust request messages refused since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Sends a signed trust request to `target`; its operator answers with `trust approve`
    /// (then each side trusts the other) or `trust reject`.
    pub async fn request(&self, target: &str, reason: &str) -> Result<Address, TrustRequestError> {
        let peer = self.names.resolve(target).await?;
        let request = SignedRequest::sign(
            self.node.secret_identity(),
            peer,
            self.node.unix_now(),
            reason,
        )
        .map_err(|e| TrustRequestError::NotDelivered {
            peer,
            source: SendError::Refused {
                peer,
                reason: e.to_string(),
            },
        })?;
        self.connector.connect(peer).await?;
        // Noted first: the approval may come back before the answer to the request does.
        self.book
            .update(|book| book.add_outgoing(peer, self.node.unix_now()))?;
        let sent = send(&self.node, peer, &Message::Request(Box::new(request))).await;
        if let Err(source) = sent {
            self.book.update(|book| book.end_outgoing(peer))?;
            return Err(TrustRequestError::NotDelivered { peer, source });
        }
        Ok(peer)
    }

    /// The pending requests after `after` that fit in one local API frame (`next` says where
    /// the next page starts), and our outgoing ones.
    pub fn list(&self, after: Option<&str>) -> Value {
        let (outgoing, pending) = self.book.read(|book| {
            (
                book.outgoing_list(),
                book.pending_list(self.node.unix_now()),
            )
        });
        let room = PAGE_BUDGET.saturating_sub(json!(outgoing).to_string().len());
        let (pending, next) = page(pending, after, room);
        json!({ "pending": pending, "next": next, "outgoing": outgoing })
    }

    /// Answers `peer`'s pending request: approval trusts it here; either way the peer is
    /// told (best effort: the answer here stands even if it cannot be told now).
    pub async fn answer(&self, peer: Address, approve: bool) -> Result<Value, TrustRequestError> {
        let request = self.book.update(|book| book.take_pending(peer))?;
        if request.is_none() {
            return Err(TrustRequestError::NoPending(peer));
        }
        if approve {
            self.trust.set(peer, true)?;
        }
        let told = tokio::time::timeout(TELL_WAIT, self.tell_answer(peer, approve))
            .await
            .unwrap_or_else(|_| {
                Err(TrustRequestError::Connect(ConnectError::Unreachable {
                    peer,
                    detail: format!("no answer within {TELL_WAIT:?}; it will be told later"),
                }))
            });
        if told.is_err() {
            self.book.update(|book| book.add_untold(peer, approve))?;
        }
        Ok(json!({
            "address": peer,
            "approved": approve,
            "told": told.is_ok(),
            "told_error": told.err().map(|e| e.to_string()),
        }))
    }

    /// Tells `peer` how its request was answered.
    async fn tell_answer(&self, peer: Address, approved: bool) -> Result<(), TrustRequestError> {
        let message = match approved {
            true => Message::Approved,
            false => Message::Rejected,
        };
        self.connector.connect(peer).await?;
        send(&self.node, peer, &message)
            .await
            .map_err(|source| TrustRequestError::NotDelivered { peer, source })
    }

    /// Tries again to tell requesters that could not be reached when their request was
    /// answered; an answer stays queued (in the home) until it is delivered.
    async fn tell_untold(&self) {
        for (peer, approved) in self.book.read(RequestBook::untold) {
            let told = match self.tell_answer(peer, approved).await {
                Ok(()) => true,
                // It answered, but had no request to us (any more): nothing left to tell.
                Err(TrustRequestError::NotDelivered {
                    source: SendError::Refused { .. },
                    ..
                }) => true,
                Err(_) => false,
            };
            if told {
                tracing::info!(%peer, approved, "told a requester the answer to its trust request");
                let _ = self.book.update(|book| book.take_untold(peer));
            }
        }
    }

    /// One message on the trust request port from a verified peer.
    fn on_message(&self, peer: Address, message: Message) -> Answer {
        let refused = |e: &dyn std::fmt::Display| Answer::Refused(e.to_string());
        match message {
            Message::Request(request) => {
                let allowed = self
                    .limiter
                    .lock()
                    .expect("limiter lock")
                    .allow(tokio::time::Instant::now(), peer);
                if !allowed {
                    return Answer::Refused("too many trust requests; wait a minute".into());
                }
                if self.trust.contains(peer) {
                    return Answer::Accepted;
                }
                let (me, now) = (self.node.address(), self.node.unix_now());
                match self
                    .book
                    .update(|book| book.receive(&request, peer, me, now))
                {
                    Ok(Ok(new)) => {
                        if new {
                            tracing::info!(%peer, reason = ?request.reason, "trust request: answer with `ternctl trust approve {peer}` or `ternctl trust reject {peer}`");
                        }
                        Answer::Accepted
                    }
                    Ok(Err(e)) => refused(&e),
                    Err(e) => refused(&e),
                }
            }
            Message::Approved | Message::Rejected => {
                match self.book.update(|book| book.end_outgoing(peer)) {
                    Ok(true) => {}
                    Ok(false) => {
                        return Answer::Refused("this node sent you no trust request".into());
                    }
                    Err(e) => return refused(&e),
                }
                if matches!(message, Message::Rejected) {
                    tracing::warn!(%peer, "trust request rejected");
                    return Answer::Accepted;
                }
                match self.trust.set(peer, true) {
                    Ok(_) => {
                        tracing::info!(%peer, "trust request approved; trusting it in return");
                        Answer::Accepted
                    }
                    Err(e) => refused(&e),
                }
            }
        }
    }
}

/// How long answering a request waits to tell the requester before queueing the news.
pub const TELL_WAIT: Duration = Duration::from_secs(3);
/// How often answers that could not be delivered are tried again.
pub const RETELL_INTERVAL: Duration = Duration::from_secs(5);

/// Retries undelivered answers every [`RETELL_INTERVAL`] while the service lives.
async fn retell(service: Weak<TrustRequests>) {
    loop {
        tokio::time::sleep(RETELL_INTERVAL).await;
        let Some(s) = service.upgrade() else { return };
        s.tell_untold().await;
    }
}

/// Answers trust request messages on their port until the node shuts down.
async fn serve(service: Weak<TrustRequests>, mut listener: Listener) {
    while let Some(mut stream) = listener.accept().await {
        let Some(node) = service.upgrade().map(|s| s.node.clone()) else {
            return;
        };
        let service = service.clone();
        node.spawn(async move {
            let read = tokio::time::timeout(
                Duration::from_secs(10),
                stream.recv.read_to_end(trust_request::MAX_MESSAGE_LEN),
            )
            .await;
            let answer = match read {
                Ok(Ok(bytes)) => match Message::decode(&bytes) {
                    Ok(message) => match service.upgrade() {
                        Some(s) => s.on_message(stream.peer, message),
                        None => return,
                    },
                    Err(e) => Answer::Refused(e.to_string()),
                },
                _ => return,
            };
            if let Answer::Refused(reason) = &answer {
                tracing::info!(peer = %stream.peer, %reason, "trust request message refused");
                if let Some(s) = service.upgrade() {
                    s.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = stream.send.write_all(&answer.encode()).await;
            let _ = stream.send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(10), stream.send.stopped()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::SecretIdentity;

    #[test]
    fn requests_are_checked_deduplicated_and_bounded() {
        let asker = SecretIdentity::from_seed([51; 32]);
        let me = SecretIdentity::from_seed([52; 32]).address();
        let peer = asker.address();
        let request = |reason: &str, sent| SignedRequest::sign(&asker, me, sent, reason).unwrap();
        let mut book = RequestBook::default();
        assert_eq!(book.receive(&request("hi", 1000), peer, me, 1000), Ok(true));
        assert_eq!(
            book.receive(&request("hi", 1001), peer, me, 1001),
            Ok(false)
        );
        assert_eq!(
            book.receive(&request("again", 1002), peer, me, 1002),
            Ok(true)
        );
        assert_eq!(book.pending(peer).unwrap().reason, "again");
        assert_eq!(
            book.receive(&request("hi", 1000), peer, me, 5000),
            Err(RequestRefusal::Stale)
        );
        let other = Address::from_bytes([9; 6]);
        assert!(matches!(
            book.receive(&request("hi", 1000), other, me, 1000),
            Err(RequestRefusal::WrongSender { .. })
        ));
        assert!(matches!(
            book.receive(&request("hi", 1000), peer, other, 1000),
            Err(RequestRefusal::WrongAddressee(_))
        ));
        assert_eq!(book.pending_list(1002).len(), 1);
        assert_eq!(book.take_pending(peer).unwrap().reason, "again");
        assert!(book.pending(peer).is_none());
    }

    #[test]
    fn a_full_inbox_drops_its_oldest_request_and_old_requests_expire() {
        let asker = SecretIdentity::from_seed([53; 32]);
        let me = SecretIdentity::from_seed([54; 32]).address();
        let now = 10 * PENDING_LIFETIME_SECS;
        let filler = |n: usize| {
            let mut bytes = [0u8; 6];
            bytes[..2].copy_from_slice(&(n as u16).to_be_bytes());
            Address::from_bytes(bytes)
        };
        let mut book = RequestBook::default();
        for n in 0..MAX_PENDING {
            let pending = Pending {
                request: String::new(),
                received: now - 100 + n as u64 % 50,
            };
            book.pending.insert(filler(n), pending);
        }
        let request = SignedRequest::sign(&asker, me, now, "let me in").unwrap();
        assert_eq!(book.receive(&request, asker.address(), me, now), Ok(true));
        assert_eq!(book.pending.len(), MAX_PENDING);
        assert!(!book.pending.contains_key(&filler(0)), "the oldest went");
        assert_eq!(book.pending_list(now).len(), 1, "the fillers are damaged");
        // Unanswered for longer than the lifetime: gone from the list, and from the book on
        // the next request.
        assert!(book.pending_list(now + PENDING_LIFETIME_SECS).is_empty());
        let later = now + PENDING_LIFETIME_SECS + 1;
        let other = SecretIdentity::from_seed([55; 32]);
        let request = SignedRequest::sign(&other, me, later, "me too").unwrap();
        assert_eq!(book.receive(&request, other.address(), me, later), Ok(true));
        assert_eq!(book.pending.len(), 1);
    }

    #[test]
    fn answers_count_only_for_requests_we_sent() {
        let mut book = RequestBook::default();
        let peer = Address::from_bytes([3; 6]);
        assert!(!book.end_outgoing(peer));
        book.add_outgoing(peer, 10);
        assert!(book.has_outgoing(peer));
        assert!(book.end_outgoing(peer));
        assert!(!book.has_outgoing(peer));
    }
}
