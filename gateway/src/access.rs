//! Who may call, and what: API keys (the gateway sees a key, the ledger only its BLAKE3 hash),
//! one ledger round trip per call for the key, its account's inference escrow and the model's
//! publication; per-key rate limits; and each served model's preprocessing, built once from its
//! TrainedModel and Dataset assets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aic_kernels::inference::Preprocessor;
use aic_ledger::amount::Amount;
use aic_ledger::api::{InferenceAccess, LedgerRequest, LedgerResponse, PublishedModel};
use aic_ledger::tx::AssetKind;
use aic_ledger::Address;
use aic_protocol::manifest::Manifest;
use aic_protocol::messages::ServedModel;
use aic_protocol::AssetId;

use super::ledger::Ledger;

/// What every key starts with, so a leaked one is recognisable.
pub const KEY_PREFIX: &str = "aic_";

/// A fresh API key: the prefix and 32 random bytes in hex.
pub fn new_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// The hash the ledger binds to an account.
pub fn key_hash(key: &str) -> [u8; 32] {
    *blake3::hash(key.as_bytes()).as_bytes()
}

/// Why a call is refused before any work (each a 4xx), or cannot be checked (503).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no API key: send `Authorization: Bearer <key>`")]
    NoKey,
    #[error("this API key is not registered")]
    UnknownKey,
    #[error("this API key was revoked")]
    RevokedKey,
    #[error("no published model {0:?}")]
    UnknownModel(String),
    #[error("model {model:?} has no version {version:?} (its version is {actual:?})")]
    UnknownVersion {
        model: String,
        version: String,
        actual: String,
    },
    #[error("the account's inference escrow holds {available} AIC; this call needs {needed} AIC more than is already owed")]
    NoFunds { needed: Amount, available: Amount },
    #[error("too many requests for this API key; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the model cannot be served: {0}")]
    BrokenModel(String),
    #[error("the ledger could not be read: {0}")]
    Ledger(String),
}

/// A caller the ledger vouches for, and the model it asked for.
pub struct Access {
    pub account: Address,
    pub escrow: Amount,
    pub published: PublishedModel,
}

/// What the ledger said about a key and a model name, kept for a short while: a busy key costs
/// one linearizable ledger read per `ttl`, not one per call. A revocation, an unpublication or a
/// new escrow balance is seen within `ttl` (zero: every call reads the ledger).
pub struct AccessCache {
    ttl: std::time::Duration,
    entries: Mutex<HashMap<AccessSlot, (Instant, InferenceAccess)>>,
}

/// A key's hash and a model's name as the call gave it.
type AccessSlot = ([u8; 32], String);

/// Entries the cache holds before it starts over.
const MAX_CACHED_ACCESSES: usize = 10_000;

