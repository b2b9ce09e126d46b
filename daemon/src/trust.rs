//! The trust list: which peers may open streams to this node's private ports. One-sided,
//! persisted in the home as `trust.json` (written atomically), applied to the node at once.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use tern_proto::Address;

pub const TRUST_FILE: &str = "trust.json";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read the trust list {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the trust list {path} is damaged ({detail}); fix or remove it")]
    Corrupt { path: PathBuf, detail: String },
    #[error("cannot save the trust list {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct TrustFile {
    trusted: BTreeSet<Address>,
}

/// The persisted list. Changes are saved before they are reported as done.
#[derive(Debug)]
pub struct TrustStore {
    path: PathBuf,
    trusted: BTreeSet<Address>,
}

impl TrustStore {
    pub fn load(path: PathBuf) -> Result<Self, TrustError> {
        let trusted = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<TrustFile>(&bytes)
                    .map_err(|e| TrustError::Corrupt {
                        path: path.clone(),
                        detail: e.to_string(),
                    })?
                    .trusted
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(source) => return Err(TrustError::Read { path, source }),
        };
        Ok(Self { path, trusted })
    }

    pub fn trusted(&self) -> &BTreeSet<Address> {
        &self.trusted
    }

    /// Trusts or stops trusting `peer`, saved before it returns; false if nothing changed.
    pub fn set(&mut self, peer: Address, trusted: bool) -> Result<bool, TrustError> {
        let changed = if trusted {
            self.trusted.insert(peer)
        } else {
            self.trusted.remove(&peer)
        };
        if changed && let Err(e) = self.save() {
            // Keep memory and file in agreement.
            if trusted {
                self.trusted.remove(&peer);
            } else {
                self.trusted.insert(peer);
            }
            return Err(e);
        }
        Ok(changed)
    }

    fn save(&self) -> Result<(), TrustError> {
        let write_err = |source| TrustError::Write {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&TrustFile {
            trusted: self.trusted.clone(),
        })
        .expect("a set of addresses serialises");
        let mut file = std::fs::File::create(&tmp).map_err(write_err)?;
        file.write_all(&body).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        std::fs::rename(&tmp, &self.path).map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_persist_and_a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TRUST_FILE);
        let peer: Address = "a1b2:c3d4:e5f6".parse().unwrap();
        let mut store = TrustStore::load(path.clone()).unwrap();
        assert!(store.set(peer, true).unwrap());
        assert!(!store.set(peer, true).unwrap());
        assert!(
            TrustStore::load(path.clone())
                .unwrap()
                .trusted()
                .contains(&peer)
        );
        assert!(store.set(peer, false).unwrap());
        assert!(TrustStore::load(path.clone()).unwrap().trusted().is_empty());
        std::fs::write(&path, b"{\"trusted\": [\"nope\"]}").unwrap();
        assert!(matches!(
            TrustStore::load(path),
            Err(TrustError::Corrupt { .. })
        ));
    }
}
