//! A node's home directory: where its identity (and later trust list, pins, socket) live.
//!
//! `--home DIR`, else `$TERN_HOME`, else `~/.local/share/tern`. The identity is created once,
//! with mode 0600, written atomically and never over an existing file, and loaded unchanged on
//! every later start: a damaged key file is an error naming the file, never a new identity.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tern_proto::{KeyFileError, SecretIdentity};

pub const IDENTITY_FILE: &str = "identity.key";
pub const SOCKET_FILE: &str = "ternd.sock";

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error(
        "no home directory: pass --home DIR or set TERN_HOME (HOME is not set either, so \
         ~/.local/share/tern cannot be used)"
    )]
    NoDefault,
    #[error("cannot use {path} as the node's home: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot read the identity in {path}: {source}. Restore the file from a backup, or \
         move it away to create a new identity (the node's address will change)"
    )]
    ReadIdentity {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the identity in {path} is damaged: {source}. The file was left untouched; restore it \
         from a backup, or move it away to create a new identity (the node's address will change)"
    )]
    CorruptIdentity { path: PathBuf, source: KeyFileError },
    #[error("cannot write a new identity to {path}: {source}")]
    WriteIdentity {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no identity in {home} yet: run `ternd id --home {home}` or start ternd once")]
    NoIdentity { home: PathBuf },
    #[error(
        "{path} {problem}: anyone who can write there can replace this node's trust list or \
         keys. Use a directory of your own: chmod 700 {path}"
    )]
    NotPrivate { path: PathBuf, problem: String },
    #[error("cannot create an identity: the OS random source failed: {0}")]
    Random(#[source] getrandom::Error),
}

#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// Resolves the home from the flag, then `$TERN_HOME`, then `~/.local/share/tern`.
    pub fn resolve(flag: Option<PathBuf>) -> Result<Self, HomeError> {
        let dir = flag
            .or_else(|| std::env::var_os("TERN_HOME").map(PathBuf::from))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/tern"))
            })
            .ok_or(HomeError::NoDefault)?;
        Ok(Self { dir })
    }

    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn identity_path(&self) -> PathBuf {
        self.dir.join(IDENTITY_FILE)
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.join(SOCKET_FILE)
    }

    /// Creates the directory (mode 0700) if needed.
    pub fn ensure_dir(&self) -> Result<(), HomeError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| HomeError::Directory {
                path: self.dir.clone(),
                source,
            })
    }

    /// Refuses a home that another user owns or that others may write to.
    pub fn check_private(&self) -> Result<(), HomeError> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(&self.dir).map_err(|source| HomeError::Directory {
            path: self.dir.clone(),
            source,
        })?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let problem = if meta.uid() != me {
            Some(format!(
                "belongs to user {}, not to this user ({me})",
                meta.uid()
            ))
        } else if meta.mode() & 0o022 != 0 {
            Some(format!(
                "is writable by others (mode {:o})",
                meta.mode() & 0o777
            ))
        } else {
            None
        };
        match problem {
            Some(problem) => Err(HomeError::NotPrivate {
                path: self.dir.clone(),
                problem,
            }),
            None => Ok(()),
        }
    }

    /// Loads the identity; never creates one.
    pub fn load_identity(&self) -> Result<SecretIdentity, HomeError> {
        let path = self.identity_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HomeError::NoIdentity {
                    home: self.dir.clone(),
                });
            }
            Err(source) => return Err(HomeError::ReadIdentity { path, source }),
        };
        SecretIdentity::from_key_file(&bytes)
            .map_err(|source| HomeError::CorruptIdentity { path, source })
    }

    /// Loads the identity, creating it on first use.
    pub fn load_or_create_identity(&self) -> Result<SecretIdentity, HomeError> {
        match self.load_identity() {
            Err(HomeError::NoIdentity { .. }) => {}
            other => return other,
        }
        self.ensure_dir()?;
        let identity = SecretIdentity::generate().map_err(HomeError::Random)?;
        let path = self.identity_path();
        let write_err = |source| HomeError::WriteIdentity {
            path: path.clone(),
            source,
        };
        // Write a private temp file, then hard-link it into place: atomic, and it fails
        // instead of replacing a key that another process created meanwhile.
        let tmp = self
            .dir
            .join(format!(".{IDENTITY_FILE}.{}.tmp", std::process::id()));
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&identity.to_key_file())?;
            file.sync_all()?;
            fs::hard_link(&tmp, &path)
        })();
        let _ = fs::remove_file(&tmp);
        match written {
            Ok(()) => {
                fs::File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(write_err)?;
                Ok(identity)
            }
            // Another process won the race: its identity is the node's identity.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self.load_identity(),
            Err(e) => Err(write_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identity_survives_restart_with_the_same_address() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("node"));
        let first = home.load_or_create_identity().unwrap();
        let again = Home::at(dir.path().join("node"))
            .load_or_create_identity()
            .unwrap();
        assert_eq!(first.address(), again.address());
        let mode = fs::metadata(home.identity_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(home.dir()).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn corrupt_identity_is_an_error_naming_the_file_and_the_file_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        home.load_or_create_identity().unwrap();
        let good = fs::read(home.identity_path()).unwrap();
        for damaged in [&good[..good.len() / 2], b"", b"\xff\x00garbage"] {
            fs::write(home.identity_path(), damaged).unwrap();
            let err = home.load_or_create_identity().unwrap_err();
            assert!(matches!(err, HomeError::CorruptIdentity { .. }), "{err}");
            assert!(err.to_string().contains(IDENTITY_FILE), "{err}");
            assert_eq!(fs::read(home.identity_path()).unwrap(), damaged);
        }
    }

    #[test]
    fn load_identity_never_creates_one() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("empty"));
        assert!(matches!(
            home.load_identity(),
            Err(HomeError::NoIdentity { .. })
        ));
        assert!(!home.identity_path().exists());
    }
}
