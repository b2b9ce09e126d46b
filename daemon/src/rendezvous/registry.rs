//! The records a rendezvous holds: verified on the way in, newest `seq` wins, expired ones
//! forgotten, and a hard cap on how many it keeps. No I/O and no clock: time is passed in.

use std::collections::HashMap;
use tern_proto::Address;
use tern_proto::record::Record;

pub const DEFAULT_CAPACITY: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("record has expired")]
    Expired,
    #[error("record seq {offered} is not newer than the stored {stored} (replayed or stale)")]
    Stale { offered: u64, stored: u64 },
    #[error("the rendezvous holds its maximum of {0} records; try another")]
    Full(usize),
}

#[derive(Debug)]
pub struct Registry {
    records: HashMap<Address, Record>,
    capacity: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl Registry {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            records: HashMap::new(),
            capacity,
        }
    }

    /// Stores a (decoded, hence verified) record.
    pub fn register(&mut self, now_unix: u64, record: Record) -> Result<(), RegisterError> {
        if !record.is_live(now_unix) {
            return Err(RegisterError::Expired);
        }
        match self.records.get(&record.address()) {
            Some(stored) if stored.seq >= record.seq => {
                return Err(RegisterError::Stale {
                    offered: record.seq,
                    stored: stored.seq,
                });
            }
            Some(_) => {}
            None => {
                if self.records.len() >= self.capacity {
                    self.records.retain(|_, r| r.is_live(now_unix));
                }
                if self.records.len() >= self.capacity {
                    return Err(RegisterError::Full(self.capacity));
                }
            }
        }
        self.records.insert(record.address(), record);
        Ok(())
    }

    pub fn lookup(&self, now_unix: u64, address: Address) -> Option<&Record> {
        self.records.get(&address).filter(|r| r.is_live(now_unix))
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::SecretIdentity;

    fn ids() -> &'static [SecretIdentity; 2] {
        static IDS: std::sync::OnceLock<[SecretIdentity; 2]> = std::sync::OnceLock::new();
        IDS.get_or_init(|| {
            [
                SecretIdentity::from_seed([21; 32]),
                SecretIdentity::from_seed([22; 32]),
            ]
        })
    }

    fn record(n: usize, seq: u64, expires: u64) -> Record {
        Record::sign(
            &ids()[n],
            &["192.0.2.1:7440".parse().unwrap()],
            seq,
            expires,
        )
        .unwrap()
    }

    #[test]
    fn newer_seq_wins_and_replays_are_refused() {
        let mut r = Registry::default();
        r.register(10, record(0, 5, 100)).unwrap();
        assert_eq!(
            r.register(10, record(0, 5, 100)),
            Err(RegisterError::Stale {
                offered: 5,
                stored: 5
            })
        );
        assert!(r.register(10, record(0, 4, 100)).is_err());
        r.register(10, record(0, 6, 100)).unwrap();
        assert_eq!(r.lookup(10, ids()[0].address()).unwrap().seq, 6);
    }

    #[test]
    fn expired_records_are_refused_and_hidden_and_capacity_holds() {
        let mut r = Registry::with_capacity(1);
        assert_eq!(
            r.register(100, record(0, 1, 100)),
            Err(RegisterError::Expired)
        );
        r.register(10, record(0, 1, 50)).unwrap();
        assert!(r.lookup(60, ids()[0].address()).is_none());
        assert_eq!(
            r.register(20, record(1, 1, 100)),
            Err(RegisterError::Full(1))
        );
        // Once the first has expired, its place is taken.
        r.register(60, record(1, 1, 100)).unwrap();
        assert_eq!(r.len(), 1);
    }
}
