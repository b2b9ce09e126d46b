//! Finding a peer's record: through this node's rendezvous servers (and its own registry),
//! then the Mainline DHT, in the order the config gives. Every answer is verified before it
//! gets here: signed by the key that derives the address asked for, and live.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

use tern_proto::Address;
use tern_proto::dht::Reachable;
use tern_proto::record::Record;

use crate::dht::Dht;
use crate::env::BoxFuture;
use crate::rendezvous::RendezvousClient;

/// A place records are looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Rendezvous,
    Dht,
}

/// How long a source has to answer before the next one is asked too.
const HEAD_START: Duration = Duration::from_secs(1);

/// The order sources are asked in unless the config says otherwise.
pub const DEFAULT_ORDER: [Source; 2] = [Source::Rendezvous, Source::Dht];

/// Where a record came from, and so who can introduce and relay us to its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// This node's own registry (it is the peer's rendezvous).
    Registry,
    /// One of this node's rendezvous servers, which the peer is registered with.
    Rendezvous(Address),
    /// The DHT, with the rendezvous servers the peer announced there.
    Dht(Vec<Reachable>),
}

impl Via {
    /// What `find --json` shows as `via`.
    pub fn label(&self) -> &'static str {
        match self {
            Via::Registry | Via::Rendezvous(_) => "rendezvous",
            Via::Dht(_) => "dht",
        }
    }
}

/// The next item of `stream`, unless `until` passes first (None then, as at its end): for
/// look-ups that give later answers a short while to improve on the first.
pub(crate) async fn next_before<S: futures_util::Stream + Unpin>(
    stream: &mut S,
    until: Option<Instant>,
) -> Option<S::Item> {
    match until {
        None => stream.next().await,
        Some(until) => tokio::time::timeout_at(until, stream.next())
            .await
            .ok()
            .flatten(),
    }
}

pub struct Found {
    pub record: Record,
    pub via: Via,
}

/// No record was found for a peer.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error(
        "no record of {0} at this node, its rendezvous servers or (when on) the DHT: is that \
         node running and registered with the same rendezvous, or publishing in the DHT?"
    )]
    NotFound(Address),
    #[error("could not reach {peer}: {detail}")]
    Unanswered { peer: Address, detail: String },
}

pub struct Discovery {
    rendezvous: Arc<RendezvousClient>,
    dht: Option<Arc<Dht>>,
    order: Vec<Source>,
}

impl Discovery {
    pub fn new(
        rendezvous: Arc<RendezvousClient>,
        dht: Option<Arc<Dht>>,
        order: Vec<Source>,
    ) -> Self {
        Self {
            rendezvous,
            dht,
            order,
        }
    }

    pub fn dht(&self) -> Option<&Arc<Dht>> {
        self.dht.as_ref()
    }

    /// `target`'s record, from the sources in order (see [`Discovery::find_in_order`]).
    pub async fn find(&self, target: Address) -> Result<Found, FindError> {
        self.find_in_order(target, None).await
    }

    /// Like [`Discovery::find`] for a peer whose key was pinned: in the DHT it is read from
    /// under that key, where no one else can write.
    pub async fn find_pinned(&self, target: Address, key: [u8; 32]) -> Result<Found, FindError> {
        self.find_in_order(target, Some(key)).await
    }

    /// Asks each source in order, giving each [`HEAD_START`] before the next is asked
    /// beside it (a rendezvous that is down takes seconds to time out); the first verified
    /// answer wins.
    async fn find_in_order(
        &self,
        target: Address,
        key: Option<[u8; 32]>,
    ) -> Result<Found, FindError> {
        let mut asking = FuturesUnordered::new();
        let mut sources = self.order.iter();
        let mut errors = Vec::new();
        loop {
            if asking.is_empty() {
                match sources.next() {
                    Some(&source) => asking.push(self.ask(source, target, key)),
                    None => break,
                }
            }
            let head_start_ends = (sources.len() > 0).then(|| Instant::now() + HEAD_START);
            match next_before(&mut asking, head_start_ends).await {
                Some(Ok(Some(found))) => return Ok(found),
                Some(Ok(None)) => {}
                Some(Err(detail)) => errors.push(detail),
                // The sources asked had their head start: the next one is asked beside them.
                None => {
                    if let Some(&source) = sources.next() {
                        asking.push(self.ask(source, target, key));
                    }
                }
            }
        }
        match errors.is_empty() {
            true => Err(FindError::NotFound(target)),
            false => Err(FindError::Unanswered {
                peer: target,
                detail: errors.join("; "),
            }),
        }
    }

    /// One source's verified answer, or why it could not say.
    fn ask(
        &self,
        source: Source,
        target: Address,
        key: Option<[u8; 32]>,
    ) -> BoxFuture<'_, Result<Option<Found>, String>> {
        Box::pin(async move {
            match source {
                Source::Rendezvous => {
                    Ok(self
                        .rendezvous
                        .find(target)
                        .await?
                        .map(|(record, server)| Found {
                            record,
                            via: server.map_or(Via::Registry, Via::Rendezvous),
                        }))
                }
                Source::Dht => {
                    let Some(dht) = &self.dht else {
                        return Ok(None);
                    };
                    let found = match key {
                        Some(key) => dht.find_key(key).await,
                        None => dht.find(target).await,
                    };
                    Ok(found
                        .filter(|a| a.record.address() == target)
                        .map(|a| Found {
                            record: a.record,
                            via: Via::Dht(a.rendezvous),
                        }))
                }
            }
        })
    }
}
