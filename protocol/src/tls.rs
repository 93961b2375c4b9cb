//! rustls configurations for mutual TLS, always on, on the ring provider, and the mapping from
//! a failed handshake to the reason an operator sees in metrics.
//!
//! Servers demand a client certificate chaining to the cluster CA (no certificate, another CA's,
//! an expired one: the handshake fails). Clients verify the server against the same CA. Roles are
//! read from the certificate after the handshake and checked per RPC by [`crate::rpc`].

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::certs::Identity;
use crate::error::{Error, Result};

/// ALPN protocol id of AIC over QUIC.
pub const ALPN: &[u8] = b"aic/1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(identity: &Identity) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for ca in &identity.ca_certs {
        roots.add(ca.clone())?;
    }
    Ok(Arc::new(roots))
}

/// The server side: TLS 1.3 only, client certificate mandatory and verified against the CA.
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(identity)?, provider())
        .build()
        .map_err(|e| Error::Certificate(format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// An HTTPS server (the inference gateway's API): our certificate, TLS 1.2 or 1.3, HTTP/1.1.
/// Its callers are API users, not grid members: they authenticate with an API key, and check
/// the server against the grid's CA.
pub fn https_server_config(identity: &Identity) -> Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The client side: TLS 1.3 only, presents our certificate, verifies the server against the CA.
pub fn client_config(identity: &Identity) -> Result<rustls::ClientConfig> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(identity)?, provider())
        .build()
        .map_err(|e| Error::Certificate(format!("server verifier: {e}")))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Every value [`handshake_rejection_reason`] can return, plus `no_identity` (a CA-signed
/// certificate without an AIC identity), so each series exists from the start.
pub const HANDSHAKE_REJECTION_REASONS: &[&str] = &[
    "no_certificate",
    "unknown_ca",
    "expired",
    "revoked",
    "bad_certificate",
    "unsupported_certificate",
    "certificate_unknown",
    "no_application_protocol",
    "tls_alert",
    "transport_error",
    "timeout",
    "version_mismatch",
    "peer_closed",
    "shutting_down",
    "other",
    "no_identity",
];

/// Why an incoming connection failed its handshake, as a metric label from a closed set.
///
/// QUIC carries a TLS alert as the transport error code `0x100 + alert`; rustls picks the alert
/// from its verdict on the peer's certificate, so the code tells us the reason.
pub fn handshake_rejection_reason(error: &quinn::ConnectionError) -> &'static str {
    use quinn::ConnectionError as E;
    match error {
        E::TransportError(transport) => {
            let code = u64::from(transport.code);
            match code.checked_sub(0x100) {
                Some(116) => "no_certificate",
                Some(48) => "unknown_ca",
                Some(45) => "expired",
                Some(44) => "revoked",
                Some(42) => "bad_certificate",
                Some(43) => "unsupported_certificate",
                Some(46) => "certificate_unknown",
                Some(120) => "no_application_protocol",
                Some(alert) if alert < 0x100 => "tls_alert",
                _ => "transport_error",
            }
        }
        E::TimedOut => "timeout",
        E::VersionMismatch => "version_mismatch",
        E::ConnectionClosed(_) | E::ApplicationClosed(_) | E::Reset => "peer_closed",
        E::LocallyClosed => "shutting_down",
        E::CidsExhausted => "other",
    }
}
