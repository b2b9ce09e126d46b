//! The tern handshake: QUIC's TLS 1.3 with raw Ed25519 public keys (RFC 7250), then one
//! identity hello each way, then the address check.
//!
//! TLS: X25519 key exchange only; TLS13_CHACHA20_POLY1305_SHA256 only (AES-128-GCM exists
//! solely for QUIC Initial packets, which RFC 9001 fixes); both sides present a key and both
//! verify the other's handshake signature. The raw key carries no work nonce, so right after
//! TLS each side sends `identity hello` (SPEC §5) on its first uni stream — the server as
//! 0.5-RTT data in its first flight, so no round trip is added — and the receiver checks that
//! key + nonce meet the work condition and derive the address it expected.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::Signer as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature_with_raw_key};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime, alg_id};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureAlgorithm, SignatureScheme};
use tern_proto::stream::{ALPN, HELLO_LEN, decode_hello, encode_hello};
use tern_proto::{Address, IdentityError, PublicIdentity, SecretIdentity};

use crate::env::{Env, EnvExt};

/// How long the peer may take to send its identity hello once TLS is done.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// QUIC application close code: the peer's identity was refused.
pub const CLOSE_IDENTITY_REFUSED: u32 = 0x1001;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("QUIC connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("could not start the QUIC handshake: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("the peer presented no usable Ed25519 key")]
    NoPeerKey,
    #[error("the peer did not send its identity hello within {HELLO_TIMEOUT:?}")]
    HelloTimeout,
    #[error("the peer's identity hello was unreadable: {0}")]
    BadHello(String),
    #[error("refused the peer's identity: {0}")]
    Identity(#[from] IdentityError),
}

/// A TLS-authenticated connection whose peer identity has been checked.
pub struct Verified {
    pub connection: quinn::Connection,
    pub peer: PublicIdentity,
}

/// Client side: completes TLS, exchanges hellos, refuses a peer that is not `expected`.
/// `None` accepts any valid identity (a rendezvous dialled by its UDP address: it is only
/// trusted for records, which carry their own signatures).
pub async fn finish_dial(
    connecting: quinn::Connecting,
    me: &SecretIdentity,
    expected: Option<Address>,
) -> Result<Verified, HandshakeError> {
    let connection = connecting.await?;
    let verified = exchange_hellos(connection, me).await?;
    if let Some(expected) = expected
        && let Err(e) = verified.peer.check_address(expected)
    {
        verified.connection.close(
            CLOSE_IDENTITY_REFUSED.into(),
            b"not the node that was dialled",
        );
        return Err(e.into());
    }
    Ok(verified)
}

/// Server side: sends our hello as 0.5-RTT data, then waits for the client's.
pub async fn finish_accept(
    connecting: quinn::Connecting,
    me: &SecretIdentity,
) -> Result<Verified, HandshakeError> {
    let (connection, established) = match connecting.into_0rtt() {
        Ok(pair) => pair,
        // A server-side Connecting always converts; keep a clean path regardless.
        Err(connecting) => {
            let connection = connecting.await?;
            return exchange_hellos(connection, me).await;
        }
    };
    let send = send_hello(&connection, me);
    let (sent, _) = tokio::join!(send, established);
    sent?;
    receive_hello(connection).await
}

async fn exchange_hellos(
    connection: quinn::Connection,
    me: &SecretIdentity,
) -> Result<Verified, HandshakeError> {
    send_hello(&connection, me).await?;
    receive_hello(connection).await
}

async fn send_hello(
    connection: &quinn::Connection,
    me: &SecretIdentity,
) -> Result<(), HandshakeError> {
    let mut uni = connection.open_uni().await?;
    let bad = |e: &dyn std::fmt::Display| HandshakeError::BadHello(e.to_string());
    uni.write_all(&encode_hello(me.public().nonce()))
        .await
        .map_err(|e| bad(&e))?;
    uni.finish().map_err(|e| bad(&e))?;
    Ok(())
}

async fn receive_hello(connection: quinn::Connection) -> Result<Verified, HandshakeError> {
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        let mut uni = connection.accept_uni().await?;
        uni.read_to_end(HELLO_LEN)
            .await
            .map_err(|e| HandshakeError::BadHello(e.to_string()))
    })
    .await
    .map_err(|_| HandshakeError::HelloTimeout)??;
    let refuse = |connection: &quinn::Connection, e: HandshakeError| {
        connection.close(CLOSE_IDENTITY_REFUSED.into(), b"identity refused");
        e
    };
    let nonce = decode_hello(&hello)
        .map_err(|e| refuse(&connection, HandshakeError::BadHello(e.to_string())))?;
    let key =
        peer_key(&connection).ok_or_else(|| refuse(&connection, HandshakeError::NoPeerKey))?;
    let peer = PublicIdentity::verify(key, nonce).map_err(|e| refuse(&connection, e.into()))?;
    Ok(Verified { connection, peer })
}

