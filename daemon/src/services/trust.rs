//! The trust list: which peers may open streams to this node's private ports. One-sided,
//! persisted in the home as `trust.json`, applied to the node at once.

use std::collections::BTreeSet;

use tern_proto::Address;

use crate::node::Node;
use crate::store::{Document, StoreError};

pub const TRUST_FILE: &str = "trust.json";

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TrustList {
    pub trusted: BTreeSet<Address>,
}

impl TrustList {
    /// Trusts or stops trusting `peer`; false if nothing changed.
    pub fn set(&mut self, peer: Address, trusted: bool) -> bool {
        if trusted {
            self.trusted.insert(peer)
        } else {
            self.trusted.remove(&peer)
        }
    }
}

/// The trust list as saved in the home and applied to the node.
pub struct Trust {
    node: Node,
    list: Document<TrustList>,
}

impl Trust {
    /// Applies the saved list to `node`.
    pub fn new(node: Node, list: Document<TrustList>) -> Self {
        list.read(|list| node.set_trusted(list.trusted.iter().copied()));
        Self { node, list }
    }

    /// Trusts or stops trusting `peer`, saved and applied at once; false if unchanged.
    pub fn set(&self, peer: Address, trusted: bool) -> Result<bool, StoreError> {
        self.list.update_then(
            |list| list.set(peer, trusted),
            |list| self.node.set_trusted(list.trusted.iter().copied()),
        )
    }

    pub fn contains(&self, peer: Address) -> bool {
        self.list.read(|list| list.trusted.contains(&peer))
    }

    pub fn list(&self) -> Vec<Address> {
        self.list
            .read(|list| list.trusted.iter().copied().collect())
    }
}
