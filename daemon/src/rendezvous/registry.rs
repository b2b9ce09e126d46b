//! The records a rendezvous holds: verified on the way in, newest `seq` wins, expired ones
//! forgotten, and a hard cap on how many it keeps. It also indexes names: the first key to
//! claim a name holds it while it keeps its record fresh, and for a grace period after its
//! last record lapsed; only then may another key claim it. No I/O and no clock: time is
//! passed in.

use std::collections::HashMap;
use tern_proto::record::Record;
use tern_proto::{Address, Name};

pub const DEFAULT_CAPACITY: usize = 100_000;
/// How long a lapsed holder keeps its name: 7 days.
pub const DEFAULT_NAME_GRACE: u64 = 7 * 24 * 3600;
/// How far ahead of a rendezvous's clock a record may expire: the record lifetime plus the
/// clock skew tolerated between a node and its rendezvous. A longer-lived record would hold
/// its name and its place in the registry for as long as its owner chose.
pub const MAX_EXPIRY_AHEAD: u64 = super::RECORD_LIFETIME.as_secs() + CLOCK_SKEW;
/// Clock difference tolerated between a node and its rendezvous (as for trust requests).
pub const CLOCK_SKEW: u64 = 600;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("record has expired")]
    Expired,
    #[error(
        "record expires {ahead} s from now; records may live at most {MAX_EXPIRY_AHEAD} s: \
         check the node's clock"
    )]
    TooLong { ahead: u64 },
    #[error("record seq {offered} is not newer than the stored {stored} (replayed or stale)")]
    Stale { offered: u64, stored: u64 },
    #[error("the rendezvous holds its maximum of {0} records; try another")]
    Full(usize),
    #[error("the name {name} is held by {holder}")]
    NameTaken { name: Name, holder: Address },
}

#[derive(Debug)]
pub struct Registry {
    records: HashMap<Address, Record>,
    /// Name → holder; the holder's record (kept while it holds the name) proves the claim.
    names: HashMap<Name, Address>,
    capacity: usize,
    name_grace: u64,
    /// When (Unix seconds) lapsed records were last swept out.
    swept: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_NAME_GRACE)
    }
}

impl Registry {
    pub fn new(capacity: usize, name_grace: u64) -> Self {
        Self {
            records: HashMap::new(),
            names: HashMap::new(),
            capacity,
            name_grace,
            swept: 0,
        }
    }

    /// Stores a (decoded, hence verified) record.
    pub fn register(&mut self, now_unix: u64, record: Record) -> Result<(), RegisterError> {
        if !record.is_live(now_unix) {
            return Err(RegisterError::Expired);
        }
        self.insert(now_unix, record)
    }

    /// Refuses a record that claims to live longer than any record may.
    fn check_lifetime(now_unix: u64, record: &Record) -> Result<(), RegisterError> {
        let ahead = record.expires.saturating_sub(now_unix);
        match ahead > MAX_EXPIRY_AHEAD {
            true => Err(RegisterError::TooLong { ahead }),
            false => Ok(()),
        }
    }

    /// True if storing `record` would bind a name to its key that the key does not hold yet.
    pub fn is_new_claim(&self, record: &Record) -> bool {
        record
            .name
            .as_ref()
            .is_some_and(|name| self.names.get(name) != Some(&record.address()))
    }

    fn insert(&mut self, now_unix: u64, record: Record) -> Result<(), RegisterError> {
        Self::check_lifetime(now_unix, &record)?;
        let address = record.address();
        if let Some(name) = &record.name
            && let Some(&holder) = self.names.get(name)
            && holder != address
            && self.holds_name(now_unix, holder)
        {
            return Err(RegisterError::NameTaken {
                name: name.clone(),
                holder,
            });
        }
        match self.records.get(&address) {
            Some(stored) if stored.seq >= record.seq => {
                return Err(RegisterError::Stale {
                    offered: record.seq,
                    stored: stored.seq,
                });
            }
            Some(_) => {}
            None => {
                // Full: lapsed records go, in one sweep a second at most (never a scan per
                // registration).
                if self.records.len() >= self.capacity && self.swept < now_unix {
                    self.swept = now_unix;
                    self.forget_lapsed(now_unix);
                }
                if self.records.len() >= self.capacity {
                    return Err(RegisterError::Full(self.capacity));
                }
            }
        }
        let released = self
            .records
            .get(&address)
            .and_then(|old| old.name.clone())
            .filter(|old| Some(old) != record.name.as_ref());
        if let Some(old) = released {
            self.names.remove(&old);
        }
        // A name taken over after the grace: its lapsed holder's record goes with it.
        if let Some(name) = &record.name
            && let Some(lapsed) = self.names.insert(name.clone(), address)
            && lapsed != address
        {
            self.records.remove(&lapsed);
        }
        self.records.insert(address, record);
        Ok(())
    }

    /// Whether `holder`'s record still holds its name: live, or lapsed within the grace.
    fn holds_name(&self, now_unix: u64, holder: Address) -> bool {
        self.records
            .get(&holder)
            .is_some_and(|r| self.is_kept(now_unix, r))
    }

    /// Live records are kept; a lapsed one is kept while it holds a name within the grace.
    fn is_kept(&self, now_unix: u64, record: &Record) -> bool {
        record.is_live(now_unix)
            || (record.name.is_some() && now_unix < record.expires.saturating_add(self.name_grace))
    }

