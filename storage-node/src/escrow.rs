//! Key escrow: each dataset's key, which otherwise lives only on the storage nodes holding the
//! dataset, is also kept by other storage nodes, sealed to their node keys. A node whose disk is
//! lost is restored from a backup that holds no keys (`aic storage restore`) and recovers each key
//! from an escrow, which re-seals it to the asking node only if that node was named a holder.
//!
//! Sealing: an ephemeral X25519 key, Diffie-Hellman with the recipient's Ed25519 node key in
//! Montgomery form, a key derived with BLAKE3 from the shared secret, both public keys and the
//! dataset id, and AES-256-GCM over the 32-byte dataset key with the dataset id as associated
//! data. Using one key pair for Ed25519 signatures and this X25519 KEM is analysed as safe by
//! Thormarker, "On using the same key pair for Ed25519 and an X25519 based KEM" (ePrint
//! 2021/509).
//!
//! ```text
//! <data_dir>/escrow/<dataset>.<depositor>.json   what this node keeps for others
//! <data_dir>/datasets/<dataset>.escrow            where this node's own key is escrowed
//! ```

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use aic_protocol::messages::SealedKey;
use aic_protocol::NodeId;
use serde::{Deserialize, Serialize};

/// Other storage nodes each dataset's key is escrowed with.
pub const ESCROW_COPIES: usize = 2;
/// The most holders an escrow may name (a manifest names at most a handful of replicas).
pub const MAX_ESCROW_HOLDERS: usize = 64;
/// The longest dataset id accepted (ids are 64 hex digits).
const MAX_DATASET_ID: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscrowError {
    #[error("the recipient's node key is not a valid Ed25519 public key")]
    BadRecipient,
    #[error("the sealed key does not open with this node's key (not sealed to it, or altered)")]
    DoesNotOpen,
    #[error("a sealed dataset key is 32 bytes and its tag 16")]
    BadLength,
    #[error("encryption failed")]
    Encrypt,
}

fn derive(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32], dataset: &str) -> Aes256Gcm {
    let mut material = Vec::with_capacity(96 + dataset.len());
    material.extend_from_slice(shared);
    material.extend_from_slice(ephemeral);
    material.extend_from_slice(recipient);
    material.extend_from_slice(dataset.as_bytes());
    let key = blake3::derive_key("aic storage dataset key escrow v1", &material);
    Aes256Gcm::new((&key).into())
}

/// Seals a dataset key to the node whose Ed25519 public key is `recipient`.
pub fn seal(recipient: &[u8; 32], dataset: &str, key: &[u8; 32]) -> Result<SealedKey, EscrowError> {
    let montgomery = ed25519_dalek::VerifyingKey::from_bytes(recipient)
        .map_err(|_| EscrowError::BadRecipient)?
        .to_montgomery();
    let recipient_x = x25519_dalek::PublicKey::from(montgomery.to_bytes());
    let ephemeral = x25519_dalek::StaticSecret::random_from_rng(rand_core::OsRng);
    let ephemeral_public = x25519_dalek::PublicKey::from(&ephemeral);
    let shared = ephemeral.diffie_hellman(&recipient_x);
    let cipher = derive(shared.as_bytes(), ephemeral_public.as_bytes(), recipient, dataset);
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|_| EscrowError::Encrypt)?;
    let ciphertext = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: key,
                aad: dataset.as_bytes(),
            },
        )
        .map_err(|_| EscrowError::Encrypt)?;
    Ok(SealedKey {
        ephemeral: *ephemeral_public.as_bytes(),
        nonce,
        ciphertext,
    })
}

/// Opens a dataset key sealed to this node (`secret` is its Ed25519 signing key's seed).
pub fn open(secret: &[u8; 32], dataset: &str, sealed: &SealedKey) -> Result<[u8; 32], EscrowError> {
    if sealed.ciphertext.len() != 32 + 16 {
        return Err(EscrowError::BadLength);
    }
    let signing = ed25519_dalek::SigningKey::from_bytes(secret);
    let own = x25519_dalek::StaticSecret::from(signing.to_scalar_bytes());
    let shared = own.diffie_hellman(&x25519_dalek::PublicKey::from(sealed.ephemeral));
    let recipient = signing.verifying_key().to_bytes();
    let cipher = derive(shared.as_bytes(), &sealed.ephemeral, &recipient, dataset);
    let plain = cipher
        .decrypt(
            &Nonce::from(sealed.nonce),
            Payload {
                msg: &sealed.ciphertext,
                aad: dataset.as_bytes(),
            },
        )
        .map_err(|_| EscrowError::DoesNotOpen)?;
    plain.try_into().map_err(|_| EscrowError::BadLength)
}

