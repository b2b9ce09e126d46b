//! The trust list: which peers may open streams to this node's private ports. One-sided,
//! persisted in the home as `trust.json`, applied to the node at once.

use std::collections::BTreeSet;
use tern_proto::Address;

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
