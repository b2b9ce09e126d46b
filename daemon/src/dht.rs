//! The Mainline DHT (BEP 44 mutable items): this node's announcement published under its own
//! key and under its address's index key (`tern_proto::dht`), kept fresh; and peers resolved
//! through it, every value verified as a rendezvous answer is. The DHT runs its own thread and
//! socket (the `mainline` crate's), started through the env.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use mainline::async_dht::AsyncDht;
use mainline::{MutableItem, SigningKey};
use serde_json::{Value, json};
use tern_proto::Address;
use tern_proto::dht::{
    ADDRESS_SALT, Announcement, MAX_RENDEZVOUS, RECORD_SALT, Reachable, address_index_seed,
};

use crate::discovery::next_before;
use crate::node::Node;
use crate::rendezvous::RendezvousClient;

/// How long a record published in the DHT stays valid: longer than at a rendezvous, since a
/// DHT put is slow and costs the network; a node republishes at once when it moves.
pub const DHT_RECORD_LIFETIME: Duration = Duration::from_secs(3600);
/// Republished this often even when nothing changed (well within the lifetime).
const REPUBLISH: Duration = Duration::from_secs(1200);
/// After the first verified answer to a look-up, how long later answers may bring a newer one.
const ANSWERS_GRACE: Duration = Duration::from_millis(250);
/// How often the node looks whether its endpoints or rendezvous servers changed.
const WATCH: Duration = Duration::from_secs(2);