impl AccessCache {
    pub fn new(ttl: std::time::Duration) -> Self {
        AccessCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    async fn get(&self, ledger: &Ledger, key_hash: [u8; 32], model: &str) -> Result<InferenceAccess, Denied> {
        let slot = (key_hash, model.to_string());
        if let Some((at, access)) = self.entries.lock().expect("access cache").get(&slot) {
            if at.elapsed() < self.ttl {
                return Ok(access.clone());
            }
        }
        let request = LedgerRequest::InferenceAccess {
            key_hash,
            model: model.to_string(),
        };
        let access = match ledger.request(&request).await {
            Ok(LedgerResponse::InferenceAccess(access)) => access,
            Ok(other) => return Err(Denied::Ledger(format!("unexpected answer {other:?}"))),
            Err(e) => return Err(Denied::Ledger(e)),
        };
        if !self.ttl.is_zero() {
            let mut entries = self.entries.lock().expect("access cache");
            if entries.len() >= MAX_CACHED_ACCESSES {
                entries.clear();
            }
            entries.insert(slot, (Instant::now(), access.clone()));
        }
        Ok(access)
    }
}

/// Checks `key` and resolves `model`: one ledger read (or a recent answer from `cache`).
pub async fn check(
    ledger: &Ledger,
    cache: &AccessCache,
    key: Option<&str>,
    model: &str,
) -> Result<Access, Denied> {
    let key = key.ok_or(Denied::NoKey)?;
    let access = cache.get(ledger, key_hash(key), model).await?;
    let record = access.key.ok_or(Denied::UnknownKey)?;
    if record.revoked {
        return Err(Denied::RevokedKey);
    }
    let published = access
        .model
        .ok_or_else(|| Denied::UnknownModel(model.to_string()))?;
    Ok(Access {
        account: record.account,
        escrow: access.escrow,
        published,
    })
}

/// The model's publication alone (metadata and readiness need no key).
pub async fn published(ledger: &Ledger, model: &str) -> Result<PublishedModel, Denied> {
    let request = LedgerRequest::InferenceAccess {
        key_hash: [0; 32],
        model: model.to_string(),
    };
    match ledger.request(&request).await {
        Ok(LedgerResponse::InferenceAccess(access)) => access
            .model
            .ok_or_else(|| Denied::UnknownModel(model.to_string())),
        Ok(other) => Err(Denied::Ledger(format!("unexpected answer {other:?}"))),
        Err(e) => Err(Denied::Ledger(e)),
    }
}

/// What one call of `rows` rows may cost at most: the owner's price, compute and platform fee,
/// each rounded up (settlement rounds down per period, so the check never under-asks).
pub fn call_cost(per_1k_rows: &[Amount], rows: u64) -> Amount {
    per_1k_rows.iter().fold(Amount::ZERO, |sum, price| {
        let cost = price.0.saturating_mul(u128::from(rows)).div_ceil(1000);
        Amount(sum.0.saturating_add(cost))
    })
}

/// A served model as the gateway keeps it.
pub struct ModelEntry {
    pub id: AssetId,
    /// Its metric label: the alias, or `unaliased`.
    pub label: String,
    /// The version: the job that trained it.
    pub version: String,
    pub served: ServedModel,
    pub preprocessor: Preprocessor,
}

/// Models built so far, by asset (a TrainedModel's content never changes).
#[derive(Default)]
pub struct Models {
    built: Mutex<HashMap<AssetId, Arc<ModelEntry>>>,
}

impl Models {
    pub async fn entry(
        &self,
        ledger: &Ledger,
        published: &PublishedModel,
    ) -> Result<Arc<ModelEntry>, Denied> {
        if let Some(entry) = self.built.lock().expect("models").get(&published.id) {
            return Ok(entry.clone());
        }
        let broken = |why: String| Denied::BrokenModel(why);
        let manifest: serde_json::Value = serde_json::from_str(&published.asset.metadata.manifest)
            .map_err(|e| broken(format!("its manifest is not JSON: {e}")))?;
        let served = ServedModel::from_trained_manifest(
            published.id,
            published.asset.metadata.content_hash,
            &manifest,
        )
        .map_err(broken)?;
        let dataset_id: AssetId = manifest["dataset_asset"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| broken("its manifest names no dataset".into()))?;
        let dataset = match ledger.request(&LedgerRequest::Asset(dataset_id)).await {
            Ok(LedgerResponse::Asset(Some(asset))) if asset.kind == AssetKind::Dataset => asset,
            Ok(_) => return Err(broken(format!("its dataset {dataset_id} is not a Dataset asset"))),
            Err(e) => return Err(Denied::Ledger(e)),
        };
        let dataset = Manifest::from_json(&dataset.metadata.manifest)
            .map_err(|e| broken(format!("dataset {dataset_id}: {e}")))?;
        let preprocessor = Preprocessor::new(&served.model, &dataset).map_err(|e| broken(e.to_string()))?;
        let entry = Arc::new(ModelEntry {
            id: published.id,
            label: published
                .publication
                .alias
                .clone()
                .unwrap_or_else(|| super::metrics::UNALIASED_MODEL.to_string()),
            version: manifest["job"].as_str().unwrap_or_default().to_string(),
            served,
            preprocessor,
        });
        self.built
            .lock()
            .expect("models")
            .insert(published.id, entry.clone());
        Ok(entry)
    }
}

/// Token buckets per key: `per_minute` requests a minute, saving up to `burst`.
pub struct RateLimiter {
    /// Tokens a second.
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<[u8; 32], (f64, Instant)>>,
}

/// Keys the limiter remembers before it forgets idle ones.
const MAX_TRACKED_KEYS: usize = 100_000;

impl RateLimiter {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(per_minute) / 60.0,
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`, or refuses.
    pub fn admit(&self, key: &[u8; 32]) -> Result<(), Denied> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter");
        if buckets.len() >= MAX_TRACKED_KEYS {
            // A full bucket is what a forgotten key gets back: forgetting never tightens a limit.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry(*key).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens < 1.0 {
            let wait = (1.0 - *tokens) / self.rate;
            return Err(Denied::RateLimited {
                retry_after_secs: wait.ceil().max(1.0) as u64,
            });
        }
        *tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_never_costs_less_than_its_share_of_a_period() {
        let price = Amount(1_000_000_000_000_000); // 0.001 AIC per 1,000 rows
        assert_eq!(call_cost(&[price], 1000), price);
        assert_eq!(call_cost(&[price], 1), Amount(1_000_000_000_000));
        let odd = Amount(7);
        // 7 base units per 1,000 rows: one row costs 0.007, rounded up to 1.
        assert_eq!(call_cost(&[odd], 1), Amount(1));
        assert_eq!(call_cost(&[odd, odd], 2000), Amount(28));
        assert_eq!(call_cost(&[], 10), Amount::ZERO);
    }

    #[test]
    fn a_key_gets_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(1, 3);
        let key = key_hash("aic_test");
        for _ in 0..3 {
            limiter.admit(&key).unwrap();
        }
        // One token a minute: the next is most of a minute away.
        match limiter.admit(&key) {
            Err(Denied::RateLimited { retry_after_secs }) => {
                assert!((59..=60).contains(&retry_after_secs), "{retry_after_secs}")
            }
            other => panic!("{other:?}"),
        }
        // Another key has its own bucket.
        limiter.admit(&key_hash("aic_other")).unwrap();
    }

    #[test]
    fn keys_are_long_random_and_hashed() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        assert_eq!(key_hash(&a), *blake3::hash(a.as_bytes()).as_bytes());
    }
}
