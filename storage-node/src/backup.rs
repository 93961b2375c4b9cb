//! A storage node's backup and restore (`aic storage backup|restore`). The backup is the node's
//! data dir without its secrets: sealed shards (encrypted at rest already), manifests, holder
//! sets, where each key is escrowed, and the keys it keeps in escrow for others (sealed to it).
//! Dataset keys are never in it: a restore recovers each from the storage nodes it was escrowed
//! with (see [`crate::escrow`]), checks it opens the dataset's shards, and only then lists the
//! dataset again. The tensor store's key is not in it either: jobs' weights come back from their
//! other holders, or not at all.

use std::path::{Path, PathBuf};

use aic_protocol::manifest::Manifest;
use aic_protocol::messages::{PeerRequest, PeerResponse};
use aic_protocol::rpc::RpcClient;
use aic_protocol::{Role, ShardId};

use crate::config::StorageConfig;
use crate::escrow::{self, EscrowedWith};
use crate::sealing::DatasetKey;

/// Files a backup leaves out: the secrets, and what is half-written.
fn left_out(relative: &Path) -> bool {
    let name = relative.file_name().unwrap_or_default().to_string_lossy();
    let in_catalog = relative.parent().is_some_and(|p| p == Path::new("datasets"));
    (in_catalog && name.ends_with(".key")) || relative == Path::new("tensors.key") || name.ends_with(".tmp")
}

#[derive(Debug, thiserror::Error)]
pub enum StorageBackupError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} is not empty: a backup goes into a new directory, a restore into an empty data dir")]
    NotEmpty(String),
    #[error("{0} holds no storage node backup (no datasets/ directory)")]
    NotABackup(String),
    #[error("this node's identity: {0}")]
    Identity(String),
}

/// What a backup wrote.
#[derive(Debug, Default)]
pub struct BackupReport {
    pub datasets: usize,
    pub files: usize,
    pub bytes: u64,
    /// Datasets whose key is escrowed nowhere yet: a restore could not open them.
    pub unescrowed: Vec<String>,
    /// Set when the shards live in an object store the backup does not copy.
    pub shards_elsewhere: Option<String>,
}

/// What a restore did, per dataset.
#[derive(Debug, Default)]
pub struct RestoreReport {
    pub recovered: Vec<String>,
    /// Datasets whose key no escrow gave back (or did not open their shards), set aside under
    /// `unrecovered/` so the node starts without them.
    pub unrecovered: Vec<(String, String)>,
}

fn is_empty_or_absent(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

fn copy_tree(
    from: &Path,
    to: &Path,
    base: &Path,
    report: &mut BackupReport,
) -> Result<(), StorageBackupError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |e| StorageBackupError::Io(path, e)
    };
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let path = entry.path();
        let relative = path.strip_prefix(base).unwrap_or(&path).to_path_buf();
        if left_out(&relative) {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().map_err(io(&path))?.is_dir() {
            copy_tree(&path, &target, base, report)?;
        } else {
            report.bytes += std::fs::copy(&path, &target).map_err(io(&path))?;
            report.files += 1;
        }
    }
    Ok(())
}

/// Copies the node's data dir, without its secrets, into the new directory `out`. The node may
/// be running: shards are immutable and named by their content, catalog files are replaced
/// atomically.
pub fn backup(config: &StorageConfig, out: &Path) -> Result<BackupReport, StorageBackupError> {
    if !is_empty_or_absent(out) {
        return Err(StorageBackupError::NotEmpty(out.display().to_string()));
    }
    let data = &config.storage.data_dir;
    let mut report = BackupReport::default();
    if !config.storage.store.is_empty() {
        report.shards_elsewhere = Some(config.storage.store.clone());
    }
    copy_tree(data, out, data, &mut report)?;
    let catalog = data.join("datasets");
    for id in dataset_ids(&out.join("datasets"))? {
        report.datasets += 1;
        if escrowed_with(&catalog, &id).nodes.is_empty() {
            report.unescrowed.push(id);
        }
    }
    Ok(report)
}

fn dataset_ids(catalog: &Path) -> Result<Vec<String>, StorageBackupError> {
    let entries = std::fs::read_dir(catalog)
        .map_err(|_| StorageBackupError::NotABackup(catalog.display().to_string()))?;
    let mut ids: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
        .collect();
    ids.sort();
    Ok(ids)
}

