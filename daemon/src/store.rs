//! Small JSON documents in the home (trust list, names, trust requests): a missing file is
//! an empty document, a damaged one is an error naming it (and is left alone), and every
//! change is written atomically and saved before it is reported as done.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged ({detail}); fix or remove it")]
    Corrupt { path: PathBuf, detail: String },
    #[error("cannot save {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct JsonFile<T> {
    path: PathBuf,
    value: T,
}

impl<T: Serialize + DeserializeOwned + Default + Clone> JsonFile<T> {
    pub fn load(path: PathBuf) -> Result<Self, StoreError> {
        let value = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => T::default(),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        Ok(Self { path, value })
    }

    pub fn get(&self) -> &T {
        &self.value
    }

    /// Applies `change` and saves; on a failed save, memory keeps the old document too.
    pub fn update<R>(&mut self, change: impl FnOnce(&mut T) -> R) -> Result<R, StoreError> {
        let mut next = self.value.clone();
        let result = change(&mut next);
        self.save(&next)?;
        self.value = next;
        Ok(result)
    }

    fn save(&self, value: &T) -> Result<(), StoreError> {
        let body = serde_json::to_vec_pretty(value).expect("home documents serialise");
        write_atomically(&self.path, &body).map_err(|source| StoreError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// Replaces `path` with `bytes` so that a crash at any point leaves either the old or the new
/// file, never a torn one: a private (0600) temp file, synced, renamed over `path`, and the
/// directory synced so the rename itself survives a power cut.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn changes_persist_and_a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.json");
        let mut doc = JsonFile::<BTreeSet<u32>>::load(path.clone()).unwrap();
        assert!(doc.update(|set| set.insert(7)).unwrap());
        assert!(
            JsonFile::<BTreeSet<u32>>::load(path.clone())
                .unwrap()
                .get()
                .contains(&7)
        );
        std::fs::write(&path, b"[\"nope\"]").unwrap();
        let e = JsonFile::<BTreeSet<u32>>::load(path.clone()).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        write_atomically(&path, b"[]").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "home documents are private");
    }
}
