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

    /// The live records as one file: each record (SPEC §8) behind its length (u16).
    pub fn to_file(&self, now_unix: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for record in self.records.values().filter(|r| r.is_live(now_unix)) {
            out.extend_from_slice(&(record.as_bytes().len() as u16).to_be_bytes());
            out.extend_from_slice(record.as_bytes());
        }
        out
    }

    /// Restores records from [`Registry::to_file`]'s bytes. Every record is verified again;
    /// damaged, forged or expired ones are skipped and counted.
    pub fn load_file(&mut self, now_unix: u64, mut bytes: &[u8]) -> (usize, usize) {
        let (mut loaded, mut skipped) = (0, 0);
        while bytes.len() >= 2 {
            let len = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
            let Some(body) = bytes.get(2..2 + len) else {
                skipped += 1;
                break;
            };
            bytes = &bytes[2 + len..];
            match Record::decode(body).map(|r| self.register(now_unix, r)) {
                Ok(Ok(())) => loaded += 1,
                _ => skipped += 1,
            }
        }
        (loaded, skipped)
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
    fn the_file_round_trips_and_damage_is_skipped() {
        let mut r = Registry::default();
        r.register(10, record(0, 1, 100)).unwrap();
        r.register(10, record(1, 1, 100)).unwrap();
        let file = r.to_file(10);
        let mut back = Registry::default();
        assert_eq!(back.load_file(10, &file), (2, 0));
        assert_eq!(back.lookup(10, ids()[1].address()).unwrap().seq, 1);
        let mut damaged = file.clone();
        damaged[40] ^= 0xff;
        assert_eq!(Registry::default().load_file(10, &damaged).1, 1);
        assert_eq!(
            Registry::default().load_file(10, &file[..file.len() - 3]),
            (1, 1)
        );
        assert_eq!(
            Registry::default().load_file(200, &file),
            (0, 2),
            "expired on load"
        );
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
