//! Names as this node sees them, persisted in the home as `names.json`: its own name, the
//! operator's aliases (checked before any rendezvous) and the pinned name → key bindings.
//! The first key a name is seen with is pinned; a later different key for that name is
//! refused until the operator forgets the pin, so no rendezvous can redirect a name.

use std::collections::BTreeMap;

use tern_proto::record::Record;
use tern_proto::{Address, Name};

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
