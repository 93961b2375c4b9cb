//! What a service's config names outside itself, checked before it starts: its TLS files (the
//! key matches the certificate, which is valid now, carries the service's role and chains to the
//! CA), its directories (writable), its other files (readable) and its ports (free). Every
//! problem is one line naming the key; `--check-config` prints them all and exits non-zero.

use std::net::SocketAddr;
use std::path::Path;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};

use crate::certs::{IdentityFiles, PeerIdentity};
use crate::config::Invalid;
use crate::service::EndpointSettings;
use crate::Role;

/// The endpoint's TLS files as a `role` service uses them, and its two ports when asked.
pub fn endpoint(settings: &EndpointSettings, role: Role, ports: bool) -> Vec<Invalid> {
    let mut problems = identity("endpoint.tls", &settings.tls, role);
    if ports {
        problems.extend(udp_port_free("endpoint.listen", settings.listen));
        problems.extend(tcp_port_free("endpoint.metrics_listen", settings.metrics_listen));
    }
    problems
}

/// The CA, certificate and key at `files`: readable, parseable, matching, valid now, of `role`.
pub fn identity(key: &str, files: &IdentityFiles, role: Role) -> Vec<Invalid> {
    identity_of_any(key, files, &[role])
}

/// [`identity`], for a certificate of any of `roles`.
pub fn identity_of_any(key: &str, files: &IdentityFiles, roles: &[Role]) -> Vec<Invalid> {
    let read = |name: &str, path: &Path| {
        std::fs::read_to_string(path).map_err(|e| {
            Invalid::new(
                format!("{key}.{name}"),
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    let (ca, cert, private) = (
        read("ca", &files.ca),
        read("cert", &files.cert),
        read("key", &files.key),
    );
    let mut problems = Vec::new();
    let certificates = |name: &str, pem: &str| -> Result<Vec<CertificateDer<'static>>, Invalid> {
        use rustls::pki_types::pem::PemObject;
        let parsed = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Invalid::new(format!("{key}.{name}"), format!("not a PEM certificate: {e}")))?;
        if parsed.is_empty() {
            return Err(Invalid::new(format!("{key}.{name}"), "holds no certificate"));
        }
        Ok(parsed)
    };
    let ca = ca.and_then(|pem| certificates("ca", &pem));
    let chain = cert.and_then(|pem| certificates("cert", &pem));
    let subject = chain.as_ref().ok().map(|chain| {
        PeerIdentity::from_certificate(&chain[0])
            .map_err(|e| Invalid::new(format!("{key}.cert"), format!("{}: {e}", files.cert.display())))
    });
    let private = private.and_then(|pem| {
        rcgen::KeyPair::from_pem(&pem).map_err(|e| {
            Invalid::new(
                format!("{key}.key"),
                format!("{}: not a private key: {e}", files.key.display()),
            )
        })
    });
    for problem in [ca.as_ref().err(), chain.as_ref().err(), private.as_ref().err()]
        .into_iter()
        .flatten()
    {
        problems.push(problem.clone());
    }
    if let Some(Err(problem)) = &subject {
        problems.push(problem.clone());
    }
    if let (Some(Ok(subject)), Ok(private)) = (&subject, &private) {
        if private.public_key_raw() != subject.public_key {
            problems.push(Invalid::new(
                format!("{key}.key"),
                format!(
                    "{} is not the key of the certificate {}",
                    files.key.display(),
                    files.cert.display()
                ),
            ));
        }
    }
    if let Some(Ok(subject)) = &subject {
        if !roles.contains(&subject.role) {
            let wanted: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            problems.push(Invalid::new(
                format!("{key}.cert"),
                format!(
                    "{} is a {} certificate; this needs a {} one",
                    files.cert.display(),
                    subject.role,
                    wanted.join(" or ")
                ),
            ));
        }
    }
    if let (Ok(ca), Ok(chain)) = (&ca, &chain) {
        if let Err(refusal) = chains_to(ca, chain) {
            problems.push(Invalid::new(
                format!("{key}.cert"),
                format!("{}: {refusal}", files.cert.display()),
            ));
        }
    }
    problems
}

/// Why a certificate would not pass a peer's check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainRefusal {
    #[error("the certificate has expired: renew it (aic ca renew)")]
    Expired,
    #[error("the certificate is not valid yet (is this host's clock right?)")]
    NotValidYet,
    #[error("the certificate was not issued by the CA the config names")]
    OtherIssuer,
    #[error("the CA certificate is unusable: {0}")]
    UnusableCa(String),
    #[error("the certificate does not verify: {0}")]
    Other(String),
}

/// Whether `chain` verifies against the CA certificates now, as a peer would check it.
pub fn chains_to(
    ca: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
) -> Result<(), ChainRefusal> {
    let mut roots = RootCertStore::empty();
    for certificate in ca {
        roots
            .add(certificate.clone())
            .map_err(|e| ChainRefusal::UnusableCa(e.to_string()))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
        .build()
        .map_err(|e| ChainRefusal::UnusableCa(e.to_string()))?;
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Err(ChainRefusal::Other("no certificate".into()));
    };
    match verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InvalidCertificate(error)) => Err(match error {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => ChainRefusal::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                ChainRefusal::NotValidYet
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => ChainRefusal::OtherIssuer,
            other => ChainRefusal::Other(format!("{other:?}")),
        }),
        Err(other) => Err(ChainRefusal::Other(other.to_string())),
    }
}

