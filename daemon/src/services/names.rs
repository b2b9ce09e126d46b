//! Names as this node sees them, persisted in the home as `names.json`: its own name, the
//! operator's aliases (checked before any rendezvous) and the pinned name → key bindings.
//! The first key a name is seen with is pinned; a later different key for that name is
//! refused until the operator forgets the pin, so no rendezvous can redirect a name.
//!
//! [`Names`] uses them: resolving a TARGET, `find`, claiming this node's name (through the
//! rendezvous client), aliases and pins.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tern_proto::record::Record;
use tern_proto::{Address, Name, Target, TargetError};

use crate::discovery::{Discovery, FindError, Found, Via};
use crate::node::Node;
use crate::rendezvous::RendezvousClient;
use crate::rendezvous::client::{NameConflict, NameHeld, NameLookupError};
use crate::store::{Document, StoreError};

pub const NAMES_FILE: &str = "names.json";

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct NameBook {
    /// This node's own name (`ternd --hostname`, `ternctl name set`).
    #[serde(default)]
    pub own: Option<Name>,
    #[serde(default)]
    pub aliases: BTreeMap<Name, Address>,
    #[serde(default)]
    pub pinned: BTreeMap<Name, Pin>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pin {
    pub address: Address,
    /// The Ed25519 key in hex: what is compared (the address is its 48-bit hash).
    pub public_key: String,
    /// Unix seconds when it was pinned.
    pub since: u64,
}

/// A name came back with a key other than the pinned one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the name {name} is pinned to {pinned}, but the rendezvous now answers with {offered}, \
     another key. If {name} really moved to a new key, accept the change with \
     `ternctl name forget {name}` and try again"
)]
pub struct PinMismatch {
    pub name: Name,
    pub pinned: Address,
    pub offered: Address,
}

impl NameBook {
    /// Checks `record` (found for `name`) against the pin. `Ok(Some(pin))`: not pinned yet,
    /// pin this; `Ok(None)`: matches the pin.
    pub fn check_pin(
        &self,
        name: &Name,
        record: &Record,
        now_unix: u64,
    ) -> Result<Option<Pin>, PinMismatch> {
        let public_key = hex::encode(record.identity.key_bytes());
        match self.pinned.get(name) {
            Some(pin) if pin.public_key == public_key => Ok(None),
            Some(pin) => Err(PinMismatch {
                name: name.clone(),
                pinned: pin.address,
                offered: record.address(),
            }),
            None => Ok(Some(Pin {
                address: record.address(),
                public_key,
                since: now_unix,
            })),
        }
    }
}