/// A key this node keeps for another: sealed to this node, and who may recover it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Deposit {
    pub dataset: String,
    pub depositor: NodeId,
    pub sealed: SealedKey,
    pub holders: Vec<NodeId>,
}

/// Where this node's key of one dataset is escrowed: the escrow nodes and their addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowedWith {
    pub nodes: Vec<(NodeId, String)>,
}

/// The deposits this node keeps for other nodes, one file each.
pub struct Deposits {
    dir: PathBuf,
}

impl Deposits {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Deposits {
            dir: dir.to_path_buf(),
        })
    }

    /// Checks a deposit's sizes before anything is kept.
    pub fn check(dataset: &str, sealed: &SealedKey, holders: &[NodeId]) -> Result<(), String> {
        if dataset.is_empty()
            || dataset.len() > MAX_DATASET_ID
            || !dataset.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err("a dataset id is hex digits".into());
        }
        if sealed.ciphertext.len() != 32 + 16 {
            return Err(EscrowError::BadLength.to_string());
        }
        if holders.is_empty() || holders.len() > MAX_ESCROW_HOLDERS {
            return Err(format!("an escrow names 1 to {MAX_ESCROW_HOLDERS} holders"));
        }
        Ok(())
    }

    /// Keeps (or replaces) `depositor`'s deposit for `dataset`, written atomically.
    pub fn keep(&self, deposit: &Deposit) -> std::io::Result<()> {
        let path = self.path(&deposit.dataset, &deposit.depositor);
        let temp = path.with_extension("tmp");
        std::fs::write(&temp, serde_json::to_vec(deposit).map_err(std::io::Error::other)?)?;
        std::fs::File::open(&temp)?.sync_all()?;
        std::fs::rename(&temp, &path)
    }

    /// Every deposit for `dataset` that names `holder`.
    pub fn for_holder(&self, dataset: &str, holder: &NodeId) -> Vec<Deposit> {
        let prefix = format!("{dataset}.");
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(&prefix) && name.ends_with(".json")
            })
            .filter_map(|e| serde_json::from_slice::<Deposit>(&std::fs::read(e.path()).ok()?).ok())
            .filter(|d| d.dataset == dataset && d.holders.contains(holder))
            .collect()
    }

    fn path(&self, dataset: &str, depositor: &NodeId) -> PathBuf {
        self.dir.join(format!("{dataset}.{depositor}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_key() -> ([u8; 32], [u8; 32]) {
        let signing = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        (signing.to_bytes(), signing.verifying_key().to_bytes())
    }

    #[test]
    fn a_key_sealed_to_a_node_opens_with_its_key_only_and_for_its_dataset_only() {
        let (secret, public) = node_key();
        let (other_secret, _) = node_key();
        let key = [7u8; 32];
        let sealed = seal(&public, "ab12", &key).unwrap();
        assert_eq!(open(&secret, "ab12", &sealed), Ok(key));
        assert_eq!(
            open(&other_secret, "ab12", &sealed),
            Err(EscrowError::DoesNotOpen)
        );
        assert_eq!(open(&secret, "ab13", &sealed), Err(EscrowError::DoesNotOpen));
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert_eq!(open(&secret, "ab12", &altered), Err(EscrowError::DoesNotOpen));
        let mut short = sealed;
        short.ciphertext.pop();
        assert_eq!(open(&secret, "ab12", &short), Err(EscrowError::BadLength));
    }

    #[test]
    fn deposits_are_found_only_for_the_holders_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let deposits = Deposits::open(dir.path()).unwrap();
        let (_, public) = node_key();
        let holder = NodeId::from_public_key(b"holder");
        let stranger = NodeId::from_public_key(b"stranger");
        let deposit = Deposit {
            dataset: "ab12".into(),
            depositor: holder,
            sealed: seal(&public, "ab12", &[1; 32]).unwrap(),
            holders: vec![holder],
        };
        deposits.keep(&deposit).unwrap();
        assert_eq!(deposits.for_holder("ab12", &holder).len(), 1);
        assert!(deposits.for_holder("ab12", &stranger).is_empty());
        assert!(deposits.for_holder("ab1", &holder).is_empty());
        assert!(Deposits::check("not hex", &deposit.sealed, &[holder]).is_err());
        assert!(Deposits::check("ab12", &deposit.sealed, &[]).is_err());
    }
}
