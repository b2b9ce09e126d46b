//! Node names (`--hostname alpha`): what an operator types instead of an address. A name is a
//! label the node claims in its own signed record; it is never trusted on its own, only as a
//! way to find a key (and the address that key hashes to).

use std::fmt;
use std::str::FromStr;

use crate::address::Address;
use crate::wire::{DecodeError, Reader};

pub const MAX_NAME_LEN: usize = 63;

/// A valid name: lowercase `a-z`, `0-9` and `-`, 1–63 characters, no leading or trailing
/// hyphen (one DNS label).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a valid name: use 1-63 characters of lowercase a-z, 0-9 and '-', \
     not starting or ending with '-'"
)]
pub struct NameError {
    /// The rejected input, shortened so that a huge argument does not flood the message.
    pub input: String,
}

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = NameError;

    fn from_str(text: &str) -> Result<Self, NameError> {
        let allowed = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-';
        let valid = (1..=MAX_NAME_LEN).contains(&text.len())
            && text.bytes().all(allowed)
            && !text.starts_with('-')
            && !text.ends_with('-');
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(NameError {
                input: text.chars().take(70).collect(),
            })
        }
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;

    fn try_from(text: String) -> Result<Self, NameError> {
        text.parse()
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({})", self.0)
    }
}

/// On the wire: length u8 (0: no name) then the name's bytes.
pub fn put_name(out: &mut Vec<u8>, name: Option<&Name>) {
    let bytes = name.map_or(&b""[..], |n| n.as_str().as_bytes());
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

pub fn read_name(r: &mut Reader<'_>) -> Result<Option<Name>, DecodeError> {
    let len = r.u8("name length")? as usize;
    if len > MAX_NAME_LEN {
        return Err(DecodeError::Invalid {
            what: "name length",
            detail: format!("{len}, at most {MAX_NAME_LEN}"),
        });
    }
    match r.take(len, "name")? {
        [] => Ok(None),
        bytes => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .map(Some)
            .ok_or_else(|| DecodeError::Invalid {
                what: "name",
                detail: "breaks the name rule".into(),
            }),
    }
}

/// What a user may type where a peer is meant: an address or a name. The two forms cannot
/// be confused: an address has colons, a name never does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Address(Address),
    Name(Name),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is neither an address (like a1b2:c3d4:e5f6) nor a name (1-63 characters of \
     lowercase a-z, 0-9 and '-', not starting or ending with '-')"
)]
pub struct TargetError {
    pub input: String,
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(text: &str) -> Result<Self, TargetError> {
        if let Ok(address) = text.parse() {
            return Ok(Self::Address(address));
        }
        text.parse().map(Self::Name).map_err(|_| TargetError {
            input: text.chars().take(70).collect(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(address) => address.fmt(f),
            Self::Name(name) => name.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_rule_holds_at_its_edges() {
        for good in ["a", "alpha", "secure-mcp-tool", "a1", "9", &"x".repeat(63)] {
            assert_eq!(good.parse::<Name>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Alpha",
            "al pha",
            "al_pha",
            "al.pha",
            "αlpha",
            &"x".repeat(64),
        ] {
            let e = bad.parse::<Name>().unwrap_err();
            assert!(e.to_string().contains("1-63 characters"), "{e}");
        }
    }

    #[test]
    fn targets_are_addresses_or_names() {
        assert!(matches!(
            "a1b2:c3d4:e5f6".parse::<Target>(),
            Ok(Target::Address(_))
        ));
        assert!(matches!("alpha".parse::<Target>(), Ok(Target::Name(_))));
        assert!("a1b2:c3d4".parse::<Target>().is_err());
        assert!(serde_json::from_str::<Name>("\"UPPER\"").is_err());
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_valid_names_round_trip(text in "\\PC{0,80}") {
            if let Ok(name) = text.parse::<Name>() {
                prop_assert_eq!(name.as_str(), text.as_str());
            }
            let _ = text.parse::<Target>();
        }
    }
}