/// The DHT as `ternd --dht` runs it.
#[derive(Debug, Clone, Default)]
pub struct DhtSettings {
    /// `HOST:PORT` of each bootstrap node; empty: the public Mainline bootstrap nodes.
    pub bootstrap: Vec<String>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct DhtState {
    /// Where the DHT's socket listens.
    listen: Option<String>,
    /// Nodes in the routing table, as of the last look (every [`WATCH`]).
    routing_table: usize,
    /// The crate's estimate of the whole DHT's size.
    size_estimate: usize,
    /// Unix seconds of the last publish that at least one DHT node stored.
    last_publish: Option<u64>,
    /// DHT nodes that stored the last publish (own key, address index).
    stored_by: Option<(usize, usize)>,
    last_error: Option<String>,
    /// Values refused on look-ups: malformed, forged, another node's, or expired.
    refused: u64,
    resolved: u64,
}

pub struct Dht {
    node: Node,
    dht: AsyncDht,
    state: Mutex<DhtState>,
}

impl Dht {
    /// Joins the DHT on this node's listen IP (IPv4; any other listens on all interfaces).
    pub fn start(node: Node, settings: &DhtSettings) -> std::io::Result<Arc<Self>> {
        let bind = match node.local_addr().ip() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
        };
        let dht = node.env().start_dht(bind, &settings.bootstrap)?;
        Ok(Arc::new(Self {
            node,
            dht,
            state: Mutex::default(),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, DhtState> {
        self.state.lock().expect("dht state lock")
    }

    /// This node's announcement as of now: its record, valid for [`DHT_RECORD_LIFETIME`],
    /// and the rendezvous servers it is reached through (at most [`MAX_RENDEZVOUS`] kept).
    pub fn announcement(
        &self,
        rendezvous: &RendezvousClient,
        through: &[Reachable],
    ) -> Announcement {
        let record = rendezvous.own_record_lasting(true, DHT_RECORD_LIFETIME);
        let through = &through[..through.len().min(MAX_RENDEZVOUS)];
        Announcement::sign(self.node.secret_identity(), record, through)
            .expect("rendezvous servers are truncated to the maximum")
    }

    /// Puts `announcement` under this node's key and under its address index; fails only
    /// when no DHT node stored either.
    pub async fn publish(&self, announcement: &Announcement) -> Result<(), String> {
        let seq = i64::try_from(announcement.record.seq).unwrap_or(i64::MAX);
        let own = SigningKey::from_bytes(&self.node.secret_identity().signing_key().to_bytes());
        let index = SigningKey::from_bytes(&address_index_seed(self.node.address()));
        let value = announcement.as_bytes();
        let (by_key, by_address) = tokio::join!(
            self.dht
                .put_mutable(MutableItem::new(own, value, seq, Some(RECORD_SALT)), None),
            self.dht.put_mutable(
                MutableItem::new(index, value, seq, Some(ADDRESS_SALT)),
                None
            ),
        );
        let mut state = self.state();
        match (&by_key, &by_address) {
            (Err(a), Err(b)) => {
                let error = format!("publishing in the DHT failed: {a}; {b}");
                state.last_error = Some(error.clone());
                Err(error)
            }
            _ => {
                let stored = |put: &Result<mainline::PutOutcome, _>| {
                    put.as_ref().map_or(0, |outcome| outcome.stored_at as usize)
                };
                state.last_publish = Some(self.node.unix_now());
                state.stored_by = Some((stored(&by_key), stored(&by_address)));
                state.last_error = match (by_key, by_address) {
                    (Err(e), _) | (_, Err(e)) => Some(format!("partly published: {e}")),
                    _ => None,
                };
                Ok(())
            }
        }
    }

    /// `target`'s newest live announcement at its address index, if one verifies.
    pub async fn find(&self, target: Address) -> Option<Announcement> {
        let index = SigningKey::from_bytes(&address_index_seed(target));
        let key = index.verifying_key().to_bytes();
        self.newest(&key, ADDRESS_SALT, |a| a.record.address() == target)
            .await
    }

    /// The newest live announcement that `key` published itself (a pinned peer's key).
    pub async fn find_key(&self, key: [u8; 32]) -> Option<Announcement> {
        self.newest(&key, RECORD_SALT, |a| a.record.identity.key_bytes() == key)
            .await
    }

    /// Reads the values the DHT holds at (`key`, `salt`) and keeps the newest that decodes,
    /// verifies, is `wanted`, and has not expired; the rest are refused and counted. Once one
    /// verifies, the others get [`ANSWERS_GRACE`] to bring a newer one (a query runs on until
    /// its slowest node times out, seconds later).
    async fn newest(
        &self,
        key: &[u8; 32],
        salt: &[u8],
        wanted: impl Fn(&Announcement) -> bool,
    ) -> Option<Announcement> {
        let mut items = self.dht.get_mutable(key, Some(salt), None);
        let mut seen = HashSet::new();
        let mut best: Option<Announcement> = None;
        let mut until = None;
        while let Some(item) = next_before(&mut items, until).await {
            if !seen.insert(item.value().to_vec()) {
                continue;
            }
            let now = self.node.unix_now();
            match Announcement::decode(item.value()) {
                Ok(a) if wanted(&a) && a.record.is_live(now) => {
                    until.get_or_insert(tokio::time::Instant::now() + ANSWERS_GRACE);
                    if best.as_ref().is_none_or(|b| a.record.seq > b.record.seq) {
                        best = Some(a);
                    }
                }
                refused => {
                    let why = match refused {
                        Ok(a) if !wanted(&a) => {
                            format!("another node's record ({})", a.record.address())
                        }
                        Ok(_) => "an expired record".to_string(),
                        Err(e) => e.to_string(),
                    };
                    tracing::warn!(key = %hex::encode(key), "DHT value refused: {why}");
                    self.state().refused += 1;
                }
            }
        }
        if best.is_some() {
            self.state().resolved += 1;
        }
        best
    }

    /// What `status` shows: the routing table, the last publish, the last error, and the
    /// counts of values resolved and refused.
    pub fn status(&self) -> Value {
        let state = self.state().clone();
        json!({
            "listen": state.listen,
            "routing_table": state.routing_table,
            "size_estimate": state.size_estimate,
            "last_publish": state.last_publish,
            "stored_by": state.stored_by.map(|(key, address)| json!({"own_key": key, "address_index": address})),
            "last_error": state.last_error,
            "resolved": state.resolved,
            "refused": state.refused,
        })
    }

    /// Takes a fresh look at the routing table for `status`.
    async fn look(&self) {
        let info = self.dht.info().await;
        let routing_table = self.dht.to_bootstrap().await.len();
        let mut state = self.state();
        state.listen = Some(info.local_addr().to_string());
        state.routing_table = routing_table;
        state.size_estimate = info.dht_size_estimate().0;
    }
}

/// Publishes this node's announcement once the DHT is bootstrapped, again whenever its
/// endpoints or rendezvous servers change, and every [`REPUBLISH`]; until the node goes.
pub async fn keep_published(dht: Weak<Dht>, rendezvous: Weak<RendezvousClient>) {
    let Some(d) = dht.upgrade() else { return };
    d.look().await;
    let bootstrapped = d.dht.bootstrapped().await;
    if !bootstrapped {
        d.state().last_error = Some(
            "no DHT node answered: check --dht-bootstrap (or the network, for the public DHT)"
                .into(),
        );
    }
    drop(d);
    let mut published: Option<(Vec<std::net::SocketAddr>, Vec<Reachable>)> = None;
    let mut due = tokio::time::Instant::now();
    loop {
        let (Some(d), Some(r)) = (dht.upgrade(), rendezvous.upgrade()) else {
            return;
        };
        d.look().await;
        let now_view = (r.endpoints(), r.reachable_through());
        let now = tokio::time::Instant::now();
        if published.as_ref() != Some(&now_view) || now >= due {
            let signed = d.announcement(&r, &now_view.1);
            due = match d.publish(&signed).await {
                Ok(()) => {
                    tracing::info!(endpoints = ?now_view.0, "published in the DHT");
                    now + REPUBLISH
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    now + WATCH * 5
                }
            };
            published = Some(now_view);
        }
        drop((d, r));
        tokio::time::sleep(WATCH).await;
    }
}
