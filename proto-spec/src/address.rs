//! The 48-bit virtual address and its one text form, `xxxx:xxxx:xxxx`.

use std::fmt;
use std::str::FromStr;

/// A node's 48-bit virtual address: a handle derived from its public key (see
/// [`crate::identity`]), never a credential on its own.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address([u8; Address::LEN]);

impl Address {
    pub const LEN: usize = 6;

    pub const fn from_bytes(bytes: [u8; Address::LEN]) -> Self {
        Self(bytes)
    }

    pub const fn to_bytes(self) -> [u8; Address::LEN] {
        self.0
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}{:02x}:{:02x}{:02x}:{:02x}{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

/// The text was not an address in its one accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a tern address: expected three groups of four hex digits separated by \
     colons, like a1b2:c3d4:e5f6"
)]
pub struct ParseAddressError {
    /// The rejected input, shortened so that a huge argument does not flood the message.
    pub input: String,
}

impl FromStr for Address {
    type Err = ParseAddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ParseAddressError {
            input: text.chars().take(40).collect(),
        };
        let raw = text.as_bytes();
        // Exactly 4 + 1 + 4 + 1 + 4 bytes: colons at 4 and 9, hex digits everywhere else.
        if raw.len() != 14 || raw[4] != b':' || raw[9] != b':' {
            return Err(err());
        }
        let mut bytes = [0u8; Address::LEN];
        let digits = raw.iter().enumerate().filter(|(i, _)| *i != 4 && *i != 9);
        for (n, (_, &c)) in digits.enumerate() {
            let nibble = (c as char).to_digit(16).ok_or_else(err)? as u8;
            bytes[n / 2] |= nibble << if n % 2 == 0 { 4 } else { 0 };
        }
        Ok(Address(bytes))
    }
}

impl serde::Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_and_parses_round_trip() {
        let a = Address::from_bytes([0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6]);
        assert_eq!(a.to_string(), "a1b2:c3d4:e5f6");
        assert_eq!("a1b2:c3d4:e5f6".parse::<Address>(), Ok(a));
        assert_eq!("A1B2:C3D4:E5F6".parse::<Address>(), Ok(a));
    }

    #[test]
    fn rejects_near_misses_with_the_expected_form() {
        for bad in [
            "",
            "a1b2c3d4e5f6",
            "a1b2:c3d4:e5f",
            "a1b2:c3d4:e5f60",
            "a1b2:c3d4:e5fg",
            "a1b2-c3d4-e5f6",
            " a1b2:c3d4:e5f6",
            "a1b2:c3d4:e5f6 ",
            "+1b2:c3d4:e5f6",
            "a1b2::c3d4:e5f",
            "a1b2:c3d4:e5é",
        ] {
            let err = bad.parse::<Address>().unwrap_err();
            assert!(err.to_string().contains("like a1b2:c3d4:e5f6"), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn every_address_round_trips(bytes in any::<[u8; 6]>()) {
            let a = Address::from_bytes(bytes);
            prop_assert_eq!(a.to_string().parse::<Address>(), Ok(a));
        }

        #[test]
        fn parser_accepts_only_the_canonical_shape(text in "\\PC{0,20}") {
            let shaped = text.len() == 14
                && text.char_indices().all(|(i, c)| if i == 4 || i == 9 { c == ':' } else { c.is_ascii_hexdigit() });
            prop_assert_eq!(text.parse::<Address>().is_ok(), shaped);
        }

        #[test]
        fn parser_accepts_only_the_canonical_shape_near_misses(text in "[0-9a-fA-F:g ]{12,16}") {
            let shaped = text.len() == 14
                && text.char_indices().all(|(i, c)| if i == 4 || i == 9 { c == ':' } else { c.is_ascii_hexdigit() });
            prop_assert_eq!(text.parse::<Address>().is_ok(), shaped);
        }
    }
}