/// The Ed25519 key the peer proved in TLS.
fn peer_key(connection: &quinn::Connection) -> Option<[u8; 32]> {
    let certs = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    key_from_spki(certs.first()?.as_ref())
}

fn spki(key: &[u8; 32]) -> SubjectPublicKeyInfoDer<'static> {
    rustls::sign::public_key_to_spki(&alg_id::ED25519, key)
}

/// An Ed25519 SubjectPublicKeyInfo is a fixed 12-byte DER prefix and the 32-byte key.
fn key_from_spki(der: &[u8]) -> Option<[u8; 32]> {
    let prefix = spki(&[0u8; 32]);
    if der.len() != 44 || der[..12] != prefix.as_ref()[..12] {
        return None;
    }
    der[12..].try_into().ok()
}

fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites =
        vec![rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];
    provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    Arc::new(provider)
}

/// RFC 9001 fixes AES-128-GCM for Initial packets; nothing else uses it.
fn initial_suite() -> rustls::quic::Suite {
    rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|suite| suite.quic_suite())
        .expect("ring's TLS13_AES_128_GCM_SHA256 is a QUIC-capable TLS 1.3 suite")
}

/// The TLS configuration for both roles of one node.
pub struct TlsConfigs {
    pub client: quinn::ClientConfig,
    pub server: quinn::ServerConfig,
}

/// The TLS configurations of a node; `env` supplies the key of its address-validation
/// (Retry) tokens.
pub fn tls_configs(
    me: &SecretIdentity,
    transport: Arc<quinn::TransportConfig>,
    env: &dyn Env,
) -> TlsConfigs {
    let provider = crypto_provider();
    let key = Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(
            spki(&me.public().key_bytes()).as_ref().to_vec(),
        )],
        Arc::new(Ed25519Key(me.signing_key().clone())),
    ));
    let verifier = Arc::new(RawKeyVerifier(provider.clone()));
    let resolver = Arc::new(OwnKey(key));

    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_cert_resolver(resolver.clone());
    client.alpn_protocols = vec![ALPN.to_vec()];
    client.enable_sni = false;
    let client =
        quinn::crypto::rustls::QuicClientConfig::with_initial(Arc::new(client), initial_suite())
            .expect("a TLS 1.3-only config with a QUIC initial suite is valid for QUIC");
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport.clone());

    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the provider supports TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    server.alpn_protocols = vec![ALPN.to_vec()];
    // 0.5-RTT data (our hello) needs no early-data support from the client.
    server.max_early_data_size = 0;
    let server =
        quinn::crypto::rustls::QuicServerConfig::with_initial(Arc::new(server), initial_suite())
            .expect("a TLS 1.3-only config with a QUIC initial suite is valid for QUIC");
    let token_key =
        ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&env.random_bytes::<64>());
    let mut server = quinn::ServerConfig::new(Arc::new(server), Arc::new(token_key));
    server.transport_config(transport);
    TlsConfigs { client, server }
}

#[derive(Debug)]
struct Ed25519Key(ed25519_dalek::SigningKey);

impl SigningKey for Ed25519Key {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&SignatureScheme::ED25519)
            .then(|| Box::new(Ed25519Signer(self.0.clone())) as Box<dyn rustls::sign::Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ED25519
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(spki(self.0.verifying_key().as_bytes()))
    }
}

#[derive(Debug)]
struct Ed25519Signer(ed25519_dalek::SigningKey);

impl rustls::sign::Signer for Ed25519Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        Ok(self.0.sign(message).to_bytes().to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// Presents this node's raw key in either role.
#[derive(Debug)]
struct OwnKey(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for OwnKey {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn only_raw_public_keys(&self) -> bool {
        true
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for OwnKey {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn only_raw_public_keys(&self) -> bool {
        true
    }
}

/// Accepts any well-formed Ed25519 raw key and checks the handshake signature with it; which
/// key is acceptable is decided after the identity hello, where the address can be derived.
#[derive(Debug)]
struct RawKeyVerifier(Arc<CryptoProvider>);

impl RawKeyVerifier {
    fn check_key(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if intermediates.is_empty() && key_from_spki(end_entity.as_ref()).is_some() {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ))
        }
    }

    fn check_signature(
        &self,
        message: &[u8],
        key: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(key.as_ref()),
            signature,
            &self.0.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for RawKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Self::check_key(end_entity, intermediates).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        key: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, key, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for RawKeyVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::check_key(end_entity, intermediates).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        key: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, key, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}
