//! Identity: an Ed25519 key pair plus a proof-of-work nonce, and the 48-bit address they make.
//!
//! Two domain-separated BLAKE3 hashes of `public_key || nonce` (nonce as 8 bytes little-endian):
//! the *work hash* must start with [`WORK_BITS`] zero bits, and the first six bytes of the
//! *address hash* are the address. Forging a chosen address then costs about 2^(48+20)
//! hashes instead of 2^48; creating a key costs 2^20 hashes once; verifying costs two.

use crate::address::Address;
use ed25519_dalek::{SigningKey, VerifyingKey};

/// Leading zero bits the work hash must have. SPEC.md, "Address derivation", says why 20.
pub const WORK_BITS: u32 = 20;

const WORK_CONTEXT: &str = "tern 2026-11 address work v1";
const ADDRESS_CONTEXT: &str = "tern 2026-11 address v1";

fn hash(context: &str, key: &[u8; 32], nonce: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(context);
    h.update(key);
    h.update(&nonce.to_le_bytes());
    *h.finalize().as_bytes()
}

fn leading_zero_bits(bytes: &[u8]) -> u32 {
    let mut bits = 0;
    for b in bytes {
        bits += b.leading_zeros();
        if *b != 0 {
            break;
        }
    }
    bits
}

/// The work hash of a key and nonce (exposed for test vectors and diagnostics).
pub fn work_hash(key: &[u8; 32], nonce: u64) -> [u8; 32] {
    hash(WORK_CONTEXT, key, nonce)
}

/// The address that a key and nonce derive, whether or not the nonce meets the work condition.
pub fn derive_address(key: &[u8; 32], nonce: u64) -> Address {
    let h = hash(ADDRESS_CONTEXT, key, nonce);
    Address::from_bytes([h[0], h[1], h[2], h[3], h[4], h[5]])
}

/// The smallest nonce whose work hash meets [`WORK_BITS`] (about 2^20 hashes).
pub fn search_nonce(key: &[u8; 32]) -> u64 {
    let mut prefix = blake3::Hasher::new_derive_key(WORK_CONTEXT);
    prefix.update(key);
    (0u64..)
        .find(|nonce| {
            let mut h = prefix.clone();
            h.update(&nonce.to_le_bytes());
            leading_zero_bits(h.finalize().as_bytes()) >= WORK_BITS
        })
        .expect("a u64 nonce space of 2^64 always holds a 20-bit solution")
}

/// Why a public key, nonce or address claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the public key is not a valid Ed25519 point (or is a weak, small-order key)")]
    InvalidKey,
    #[error(
        "the proof-of-work nonce does not meet the work condition ({found} of {WORK_BITS} \
         leading zero bits): the identity was not made by tern or was tampered with"
    )]
    InsufficientWork { found: u32 },
    #[error("expected the node with address {expected}, but the peer's key derives {presented}")]
    AddressMismatch {
        expected: Address,
        presented: Address,
    },
}

/// A public key whose nonce has been checked; the only way to get an [`Address`] one can trust.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicIdentity {
    key: VerifyingKey,
    nonce: u64,
    address: Address,
}

impl PublicIdentity {
    /// Checks the key and the work condition: two hashes and a point decompression.
    pub fn verify(key: [u8; 32], nonce: u64) -> Result<Self, IdentityError> {
        let verifying = VerifyingKey::from_bytes(&key).map_err(|_| IdentityError::InvalidKey)?;
        if verifying.is_weak() {
            return Err(IdentityError::InvalidKey);
        }
        let found = leading_zero_bits(&work_hash(&key, nonce));
        if found < WORK_BITS {
            return Err(IdentityError::InsufficientWork { found });
        }
        Ok(Self {
            key: verifying,
            nonce,
            address: derive_address(&key, nonce),
        })
    }

    pub fn address(&self) -> Address {
        self.address
    }

    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    pub fn key_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// Whether `signature` is this key's over `context || body` (each signed format has its
    /// own context, so no signature can be replayed as another format's).
    pub fn signed(&self, context: &[u8], body: &[u8], signature: &[u8; 64]) -> bool {
        use ed25519_dalek::Verifier;
        let message = [context, body].concat();
        self.key
            .verify(&message, &ed25519_dalek::Signature::from_bytes(signature))
            .is_ok()
    }

    /// Refuses unless this identity's address is `expected`.
    pub fn check_address(&self, expected: Address) -> Result<(), IdentityError> {
        if self.address == expected {
            Ok(())
        } else {
            Err(IdentityError::AddressMismatch {
                expected,
                presented: self.address,
            })
        }
    }
}

impl std::fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicIdentity")
            .field("address", &self.address)
            .field("key", &hex::encode(self.key.as_bytes()))
            .field("nonce", &self.nonce)
            .finish()
    }
}

/// Why a key file could not be read. The file itself is never touched.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("not a tern key file ({0}); expected JSON with format \"{KEY_FILE_FORMAT}\"")]
    Malformed(String),
    #[error("unsupported key file format {0:?}; this build reads \"{KEY_FILE_FORMAT}\"")]
    UnsupportedFormat(String),
    #[error("the key file's {field} is not {expected}")]
    BadField {
        field: &'static str,
        expected: &'static str,
    },
    #[error("the key file's identity is invalid: {0}")]
    Identity(#[from] IdentityError),
}

pub const KEY_FILE_FORMAT: &str = "tern-identity-v1";

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: String,
    secret_key: String,
    work_nonce: String,
    /// Informational; recomputed and compared on load so a hand edit is caught.
    address: String,
}