/// `path` exists or can be made, and a file can be written in it.
pub fn directory_writable(key: &str, path: &Path) -> Option<Invalid> {
    let problem = |e: std::io::Error| Invalid::new(key, format!("{} is not writable: {e}", path.display()));
    if let Err(e) = std::fs::create_dir_all(path) {
        return Some(problem(e));
    }
    let probe = path.join(format!(".aic-check-config-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => Some(problem(e)),
    }
}

/// `path` names a file this process can read.
pub fn file_readable(key: &str, path: &Path) -> Option<Invalid> {
    if path.as_os_str().is_empty() {
        return Some(Invalid::new(key, "is empty"));
    }
    std::fs::File::open(path)
        .err()
        .map(|e| Invalid::new(key, format!("cannot read {}: {e}", path.display())))
}

/// Nothing else listens on UDP `addr` (port 0 is always free).
pub fn udp_port_free(key: &str, addr: SocketAddr) -> Option<Invalid> {
    std::net::UdpSocket::bind(addr)
        .err()
        .map(|e| Invalid::new(key, format!("cannot listen on udp {addr}: {e}")))
}

/// Nothing else listens on TCP `addr`.
pub fn tcp_port_free(key: &str, addr: SocketAddr) -> Option<Invalid> {
    std::net::TcpListener::bind(addr)
        .err()
        .map(|e| Invalid::new(key, format!("cannot listen on tcp {addr}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{CertificateAuthority, Validity};

    fn keys(problems: &[Invalid]) -> Vec<&str> {
        problems.iter().map(|p| p.key.as_str()).collect()
    }

    /// A CA and a scheduler's files in a temporary directory.
    fn issued(dir: &Path, validity: Validity) -> IdentityFiles {
        let ca = CertificateAuthority::generate("preflight").unwrap();
        ca.save(dir).unwrap();
        ca.issue(Role::Scheduler, "scheduler-1", &[], validity)
            .unwrap()
            .save(dir, "scheduler")
            .unwrap()
    }

    #[test]
    fn a_good_identity_passes() {
        let dir = tempfile::tempdir().unwrap();
        let files = issued(dir.path(), Validity::default());
        assert_eq!(identity("endpoint.tls", &files, Role::Scheduler), []);
    }

    #[test]
    fn missing_files_are_each_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let files = IdentityFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("node.pem"),
            key: dir.path().join("node.key"),
        };
        let problems = identity("endpoint.tls", &files, Role::Scheduler);
        assert_eq!(
            keys(&problems),
            ["endpoint.tls.ca", "endpoint.tls.cert", "endpoint.tls.key"]
        );
    }

    #[test]
    fn another_nodes_key_another_role_and_another_ca_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = issued(dir.path(), Validity::default());
        let other = tempfile::tempdir().unwrap();
        let others = issued(other.path(), Validity::default());

        let mismatched = IdentityFiles {
            key: others.key.clone(),
            ..files.clone()
        };
        assert_eq!(
            keys(&identity("endpoint.tls", &mismatched, Role::Scheduler)),
            ["endpoint.tls.key"]
        );
        assert_eq!(
            keys(&identity("endpoint.tls", &files, Role::Storage)),
            ["endpoint.tls.cert"]
        );
        let foreign_ca = IdentityFiles {
            ca: others.ca.clone(),
            ..files.clone()
        };
        assert_eq!(
            keys(&identity("endpoint.tls", &foreign_ca, Role::Scheduler)),
            ["endpoint.tls.cert"]
        );
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let files = issued(
            dir.path(),
            Validity::Between(now - time::Duration::days(30), now - time::Duration::days(1)),
        );
        let problems = identity("endpoint.tls", &files, Role::Scheduler);
        assert_eq!(keys(&problems), ["endpoint.tls.cert"]);
        let pem = |path: &Path| {
            use rustls::pki_types::pem::PemObject;
            CertificateDer::pem_file_iter(path)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        };
        assert_eq!(
            chains_to(&pem(&files.ca), &pem(&files.cert)),
            Err(ChainRefusal::Expired)
        );
    }

    #[test]
    fn a_port_in_use_and_an_unwritable_directory_are_found() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(tcp_port_free("endpoint.metrics_listen", held.local_addr().unwrap()).is_some());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(udp_port_free("endpoint.listen", udp.local_addr().unwrap()).is_some());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        assert!(directory_writable("ledger.data_dir", &file.join("below")).is_some());
        assert!(directory_writable("ledger.data_dir", &dir.path().join("new")).is_none());
        assert!(file_readable("ledger.genesis", &dir.path().join("absent.toml")).is_some());
    }
}
