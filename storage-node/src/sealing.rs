//! Encryption at rest: each dataset has its own AES-256-GCM key, which never leaves the storage
//! nodes. A sealed shard is `nonce (12 bytes) ‖ ciphertext ‖ tag`, authenticated together with
//! its shard id, so a sealed shard cannot be passed off under another name; after opening, the
//! plaintext must hash to that id. Either failure means the bytes at rest are corrupt.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use aic_protocol::ShardId;

const NONCE_LEN: usize = 12;

/// Why a sealed shard could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed shard {0} is shorter than its nonce and tag")]
    Truncated(ShardId),
    #[error("sealed shard {0} fails authentication: corrupt or not sealed with this dataset's key")]
    Authentication(ShardId),
    #[error("shard {0} opened but its content hashes to {1}")]
    WrongContent(ShardId, ShardId),
    #[error("encryption failed: {0}")]
    Encrypt(String),
}

/// A dataset's key.
#[derive(Clone)]
pub struct DatasetKey([u8; 32]);

impl DatasetKey {
    pub fn generate() -> Self {
        DatasetKey(rand_bytes())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DatasetKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&self.0).into())
    }

    /// Encrypts a shard's plaintext under this key, binding it to its id.
    pub fn seal(&self, shard: &ShardId, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seal_bound(shard.as_bytes(), plaintext)
    }

    /// Decrypts and checks a sealed shard: authentic, and its content hashes to its id.
    pub fn open(&self, shard: &ShardId, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let plaintext = self.open_bound(shard.as_bytes(), sealed).map_err(|e| match e {
            OpenError::Truncated => SealError::Truncated(*shard),
            OpenError::Authentication => SealError::Authentication(*shard),
        })?;
        let actual = ShardId::of_content(&plaintext);
        if actual != *shard {
            return Err(SealError::WrongContent(*shard, actual));
        }
        Ok(plaintext)
    }

    /// Encrypts `plaintext`, binding it to `name` (authenticated, not encrypted): the sealed
    /// bytes open only under the same name.
    pub fn seal_bound(&self, name: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce_bytes: [u8; NONCE_LEN] = rand_bytes();
        let ciphertext = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: plaintext,
                    aad: name,
                },
            )
            .map_err(|e| SealError::Encrypt(e.to_string()))?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce_bytes);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Decrypts bytes sealed under `name`.
    pub fn open_bound(&self, name: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(OpenError::Truncated);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at the nonce length");
        self.cipher()
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: name,
                },
            )
            .map_err(|_| OpenError::Authentication)
    }
}

/// Why sealed bytes did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("shorter than a nonce and a tag")]
    Truncated,
    #[error("fails authentication: corrupt, sealed under another name or another key")]
    Authentication,
}

impl std::fmt::Debug for DatasetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatasetKey(…)")
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_shard_opens_only_with_its_key_its_name_and_its_bytes() {
        let key = DatasetKey::generate();
        let plaintext = b"parquet bytes".to_vec();
        let shard = ShardId::of_content(&plaintext);
        let sealed = key.seal(&shard, &plaintext).unwrap();
        assert_ne!(
            &sealed[12..],
            &plaintext[..],
            "the bytes at rest are not the plaintext"
        );
        assert_eq!(key.open(&shard, &sealed).unwrap(), plaintext);

        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert_eq!(key.open(&shard, &flipped), Err(SealError::Authentication(shard)));
        assert_eq!(key.open(&shard, &sealed[..20]), Err(SealError::Truncated(shard)));
        let other = ShardId::of_content(b"something else");
        assert_eq!(key.open(&other, &sealed), Err(SealError::Authentication(other)));
        assert_eq!(
            DatasetKey::generate().open(&shard, &sealed),
            Err(SealError::Authentication(shard))
        );

        // Sealed correctly but under a name its content does not hash to: refused after opening.
        let misnamed = key.seal(&other, &plaintext).unwrap();
        assert!(matches!(
            key.open(&other, &misnamed),
            Err(SealError::WrongContent(..))
        ));
    }
}