    fn forget_lapsed(&mut self, now_unix: u64) {
        let lapsed: Vec<Address> = self
            .records
            .iter()
            .filter(|(_, r)| !self.is_kept(now_unix, r))
            .map(|(address, _)| *address)
            .collect();
        for address in lapsed {
            self.records.remove(&address);
        }
        let records = &self.records;
        self.names.retain(|_, holder| records.contains_key(holder));
    }

    pub fn lookup(&self, now_unix: u64, address: Address) -> Option<&Record> {
        self.records.get(&address).filter(|r| r.is_live(now_unix))
    }

    /// The live record that holds `name`.
    pub fn lookup_name(&self, now_unix: u64, name: &Name) -> Option<&Record> {
        self.lookup(now_unix, *self.names.get(name)?)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn names_held(&self) -> usize {
        self.names.len()
    }

    /// The kept records (live ones, and lapsed ones that still hold a name) as one file: each
    /// record (SPEC §8) behind its length (u16).
    pub fn to_file(&self, now_unix: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for record in self.records.values().filter(|r| self.is_kept(now_unix, r)) {
            out.extend_from_slice(&(record.as_bytes().len() as u16).to_be_bytes());
            out.extend_from_slice(record.as_bytes());
        }
        out
    }

    /// Restores records from [`Registry::to_file`]'s bytes. Every record is verified again;
    /// damaged, forged or no longer kept ones are skipped and counted.
    pub fn load_file(&mut self, now_unix: u64, mut bytes: &[u8]) -> (usize, usize) {
        let (mut loaded, mut skipped) = (0, 0);
        while bytes.len() >= 2 {
            let len = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
            let Some(body) = bytes.get(2..2 + len) else {
                skipped += 1;
                break;
            };
            bytes = &bytes[2 + len..];
            let restored = Record::decode(body)
                .ok()
                .filter(|r| self.is_kept(now_unix, r))
                .map(|r| self.insert(now_unix, r));
            match restored {
                Some(Ok(())) => loaded += 1,
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
        named(n, None, seq, expires)
    }

    fn named(n: usize, name: Option<&str>, seq: u64, expires: u64) -> Record {
        let name: Option<Name> = name.map(|n| n.parse().unwrap());
        Record::sign(
            &ids()[n],
            &["192.0.2.1:7440".parse().unwrap()],
            name.as_ref(),
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
        let mut r = Registry::new(1, DEFAULT_NAME_GRACE);
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

    #[test]
    fn records_living_longer_than_the_lifetime_are_refused_and_not_reloaded() {
        let mut r = Registry::default();
        let far = 10 + MAX_EXPIRY_AHEAD + 1;
        assert_eq!(
            r.register(10, named(0, Some("alpha"), 1, far)),
            Err(RegisterError::TooLong { ahead: far - 10 })
        );
        r.register(10, record(1, 1, 10 + MAX_EXPIRY_AHEAD)).unwrap();
        assert_eq!(r.len(), 1);
        // A file written by an older rendezvous (or edited) with a far expiry: not restored.
        let mut old = Registry::default();
        old.records
            .insert(ids()[0].address(), named(0, Some("alpha"), 1, far));
        assert_eq!(Registry::default().load_file(10, &old.to_file(10)), (0, 1));
    }

    #[test]
    fn first_claim_wins_until_the_grace_after_its_record_lapsed() {
        let alpha: Name = "alpha".parse().unwrap();
        let mut r = Registry::new(10, 1000);
        r.register(10, named(0, Some("alpha"), 1, 100)).unwrap();
        assert!(r.is_new_claim(&named(1, Some("alpha"), 1, 100)));
        assert!(!r.is_new_claim(&named(0, Some("alpha"), 2, 100)));
        let taken = Err(RegisterError::NameTaken {
            name: alpha.clone(),
            holder: ids()[0].address(),
        });
        assert_eq!(r.register(20, named(1, Some("alpha"), 1, 300)), taken);
        // Lapsed but within the grace: still held, not found.
        assert_eq!(r.register(500, named(1, Some("alpha"), 2, 900)), taken);
        assert!(r.lookup_name(500, &alpha).is_none());
        // The holder comes back and refreshes.
        r.register(600, named(0, Some("alpha"), 3, 900)).unwrap();
        assert_eq!(
            r.lookup_name(600, &alpha).unwrap().address(),
            ids()[0].address()
        );
        // Past the grace another key may claim it; the lapsed holder is forgotten.
        r.register(2000, named(1, Some("alpha"), 4, 2100)).unwrap();
        assert_eq!(
            r.lookup_name(2000, &alpha).unwrap().address(),
            ids()[1].address()
        );
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_holder_releases_its_name_by_dropping_it_and_claims_survive_a_restart() {
        let alpha: Name = "alpha".parse().unwrap();
        let mut r = Registry::new(10, 1000);
        r.register(10, named(0, Some("alpha"), 1, 100)).unwrap();
        let mut back = Registry::new(10, 1000);
        // Restored after the record lapsed: the claim is still there.
        assert_eq!(back.load_file(150, &r.to_file(150)), (1, 0));
        assert!(back.register(150, named(1, Some("alpha"), 1, 300)).is_err());
        r.register(20, named(0, None, 2, 100)).unwrap();
        assert!(r.lookup_name(20, &alpha).is_none());
        r.register(20, named(1, Some("alpha"), 1, 100)).unwrap();
        assert_eq!(r.names_held(), 1);
    }
}
