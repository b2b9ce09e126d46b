//! Names as this node sees them, persisted in the home as `names.json`: its own name, the
//! operator's aliases (checked before any rendezvous) and the pinned name → key bindings.
//! The first key a name is seen with is pinned; a later different key for that name is
//! refused until the operator forgets the pin, so no rendezvous can redirect a name.
//!
//! The daemon's side of names lives here too: resolving a TARGET, `find`, claiming this
//! node's name at its rendezvous servers, aliases and pins.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tern_proto::record::Record;
use tern_proto::{Address, Name, Target};

use crate::daemon::{Daemon, DaemonError};
use crate::rendezvous::{self, RegisterError, RendezvousError};

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

impl Daemon {
    /// The address a TARGET names: an address as it is; a name through the operator's
    /// aliases, then the key pinned for it, then the rendezvous servers (see
    /// [`Daemon::find_name`]).
    pub async fn resolve(&self, target: &str) -> Result<Address, DaemonError> {
        match target.parse::<Target>()? {
            Target::Address(address) => Ok(address),
            Target::Name(name) => match self.alias(&name) {
                Some(address) => Ok(address),
                None => Ok(self.find_name(&name).await?.0.address()),
            },
        }
    }

    /// What `ternctl find` shows: the target's verified record, where it came from (`via`:
    /// a rendezvous) and how the TARGET was resolved (`resolved`: address, alias, pinned or
    /// name).
    pub async fn find_target(&self, target: &str) -> Result<Value, DaemonError> {
        let parsed = target.parse::<Target>()?;
        let (record, resolved) = match &parsed {
            Target::Address(address) => (self.find(*address).await?.0, "address"),
            Target::Name(name) => match self.alias(name) {
                Some(address) => (self.find(address).await?.0, "alias"),
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
            "via": "rendezvous",
            "resolved": resolved,
        }))
    }

    fn pin(&self, name: &Name) -> Option<Pin> {
        let names = self.names.lock().expect("names lock");
        names.get().pinned.get(name).cloned()
    }

    fn alias(&self, name: &Name) -> Option<Address> {
        let names = self.names.lock().expect("names lock");
        names.get().aliases.get(name).copied()
    }

    /// The live record for `name` and how it was found: through the key pinned for it
    /// ("pinned"), else the record holding the name at this node's rendezvous servers
    /// ("name"), checked against (or else pinned as) the key this node saw for it first.
    /// The pinned key comes first, so no rendezvous can move a name once it was seen.
    async fn find_name(&self, name: &Name) -> Result<(Record, &'static str), DaemonError> {
        if let Some(pin) = self.pin(name) {
            match self.find(pin.address).await {
                Ok((record, _))
                    if hex::encode(record.identity.key_bytes()) == pin.public_key
                        && record.name.as_ref() == Some(name) =>
                {
                    return Ok((record, "pinned"));
                }
                // Gone, unreachable, or it gave the name up: the name's holder now tells
                // whether it moved (a pin mismatch) or not.
                Ok(_) | Err(_) => {}
            }
        }
        let own = self
            .resolves_through_own_registry()
            .then(|| {
                let registry = self.registry.lock().expect("registry lock");
                registry.lookup_name(self.node.unix_now(), name).cloned()
            })
            .flatten();
        let record = match own {
            Some(record) => record,
            None => match self
                .ask_servers(|server| rendezvous::lookup_name(&self.node, server, name))
                .await
            {
                Ok(Some((record, _))) => record,
                Ok(None) => return Err(DaemonError::NameNotFound(name.clone())),
                Err(detail) => return Err(DaemonError::NameUnresolved(name.clone(), detail)),
            },
        };
        let mut names = self.names.lock().expect("names lock");
        if let Some(pin) = names.get().check_pin(name, &record, self.node.unix_now())? {
            tracing::info!(%name, address = %pin.address, "name pinned");
            names.update(|book| book.pinned.insert(name.clone(), pin))?;
        }
        Ok((record, "name"))
    }

    /// Claims `name` (or, with None, drops this node's name) at once: saved in the home and
    /// registered with every rendezvous. A name another key holds is refused and the old
    /// name kept.
    pub async fn set_name(&self, name: Option<Name>) -> Result<Value, DaemonError> {
        let previous = self.own_name();
        self.names
            .lock()
            .expect("names lock")
            .update(|book| book.own = name.clone())?;
        let mut taken = match self.register_with_self() {
            Err(RegisterError::NameTaken { name, holder }) => {
                Some((name, holder, "this node".to_string()))
            }
            _ => None,
        };
        let mut pending = Vec::new();
        let servers: Vec<String> = self
            .servers
            .lock()
            .expect("server state lock")
            .iter()
            .map(|s| s.server.clone())
            .collect();
        for spec in servers {
            if taken.is_some() {
                break;
            }
            let server = match self.reach_server(&spec).await {
                Ok(server) => server,
                Err(e) => {
                    pending.push(format!("rendezvous {spec}: {e}"));
                    continue;
                }
            };
            match rendezvous::register(&self.node, server, self.own_record(true)).await {
                Ok(_) => {}
                Err(RendezvousError::NameTaken { name, holder }) => {
                    taken = Some((name, holder, spec))
                }
                Err(e) => pending.push(format!("rendezvous {spec}: {e}")),
            }
        }
        if let Some((name, holder, server)) = taken {
            self.names
                .lock()
                .expect("names lock")
                .update(|book| book.own = previous)?;
            let _ = self.register_with_self();
            return Err(DaemonError::NameTaken {
                name,
                holder,
                server,
            });
        }
        Ok(json!({ "name": name, "address": self.node.address(), "not_registered": pending }))
    }

    /// Forgets the key pinned for `name`: the next lookup pins whatever key it finds.
    pub fn forget_name(&self, name: &Name) -> Result<Option<Address>, DaemonError> {
        let mut names = self.names.lock().expect("names lock");
        let pin = names.update(|book| book.pinned.remove(name))?;
        Ok(pin.map(|p| p.address))
    }

    pub fn set_alias(
        &self,
        name: Name,
        address: Option<Address>,
    ) -> Result<Option<Address>, DaemonError> {
        let mut names = self.names.lock().expect("names lock");
        let previous = names.update(|book| match address {
            Some(address) => book.aliases.insert(name.clone(), address),
            None => book.aliases.remove(&name),
        })?;
        if address.is_none() && previous.is_none() {
            return Err(DaemonError::NoAlias(name));
        }
        Ok(previous)
    }

    pub fn names(&self) -> Value {
        let names = self.names.lock().expect("names lock");
        let book = names.get();
        json!({ "own": book.own, "aliases": book.aliases, "pinned": book.pinned })
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