/// Why a name or TARGET could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error(transparent)]
    BadTarget(#[from] TargetError),
    #[error(
        "no node holds the name {0} at this node or its rendezvous servers: check the spelling, \
         that the node runs with --hostname {0}, and that both use the same rendezvous"
    )]
    NotFound(Name),
    #[error("cannot look the name {0} up: {1}")]
    Unresolved(Name, String),
    #[error(transparent)]
    Pinned(#[from] PinMismatch),
    #[error(transparent)]
    Conflict(#[from] NameConflict),
    #[error(transparent)]
    Held(#[from] NameHeld),
    #[error("no alias {0}; `ternctl alias list` shows them")]
    NoAlias(Name),
    #[error(transparent)]
    Find(#[from] FindError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// This node's names: its own, claimed through the rendezvous client; the operator's
/// aliases; and the pins that keep every name on the key it was first seen with.
pub struct Names {
    node: Node,
    rendezvous: Arc<RendezvousClient>,
    discovery: Arc<Discovery>,
    book: Document<NameBook>,
}

impl Names {
    pub fn new(
        node: Node,
        rendezvous: Arc<RendezvousClient>,
        discovery: Arc<Discovery>,
        book: Document<NameBook>,
    ) -> Self {
        Self {
            node,
            rendezvous,
            discovery,
            book,
        }
    }

    /// The address a TARGET names: an address as it is; a name through the operator's
    /// aliases, then the key pinned for it, then the rendezvous servers (see
    /// [`Names::find_name`]).
    pub async fn resolve(&self, target: &str) -> Result<Address, NameError> {
        match target.parse::<Target>()? {
            Target::Address(address) => Ok(address),
            Target::Name(name) => match self.alias(&name) {
                Some(address) => Ok(address),
                None => Ok(self.find_name(&name).await?.0.record.address()),
            },
        }
    }

    /// What `ternctl find` shows: the target's verified record, where it came from (`via`:
    /// "rendezvous" or "dht") and how the TARGET was resolved (`resolved`: address, alias,
    /// pinned or name).
    pub async fn find_target(&self, target: &str) -> Result<Value, NameError> {
        let parsed = target.parse::<Target>()?;
        let (Found { record, via }, resolved) = match &parsed {
            Target::Address(address) => (self.discovery.find(*address).await?, "address"),
            Target::Name(name) => match self.alias(name) {
                Some(address) => (self.discovery.find(address).await?, "alias"),
                None => self.find_name(name).await?,
            },
        };
        Ok(json!({
            "target": target,
            "address": record.address(),
            "public_key": hex::encode(record.identity.key_bytes()),
            "name": record.name,
            "endpoints": record.endpoints,
            "expires": record.expires,
            "via": via.label(),
            "resolved": resolved,
        }))
    }

    fn alias(&self, name: &Name) -> Option<Address> {
        self.book.read(|book| book.aliases.get(name).copied())
    }

    /// The live record for `name` and how it was found: through the key pinned for it
    /// ("pinned": at the rendezvous servers, else in the DHT under that key), else the record
    /// holding the name at this node's rendezvous servers ("name"), checked against (or else
    /// pinned as) the key this node saw for it first. The pinned key comes first, so no
    /// rendezvous can move a name once it was seen.
    async fn find_name(&self, name: &Name) -> Result<(Found, &'static str), NameError> {
        if let Some(pin) = self.book.read(|book| book.pinned.get(name).cloned()) {
            let key = hex::decode(&pin.public_key)
                .ok()
                .and_then(|k| <[u8; 32]>::try_from(k).ok());
            if let Some(key) = key {
                match self.discovery.find_pinned(pin.address, key).await {
                    Ok(found)
                        if found.record.identity.key_bytes() == key
                            && found.record.name.as_ref() == Some(name) =>
                    {
                        return Ok((found, "pinned"));
                    }
                    // Gone, unreachable, or it gave the name up: the name's holder now tells
                    // whether it moved (a pin mismatch) or not.
                    Ok(_) | Err(_) => {}
                }
            }
        }
        let (record, server) = match self.rendezvous.find_name(name).await {
            Ok(Some(found)) => found,
            Ok(None) => return Err(NameError::NotFound(name.clone())),
            Err(NameLookupError::Conflict(conflict)) => return Err(conflict.into()),
            Err(NameLookupError::Unanswered(detail)) => {
                return Err(NameError::Unresolved(name.clone(), detail));
            }
        };
        let now = self.node.unix_now();
        if let Some(pin) = self.book.read(|book| book.check_pin(name, &record, now))? {
            let address = pin.address;
            self.book.update(|book| {
                book.pinned.entry(name.clone()).or_insert(pin);
            })?;
            // Another look-up may have pinned another key meanwhile: the first pin stands.
            self.book.read(|book| book.check_pin(name, &record, now))?;
            tracing::info!(%name, %address, "name pinned");
        }
        let via = server.map_or(Via::Registry, Via::Rendezvous);
        Ok((Found { record, via }, "name"))
    }

    pub fn own(&self) -> Option<Name> {
        self.book.read(|book| book.own.clone())
    }

    /// Claims `name` (or, with None, drops this node's name) at once: saved in the home and
    /// registered with every rendezvous. A name another key holds is refused and the old
    /// name kept.
    pub async fn set_name(&self, name: Option<Name>) -> Result<Value, NameError> {
        let previous = self.own();
        self.book.update(|book| book.own = name.clone())?;
        match self.rendezvous.claim(name.clone()).await {
            Ok(pending) => Ok(
                json!({ "name": name, "address": self.node.address(), "not_registered": pending }),
            ),
            Err(held) => {
                self.book.update(|book| book.own = previous)?;
                Err(held.into())
            }
        }
    }

    /// Forgets the key pinned for `name`: the next lookup pins whatever key it finds.
    pub fn forget_name(&self, name: &Name) -> Result<Option<Address>, NameError> {
        let pin = self.book.update(|book| book.pinned.remove(name))?;
        Ok(pin.map(|p| p.address))
    }

    pub fn set_alias(
        &self,
        name: Name,
        address: Option<Address>,
    ) -> Result<Option<Address>, NameError> {
        let previous = self.book.update(|book| match address {
            Some(address) => book.aliases.insert(name.clone(), address),
            None => book.aliases.remove(&name),
        })?;
        if address.is_none() && previous.is_none() {
            return Err(NameError::NoAlias(name));
        }
        Ok(previous)
    }

    pub fn list(&self) -> Value {
        self.book
            .read(|book| json!({ "own": book.own, "aliases": book.aliases, "pinned": book.pinned }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::SecretIdentity;

    #[test]
    fn the_first_key_is_pinned_and_another_is_refused_naming_both() {
        let alpha: Name = "alpha".parse().unwrap();
        let (a, b) = (
            SecretIdentity::from_seed([41; 32]),
            SecretIdentity::from_seed([42; 32]),
        );
        let record = |id: &SecretIdentity| Record::sign(id, &[], Some(&alpha), 1, 9).unwrap();
        let mut book = NameBook::default();
        let pin = book.check_pin(&alpha, &record(&a), 5).unwrap().unwrap();
        assert_eq!(pin.address, a.address());
        book.pinned.insert(alpha.clone(), pin);
        assert_eq!(book.check_pin(&alpha, &record(&a), 6), Ok(None));
        let e = book.check_pin(&alpha, &record(&b), 6).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&a.address().to_string()) && text.contains(&b.address().to_string()));
        assert!(text.contains("ternctl name forget alpha"));
    }
}
