//! The cluster certificate authority and the identities it issues.
//!
//! Every process holds an Ed25519 key and a certificate from the cluster CA. The certificate
//! carries, besides its DNS/IP names, one URI subject-alternative name `aic://<role>/<node-id>`,
//! where the node id is the BLAKE3 hash of the certificate's public key. A peer reads role and id
//! from the verified certificate ([`PeerIdentity::from_certificate`]) and re-derives the id from
//! the key, so neither can be claimed falsely without the CA's signature.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, PKCS_ED25519,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};
use crate::ids::{NodeId, Role};

/// URI scheme of the identity SAN.
const IDENTITY_SCHEME: &str = "aic://";
/// Names every certificate answers to besides its own name, so loopback clusters work.
const LOOPBACK_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
/// Default lifetime of an issued certificate.
pub const DEFAULT_VALIDITY_DAYS: i64 = 365;
/// Lifetime of a CA certificate.
const CA_VALIDITY_DAYS: i64 = 3650;

/// Who is on the other end of a connection, read from its verified certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    pub role: Role,
    pub node_id: NodeId,
    /// The certificate's common name (the `--name` it was issued with).
    pub name: String,
    /// The certificate's Ed25519 public key (its BLAKE3 hash is `node_id`): what verifies the
    /// node's signatures on blocks.
    pub public_key: [u8; 32],
}

impl PeerIdentity {
    /// Reads role, node id and name from a DER certificate. Fails if the certificate has no
    /// AIC identity, or if its identity names another key than the one it carries.
    pub fn from_certificate(der: &[u8]) -> Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Error::Certificate(format!("unparseable certificate: {e}")))?;
        let key_bytes: &[u8] = &cert.public_key().subject_public_key.data;
        let derived = NodeId::from_public_key(key_bytes);
        let public_key: [u8; 32] = key_bytes.try_into().unwrap_or([0; 32]);
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| Error::Certificate(format!("bad subject alternative names: {e}")))?
            .map(|ext| ext.value.general_names.clone())
            .unwrap_or_default();
        for san in sans {
            let x509_parser::extensions::GeneralName::URI(uri) = san else {
                continue;
            };
            let Some(rest) = uri.strip_prefix(IDENTITY_SCHEME) else {
                continue;
            };
            let (role, id) = rest
                .split_once('/')
                .ok_or_else(|| Error::Certificate(format!("malformed identity {uri:?}")))?;
            let role: Role = role.parse()?;
            let claimed: NodeId = id.parse()?;
            if claimed != derived {
                return Err(Error::Certificate(format!(
                    "identity {uri:?} does not match the certificate's key ({derived})"
                )));
            }
            return Ok(PeerIdentity {
                role,
                node_id: derived,
                name,
                public_key,
            });
        }
        Err(Error::Certificate(
            "certificate carries no AIC identity (aic://<role>/<node-id>)".into(),
        ))
    }
}

/// The cluster CA: a self-signed Ed25519 certificate and its key.
pub struct CertificateAuthority {
    cert_pem: String,
    key: KeyPair,
}