/// A node's own identity: the signing key and its verified public half.
#[derive(Clone)]
pub struct SecretIdentity {
    signing: SigningKey,
    public: PublicIdentity,
}

impl SecretIdentity {
    /// A fresh key from the OS random source, with its nonce searched (~0.1 s).
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(Self::from_seed(seed))
    }

    /// The identity of a given 32-byte Ed25519 seed (its nonce searched): for tests and vectors.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        let nonce = search_nonce(signing.verifying_key().as_bytes());
        let public = PublicIdentity::verify(signing.verifying_key().to_bytes(), nonce)
            .expect("a searched nonce meets the work condition");
        Self { signing, public }
    }

    /// The signature over `context || body` that [`PublicIdentity::signed`] checks.
    pub fn sign(&self, context: &[u8], body: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.signing.sign(&[context, body].concat()).to_bytes()
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    pub fn address(&self) -> Address {
        self.public.address
    }

    /// A secret for one purpose, derived from the signing key: the same across restarts, and
    /// revealing neither the key nor any other purpose's secret.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        blake3::derive_key(purpose, &self.signing.to_bytes())
    }

    /// The key file's bytes (SPEC.md, "Key file").
    pub fn to_key_file(&self) -> Vec<u8> {
        let file = KeyFile {
            format: KEY_FILE_FORMAT.into(),
            secret_key: hex::encode(self.signing.to_bytes()),
            work_nonce: format!("{:016x}", self.public.nonce),
            address: self.public.address.to_string(),
        };
        let mut text = serde_json::to_vec_pretty(&file).expect("a plain struct serialises");
        text.push(b'\n');
        text
    }

    pub fn from_key_file(bytes: &[u8]) -> Result<Self, KeyFileError> {
        let file: KeyFile =
            serde_json::from_slice(bytes).map_err(|e| KeyFileError::Malformed(e.to_string()))?;
        if file.format != KEY_FILE_FORMAT {
            return Err(KeyFileError::UnsupportedFormat(file.format));
        }
        let mut seed = [0u8; 32];
        hex::decode_to_slice(&file.secret_key, &mut seed).map_err(|_| KeyFileError::BadField {
            field: "secret_key",
            expected: "64 hex digits",
        })?;
        let nonce = (file.work_nonce.len() == 16)
            .then(|| u64::from_str_radix(&file.work_nonce, 16).ok())
            .flatten()
            .ok_or(KeyFileError::BadField {
                field: "work_nonce",
                expected: "16 hex digits",
            })?;
        let signing = SigningKey::from_bytes(&seed);
        let public = PublicIdentity::verify(signing.verifying_key().to_bytes(), nonce)?;
        if file.address != public.address.to_string() {
            return Err(KeyFileError::BadField {
                field: "address",
                expected: "the address its key derives",
            });
        }
        Ok(Self { signing, public })
    }
}

impl std::fmt::Debug for SecretIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret half.
        f.debug_tuple("SecretIdentity").field(&self.public).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn derived_secrets_are_stable_per_key_and_differ_per_purpose_and_key() {
        let one = SecretIdentity::from_seed(seed(1));
        let again = SecretIdentity::from_key_file(&one.to_key_file()).unwrap();
        assert_eq!(one.derive_secret("a"), again.derive_secret("a"));
        assert_ne!(one.derive_secret("a"), one.derive_secret("b"));
        assert_ne!(
            one.derive_secret("a"),
            SecretIdentity::from_seed(seed(2)).derive_secret("a")
        );
        assert_ne!(one.derive_secret("a"), one.signing_key().to_bytes());
    }

    #[test]
    fn generated_identity_verifies_and_round_trips_through_the_key_file() {
        let id = SecretIdentity::generate().unwrap();
        let back = SecretIdentity::from_key_file(&id.to_key_file()).unwrap();
        assert_eq!(back.public(), id.public());
        assert_eq!(back.signing_key().to_bytes(), id.signing_key().to_bytes());
    }

    #[test]
    fn a_nonce_below_the_work_condition_is_refused() {
        let id = SecretIdentity::from_seed(seed(7));
        let key = id.public().key_bytes();
        let bad = (0..id.public().nonce())
            .next()
            .expect("the searched nonce is the first solution, so 0.. below it all fail");
        assert!(matches!(
            PublicIdentity::verify(key, bad),
            Err(IdentityError::InsufficientWork { .. })
        ));
    }

    #[test]
    fn invalid_and_weak_keys_are_refused() {
        // The identity point (all zero but the sign-less y = 1) is small-order.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        assert_eq!(
            PublicIdentity::verify(identity_point, 0),
            Err(IdentityError::InvalidKey)
        );
    }

    #[test]
    fn address_check_names_both_addresses() {
        let a = SecretIdentity::from_seed(seed(1));
        let b = SecretIdentity::from_seed(seed(2));
        let err = a.public().check_address(b.address()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&a.address().to_string()) && text.contains(&b.address().to_string()));
    }

    #[test]
    fn corrupt_key_files_give_clear_errors() {
        let good = SecretIdentity::from_seed(seed(3)).to_key_file();
        let truncated = &good[..good.len() / 2];
        assert!(matches!(
            SecretIdentity::from_key_file(truncated),
            Err(KeyFileError::Malformed(_))
        ));
        let text = String::from_utf8(good.clone()).unwrap();
        let wrong_address = text.replacen("\"address\": \"", "\"address\": \"0", 1);
        assert!(SecretIdentity::from_key_file(wrong_address.as_bytes()).is_err());
        let flipped_key = text.replacen("\"secret_key\": \"", "\"secret_key\": \"f", 1);
        assert!(SecretIdentity::from_key_file(flipped_key.as_bytes()).is_err());
    }
}