fn escrowed_with(catalog: &Path, id: &str) -> EscrowedWith {
    std::fs::read(catalog.join(format!("{id}.escrow")))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Restores the node's data dir (empty or absent) from `from`, recovering each dataset's key from
/// its escrows with this node's identity (the same key as when it was backed up). Run with the
/// node stopped; start it afterwards.
pub async fn restore(config: &StorageConfig, from: &Path) -> Result<RestoreReport, StorageBackupError> {
    let data = config.storage.data_dir.clone();
    if !is_empty_or_absent(&data) {
        return Err(StorageBackupError::NotEmpty(data.display().to_string()));
    }
    let ids = dataset_ids(&from.join("datasets"))?;
    let identity = config
        .endpoint
        .tls
        .load()
        .map_err(|e| StorageBackupError::Identity(e.to_string()))?;
    let secret = aic_ledger::Keypair::from_pkcs8_der(identity.key.secret_der())
        .map_err(StorageBackupError::Identity)?
        .secret_bytes();
    let outbound = aic_protocol::transport::outbound_endpoint(&identity)
        .map_err(|e| StorageBackupError::Identity(e.to_string()))?;
    let mut copied = BackupReport::default();
    copy_tree(from, &data, from, &mut copied)?;
    let store_url = if config.storage.store.is_empty() {
        data.join("shards").display().to_string()
    } else {
        config.storage.store.clone()
    };
    let store = crate::shard_store::ShardStore::from_url(&store_url)
        .map_err(|e| StorageBackupError::Io(store_url.clone(), std::io::Error::other(e.to_string())))?;
    let catalog = data.join("datasets");
    let mut report = RestoreReport::default();
    for id in ids {
        let outcome = recover_key(&outbound, &secret, &catalog, &id, &store).await;
        match outcome {
            Ok(key) => {
                write_key(&catalog.join(format!("{id}.key")), &key)?;
                report.recovered.push(id);
            }
            Err(reason) => {
                set_aside(&data, &catalog, &id)?;
                report.unrecovered.push((id, reason));
            }
        }
    }
    outbound.close(0u32.into(), b"restored");
    Ok(report)
}

/// The key of `id` from the first escrow that gives one back and whose key opens a shard.
async fn recover_key(
    outbound: &quinn::Endpoint,
    secret: &[u8; 32],
    catalog: &Path,
    id: &str,
    store: &crate::shard_store::ShardStore,
) -> Result<[u8; 32], String> {
    let manifest: Manifest = std::fs::read_to_string(catalog.join(format!("{id}.json")))
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))?;
    let escrows = escrowed_with(catalog, id);
    if escrows.nodes.is_empty() {
        return Err("its key was escrowed nowhere".into());
    }
    let mut why = Vec::new();
    for (node, addr) in &escrows.nodes {
        let answer = async {
            let client = RpcClient::connect(outbound, addr, Role::Storage)
                .await
                .map_err(|e| e.to_string())?;
            if client.peer().node_id != *node {
                return Err(format!("{addr} is no longer the escrow node {node}"));
            }
            match client
                .call(&PeerRequest::RecoverKey {
                    dataset: id.to_string(),
                })
                .await
                .map_err(|e| e.to_string())?
            {
                PeerResponse::RecoveredKey { sealed } => {
                    escrow::open(secret, id, &sealed).map_err(|e| e.to_string())
                }
                other => Err(format!("unexpected answer {other:?}")),
            }
        };
        match answer.await {
            Ok(key) => match opens_a_shard(&key, &manifest, store).await {
                Ok(()) => return Ok(key),
                Err(reason) => why.push(format!("{addr}: {reason}")),
            },
            Err(reason) => why.push(format!("{addr}: {reason}")),
        }
    }
    Err(why.join("; "))
}

/// Whether `key` opens the first shard of the manifest the store holds.
async fn opens_a_shard(
    key: &[u8; 32],
    manifest: &Manifest,
    store: &crate::shard_store::ShardStore,
) -> Result<(), String> {
    let key = DatasetKey::from_bytes(*key);
    for entry in manifest.train.iter().chain(&manifest.test) {
        let Ok(shard) = entry.id.parse::<ShardId>() else {
            continue;
        };
        if let Ok(sealed) = store.get(&shard).await {
            return key
                .open(&shard, &sealed)
                .map(|_| ())
                .map_err(|e| format!("the recovered key does not open the shards: {e}"));
        }
    }
    Err("none of its shards is in the backup".into())
}

fn write_key(path: &Path, key: &[u8; 32]) -> Result<(), StorageBackupError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| StorageBackupError::Io(path.display().to_string(), e);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(key).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Moves a dataset whose key did not come back out of the catalog, so the node starts without it.
fn set_aside(data: &Path, catalog: &Path, id: &str) -> Result<(), StorageBackupError> {
    let aside: PathBuf = data.join("unrecovered");
    std::fs::create_dir_all(&aside).map_err(|e| StorageBackupError::Io(aside.display().to_string(), e))?;
    for suffix in ["json", "importer", "asset", "holders", "escrow"] {
        let path = catalog.join(format!("{id}.{suffix}"));
        if path.exists() {
            std::fs::rename(&path, aside.join(format!("{id}.{suffix}")))
                .map_err(|e| StorageBackupError::Io(path.display().to_string(), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_half_written_files_stay_out_of_a_backup() {
        assert!(left_out(Path::new("datasets/ab12.key")));
        assert!(left_out(Path::new("tensors.key")));
        assert!(left_out(Path::new("datasets/ab12.json.tmp")));
        assert!(!left_out(Path::new("datasets/ab12.json")));
        assert!(!left_out(Path::new("datasets/ab12.escrow")));
        assert!(!left_out(Path::new("escrow/ab12.00ff.json")));
        assert!(!left_out(Path::new("shards/ab/abcdef")));
    }
}