impl CertificateAuthority {
    /// Makes a new CA for a cluster.
    pub fn generate(cluster_name: &str) -> Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(rcgen_error)?;
        let params = Self::params(cluster_name)?;
        let cert = params.self_signed(&key).map_err(rcgen_error)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            key,
        })
    }

    fn params(cluster_name: &str) -> Result<CertificateParams> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("AIC cluster CA {cluster_name}"));
        dn.push(DnType::OrganizationName, "AIC");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        Ok(params)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into `dir`. Refuses to overwrite an existing CA:
    /// losing it would orphan every certificate it issued.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(Error::WriteFile {
                    path: path.clone(),
                    cause: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "a CA already exists here; remove it first if you mean to replace it",
                    ),
                });
            }
        }
        fs::create_dir_all(dir).map_err(|cause| Error::WriteFile {
            path: dir.to_path_buf(),
            cause,
        })?;
        write_file(&cert_path, &self.cert_pem, false)?;
        write_file(&key_path, &self.key.serialize_pem(), true)
    }

    /// Loads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let cert_pem = read_file(&dir.join("ca.pem"))?;
        let key_pem = read_file(&dir.join("ca.key"))?;
        let key = KeyPair::from_pem(&key_pem).map_err(rcgen_error)?;
        Ok(CertificateAuthority { cert_pem, key })
    }

    /// Issues a certificate for `role` named `name`, valid for `validity` from now, with a new
    /// key (and so a new node id).
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        extra_names: &[String],
        validity: Validity,
    ) -> Result<IssuedCertificate> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(rcgen_error)?;
        self.sign_with_key(key, role, name, extra_names, validity)
    }

    /// Signs a certificate request made where its key lives (`aic ca request`), so the key
    /// never leaves that host. Only the request's public key is taken from it: role, name and
    /// names come from the CA's operator. Answers the node id and the certificate (PEM).
    pub fn sign_request(
        &self,
        csr_pem: &str,
        role: Role,
        name: &str,
        extra_names: &[String],
        validity: Validity,
    ) -> Result<(NodeId, String)> {
        // Parsing checks the request's own signature: whoever sent it holds its key.
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::Certificate(format!("not a valid certificate request: {e}")))?;
        if request.public_key.algorithm() != &PKCS_ED25519 {
            return Err(Error::Certificate(
                "the request's key is not Ed25519: only Ed25519 keys carry an AIC node id".into(),
            ));
        }
        self.sign(&request.public_key, role, name, extra_names, validity)
    }

    /// Renews a certificate: a new one for the key in `key_pem`, so the holder keeps its node id
    /// (its Raft replica id, reputation and registrations) across a certificate rotation.
    pub fn renew(
        &self,
        key_pem: &str,
        role: Role,
        name: &str,
        extra_names: &[String],
        validity: Validity,
    ) -> Result<IssuedCertificate> {
        let key = KeyPair::from_pem(key_pem).map_err(rcgen_error)?;
        if key.algorithm() != &PKCS_ED25519 {
            return Err(Error::Certificate(
                "only Ed25519 keys carry an AIC node id".into(),
            ));
        }
        self.sign_with_key(key, role, name, extra_names, validity)
    }

    /// A certificate for `key`, handed back with it.
    fn sign_with_key(
        &self,
        key: KeyPair,
        role: Role,
        name: &str,
        extra_names: &[String],
        validity: Validity,
    ) -> Result<IssuedCertificate> {
        let (node_id, cert_pem) = self.sign(&key, role, name, extra_names, validity)?;
        Ok(IssuedCertificate {
            role,
            node_id,
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    fn sign(
        &self,
        key: &impl PublicKeyData,
        role: Role,
        name: &str,
        extra_names: &[String],
        validity: Validity,
    ) -> Result<(NodeId, String)> {
        let node_id = NodeId::from_public_key(key.der_bytes());
        let mut names: Vec<String> = vec![dns_safe(name)];
        names.extend(LOOPBACK_NAMES.iter().map(|s| s.to_string()));
        names.extend(extra_names.iter().cloned());
        names.dedup();
        let mut params = CertificateParams::new(names).map_err(rcgen_error)?;
        params.subject_alt_names.push(SanType::URI(
            format!("{IDENTITY_SCHEME}{role}/{node_id}")
                .try_into()
                .map_err(rcgen_error)?,
        ));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity.bounds();
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(rcgen_error)?;
        let cert = params.signed_by(key, &issuer).map_err(rcgen_error)?;
        Ok((node_id, cert.pem()))
    }
}

/// A new Ed25519 key and a certificate request for it, made on the host that will keep the key
/// (`aic ca request`): the request goes to the CA, the key stays. Answers (key PEM, request PEM).
pub fn new_request(name: &str) -> Result<(String, String)> {
    let key = KeyPair::generate_for(&PKCS_ED25519).map_err(rcgen_error)?;
    let request = request_for(&key, name)?;
    Ok((key.serialize_pem(), request))
}

/// A certificate request for the key already in `key_pem` (a renewal that keeps the node id).
pub fn renewal_request(key_pem: &str, name: &str) -> Result<String> {
    let key = KeyPair::from_pem(key_pem).map_err(rcgen_error)?;
    if key.algorithm() != &PKCS_ED25519 {
        return Err(Error::Certificate(
            "only Ed25519 keys carry an AIC node id".into(),
        ));
    }
    request_for(&key, name)
}

fn request_for(key: &KeyPair, name: &str) -> Result<String> {
    let mut params = CertificateParams::new(vec![dns_safe(name)]).map_err(rcgen_error)?;
    params.distinguished_name.push(DnType::CommonName, name);
    let request = params.serialize_request(key).map_err(rcgen_error)?;
    request.pem().map_err(rcgen_error)
}

/// How long an issued certificate is valid.
#[derive(Clone, Copy, Debug)]
pub enum Validity {
    /// From a few minutes ago (clock skew) to this many days from now.
    Days(i64),
    /// Explicit bounds; tests use past bounds to make expired certificates.
    Between(OffsetDateTime, OffsetDateTime),
}

impl Validity {
    fn bounds(self) -> (OffsetDateTime, OffsetDateTime) {
        match self {
            Validity::Days(days) => {
                let now = OffsetDateTime::now_utc();
                (now - Duration::minutes(5), now + Duration::days(days))
            }
            Validity::Between(from, to) => (from, to),
        }
    }
}

impl Default for Validity {
    fn default() -> Self {
        Validity::Days(DEFAULT_VALIDITY_DAYS)
    }
}

/// A freshly issued certificate and its private key.
pub struct IssuedCertificate {
    pub role: Role,
    pub node_id: NodeId,
    pub cert_pem: String,
    pub key_pem: String,
}

impl IssuedCertificate {
    /// Writes `<name>.pem` and `<name>.key` (0600) into `dir`, next to the CA's `ca.pem`, and
    /// returns the file set a config's `[tls]` table names.
    pub fn save(&self, dir: &Path, file_stem: &str) -> Result<IdentityFiles> {
        fs::create_dir_all(dir).map_err(|cause| Error::WriteFile {
            path: dir.to_path_buf(),
            cause,
        })?;
        let files = IdentityFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{file_stem}.pem")),
            key: dir.join(format!("{file_stem}.key")),
        };
        write_file(&files.cert, &self.cert_pem, false)?;
        write_file(&files.key, &self.key_pem, true)?;
        Ok(files)
    }
}

/// Where a process finds its TLS material: the cluster CA, its certificate and its key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl IdentityFiles {
    pub fn load(&self) -> Result<Identity> {
        let ca_pem = read_file(&self.ca)?;
        let cert_pem = read_file(&self.cert)?;
        let key_pem = read_file(&self.key)?;
        Identity::from_pem(&ca_pem, &cert_pem, &key_pem).map_err(|e| {
            Error::Certificate(format!(
                "{e} (files: ca {}, cert {}, key {})",
                self.ca.display(),
                self.cert.display(),
                self.key.display()
            ))
        })
    }
}

