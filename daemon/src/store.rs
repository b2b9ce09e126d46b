//! Small JSON documents in the home (trust list, names, trust requests): a missing file is
//! an empty document, a damaged one is an error naming it (and is left alone), and every
//! change is written atomically and saved before it is reported as done.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::env::Env;

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

/// One document: readers see the last saved version and never wait for a save; changes are
/// saved one at a time, each before it is visible.
#[derive(Debug)]
pub struct Document<T> {
    env: Arc<dyn Env>,
    path: PathBuf,
    value: Mutex<T>,
    /// Held by the one change being saved, never by readers.
    saving: Mutex<()>,
}

impl<T: Serialize + DeserializeOwned + Default + Clone> Document<T> {
    pub fn load(env: &Arc<dyn Env>, path: PathBuf) -> Result<Self, StoreError> {
        let value = match env.read_file(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => T::default(),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        Ok(Self {
            env: env.clone(),
            path,
            value: Mutex::new(value),
            saving: Mutex::new(()),
        })
    }

    pub fn read<R>(&self, look: impl FnOnce(&T) -> R) -> R {
        look(&self.value.lock().expect("document lock"))
    }

    /// Applies `change` and saves; on a failed save, memory keeps the old document too.
    pub fn update<R>(&self, change: impl FnOnce(&mut T) -> R) -> Result<R, StoreError> {
        self.update_then(change, |_| {})
    }

    /// Like [`Document::update`], then hands the saved document to `applied` before any other
    /// change can be saved: what applies a document elsewhere applies them in order.
    pub fn update_then<R>(
        &self,
        change: impl FnOnce(&mut T) -> R,
        applied: impl FnOnce(&T),
    ) -> Result<R, StoreError> {
        let _saving = self.saving.lock().expect("document save lock");
        let mut next = self.read(T::clone);
        let result = change(&mut next);
        self.save(&next)?;
        applied(&next);
        *self.value.lock().expect("document lock") = next;
        Ok(result)
    }

    fn save(&self, value: &T) -> Result<(), StoreError> {
        let body = serde_json::to_vec_pretty(value).expect("home documents serialise");
        self.env
            .write_file(&self.path, &body)
            .map_err(|source| StoreError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::os::OsEnv;
    use std::collections::BTreeSet;

    #[test]
    fn changes_persist_and_a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.json");
        let env = OsEnv::shared();
        let doc = Document::<BTreeSet<u32>>::load(&env, path.clone()).unwrap();
        assert!(doc.update(|set| set.insert(7)).unwrap());
        assert!(
            Document::<BTreeSet<u32>>::load(&env, path.clone())
                .unwrap()
                .read(|set| set.contains(&7))
        );
        std::fs::write(&path, b"[\"nope\"]").unwrap();
        let e = Document::<BTreeSet<u32>>::load(&env, path.clone()).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        env.write_file(&path, b"[]").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "home documents are private");
    }
}