/// A loaded identity, ready for the TLS configs.
#[derive(Debug)]
pub struct Identity {
    pub ca_certs: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// What peers will read from our certificate.
    pub me: PeerIdentity,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            ca_certs: self.ca_certs.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            me: self.me.clone(),
        }
    }
}

impl Identity {
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self> {
        let parse_certs = |pem: &str, what: &str| -> Result<Vec<CertificateDer<'static>>> {
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Certificate(format!("bad {what} PEM: {e}")))?;
            if certs.is_empty() {
                return Err(Error::Certificate(format!("no certificate in the {what} PEM")));
            }
            Ok(certs)
        };
        let ca_certs = parse_certs(ca_pem, "CA")?;
        let chain = parse_certs(cert_pem, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| Error::Certificate(format!("bad private key PEM: {e}")))?;
        let me = PeerIdentity::from_certificate(&chain[0])?;
        Ok(Identity {
            ca_certs,
            chain,
            key,
            me,
        })
    }

    /// Builds an identity straight from a freshly issued certificate (tests, the devnet).
    pub fn from_issued(ca: &CertificateAuthority, issued: &IssuedCertificate) -> Result<Self> {
        Self::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem)
    }
}

/// A DNS-safe form of a node name for the certificate's DNS SAN.
fn dns_safe(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "node".to_string()
    } else {
        cleaned
    }
}

fn rcgen_error(e: rcgen::Error) -> Error {
    Error::Certificate(e.to_string())
}

fn read_file(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|cause| Error::ReadFile {
        path: path.to_path_buf(),
        cause,
    })
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let wrap = |cause| Error::WriteFile {
        path: path.to_path_buf(),
        cause,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(wrap)?;
    file.write_all(contents.as_bytes()).map_err(wrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_names_its_role_and_the_id_of_its_key() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let issued = ca
            .issue(Role::Compute, "compute-1", &[], Validity::default())
            .unwrap();
        let identity = Identity::from_issued(&ca, &issued).unwrap();
        assert_eq!(identity.me.role, Role::Compute);
        assert_eq!(identity.me.node_id, issued.node_id);
        assert_eq!(identity.me.name, "compute-1");
    }

    #[test]
    fn a_renewed_certificate_keeps_the_key_and_node_id() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let first = ca
            .issue(Role::Scheduler, "sched-0", &[], Validity::Days(1))
            .unwrap();
        let renewed = ca
            .renew(
                &first.key_pem,
                Role::Scheduler,
                "sched-0",
                &[],
                Validity::Days(365),
            )
            .unwrap();
        assert_eq!(renewed.node_id, first.node_id);
        assert_ne!(renewed.cert_pem, first.cert_pem);
        let identity = Identity::from_issued(&ca, &renewed).unwrap();
        assert_eq!(identity.me.node_id, first.node_id);
        assert!(ca
            .renew("not a key", Role::Scheduler, "sched-0", &[], Validity::Days(1))
            .is_err());
    }

    #[test]
    fn two_certificates_get_two_ids() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let a = ca.issue(Role::Storage, "s", &[], Validity::default()).unwrap();
        let b = ca.issue(Role::Storage, "s", &[], Validity::default()).unwrap();
        assert_ne!(a.node_id, b.node_id);
    }

    #[test]
    fn a_certificate_without_an_aic_identity_is_rejected() {
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let err = PeerIdentity::from_certificate(cert.der()).unwrap_err();
        assert!(err.to_string().contains("no AIC identity"), "{err}");
    }

    #[test]
    fn a_ca_round_trips_through_files_and_refuses_to_be_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test").unwrap();
        ca.save(dir.path()).unwrap();
        let loaded = CertificateAuthority::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let issued = loaded
            .issue(Role::Client, "alice", &[], Validity::default())
            .unwrap();
        let files = issued.save(dir.path(), "alice").unwrap();
        assert_eq!(files.load().unwrap().me.role, Role::Client);
        assert!(
            ca.save(dir.path()).is_err(),
            "an existing CA must not be replaced"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(dir.path().join("ca.key")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
