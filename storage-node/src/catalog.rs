//! The datasets a storage node holds: each one's manifest and its key, kept on the node's disk
//! (`<data_dir>/datasets/<id>.json` and `<id>.key`, mode 0600). The key never leaves the storage
//! nodes; the manifest is what the Dataset asset publishes. Who holds a dataset now is its
//! [`HolderSet`] (`<id>.holders`), written once a copy was made after the import; until then
//! the holders are the manifest's replicas.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aic_protocol::holders::HolderSet;
use aic_protocol::{AssetId, NodeId, ShardId};

use crate::manifest::Manifest;
use crate::sealing::DatasetKey;

#[derive(Debug, thiserror::Error)]
#[error("dataset catalog {path}: {reason}")]
pub struct CatalogError {
    pub path: PathBuf,
    pub reason: String,
}

pub use aic_protocol::manifest::{dataset_id, dataset_id_of_hash, manifest_hash};

pub struct Catalog {
    dir: PathBuf,
    datasets: BTreeMap<String, (Manifest, DatasetKey)>,
    /// Who imported each dataset (a client certificate's node id), for `DropDataset`.
    importers: BTreeMap<String, NodeId>,
    /// The asset minted for each dataset this node took the upload of: such a dataset is kept
    /// as long as the asset exists (its holder paid for, or may sell, what it names).
    assets: BTreeMap<String, AssetId>,
    /// Holder sets newer than the import's placement.
    holders: BTreeMap<String, HolderSet>,
    /// Where this node's key of each dataset is escrowed (`<id>.escrow`), read once at open.
    escrows: BTreeMap<String, crate::escrow::EscrowedWith>,
}

impl Catalog {
    /// Opens the catalog in `dir`, loading every dataset recorded there.
    pub fn open(dir: &Path) -> Result<Self, CatalogError> {
        let error = |path: &Path, reason: String| CatalogError {
            path: path.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| error(dir, e.to_string()))?;
        let mut datasets = BTreeMap::new();
        let mut importers = BTreeMap::new();
        let mut assets = BTreeMap::new();
        let mut holders = BTreeMap::new();
        let mut escrows = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| error(dir, e.to_string()))? {
            let path = entry.map_err(|e| error(dir, e.to_string()))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let id = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let manifest: Manifest = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
                .map_err(|reason| error(&path, reason))?;
            let key_path = dir.join(format!("{id}.key"));
            let key_bytes = std::fs::read(&key_path).map_err(|e| error(&key_path, e.to_string()))?;
            let key: [u8; 32] = key_bytes
                .try_into()
                .map_err(|_| error(&key_path, "a dataset key is 32 bytes".into()))?;
            let importer_path = dir.join(format!("{id}.importer"));
            if let Ok(text) = std::fs::read_to_string(&importer_path) {
                let importer = text
                    .trim()
                    .parse()
                    .map_err(|_| error(&importer_path, "not a node id".into()))?;
                importers.insert(id.clone(), importer);
            }
            let asset_path = dir.join(format!("{id}.asset"));
            if let Ok(text) = std::fs::read_to_string(&asset_path) {
                let asset = text
                    .trim()
                    .parse()
                    .map_err(|_| error(&asset_path, "not an asset id".into()))?;
                assets.insert(id.clone(), asset);
            }
            let holders_path = dir.join(format!("{id}.holders"));
            if let Ok(text) = std::fs::read_to_string(&holders_path) {
                let set: HolderSet =
                    serde_json::from_str(&text).map_err(|e| error(&holders_path, e.to_string()))?;
                // Written by this node, but checked like any other: a set that does not verify
                // is not trusted to say who may read the sealed shards.
                set.verify(&key)
                    .map_err(|e| error(&holders_path, e.to_string()))?;
                holders.insert(id.clone(), set);
            }
            if let Some(escrowed) = std::fs::read(dir.join(format!("{id}.escrow")))
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            {
                escrows.insert(id.clone(), escrowed);
            }
            datasets.insert(id, (manifest, DatasetKey::from_bytes(key)));
        }
        Ok(Catalog {
            dir: dir.to_path_buf(),
            datasets,
            importers,
            assets,
            holders,
            escrows,
        })
    }

    /// Writes `bytes` to `name` in the catalog's directory atomically (temp file, sync, rename).
    fn write(&self, name: &str, bytes: &[u8], secret: bool) -> Result<(), CatalogError> {
        let path = self.dir.join(name);
        let temp = self.dir.join(format!("{name}.tmp"));
        let result = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&temp)
            .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
            .and_then(|()| std::fs::rename(&temp, &path));
        result.map_err(|e| CatalogError {
            path,
            reason: e.to_string(),
        })
    }

    /// Records a dataset (key first: a manifest without its key would be unreadable; the
    /// manifest last: a dataset is in the catalog once its manifest is).
    pub fn add(
        &mut self,
        manifest: Manifest,
        key: DatasetKey,
        importer: Option<NodeId>,
    ) -> Result<String, CatalogError> {
        let id = dataset_id(&manifest);
        self.write(&format!("{id}.key"), key.as_bytes(), true)?;
        if let Some(importer) = importer {
            self.write(&format!("{id}.importer"), importer.to_string().as_bytes(), false)?;
            self.importers.insert(id.clone(), importer);
        }
        self.write(&format!("{id}.json"), manifest.to_json().as_bytes(), false)?;
        self.datasets.insert(id.clone(), (manifest, key));
        Ok(id)
    }

    /// Records a copy taken from another holder: key, holder set, then the manifest (a dataset
    /// is in the catalog once its manifest is, and by then its holders are the new ones).
    pub fn add_copy(
        &mut self,
        manifest: Manifest,
        key: DatasetKey,
        holders: HolderSet,
    ) -> Result<String, CatalogError> {
        let id = dataset_id(&manifest);
        self.write(&format!("{id}.key"), key.as_bytes(), true)?;
        self.write_holders(&id, &holders)?;
        self.write(&format!("{id}.json"), manifest.to_json().as_bytes(), false)?;
        self.holders.insert(id.clone(), holders);
        self.datasets.insert(id.clone(), (manifest, key));
        Ok(id)
    }

    /// Who holds a dataset now: its recorded holder set, or the import's placement.
    pub fn holders(&self, id: &str) -> Option<HolderSet> {
        let (manifest, key) = self.datasets.get(id)?;
        Some(match self.holders.get(id) {
            Some(set) => set.clone(),
            None => HolderSet::at_import(id, &manifest.replicas, key.as_bytes()),
        })
    }

    /// Keeps `set` as the dataset's holders if it is newer than what is kept; answers the epoch
    /// kept. The caller has verified it under the dataset's key.
    pub fn set_holders(&mut self, id: &str, set: HolderSet) -> Result<u64, CatalogError> {
        let current = self.holders(id).map_or(0, |h| h.epoch);
        if set.epoch <= current {
            return Ok(current);
        }
        self.write_holders(id, &set)?;
        let epoch = set.epoch;
        self.holders.insert(id.to_string(), set);
        Ok(epoch)
    }

    fn write_holders(&self, id: &str, set: &HolderSet) -> Result<(), CatalogError> {
        let json = serde_json::to_string(set).expect("a holder set always encodes");
        self.write(&format!("{id}.holders"), json.as_bytes(), false)
    }

    /// Forgets a dataset (manifest first, so a crash half-way leaves no listed dataset). Its
    /// shards are deleted by the caller.
    pub fn remove(&mut self, id: &str) -> Result<Option<Manifest>, CatalogError> {
        let Some((manifest, _)) = self.datasets.remove(id) else {
            return Ok(None);
        };
        self.importers.remove(id);
        self.assets.remove(id);
        self.holders.remove(id);
        self.escrows.remove(id);
        for suffix in ["json", "importer", "asset", "holders", "escrow", "key"] {
            let path = self.dir.join(format!("{id}.{suffix}"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(CatalogError {
                        path,
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(Some(manifest))
    }

    pub fn importer(&self, id: &str) -> Option<&NodeId> {
        self.importers.get(id)
    }

    /// The asset minted for a dataset, when this node took its upload and the mint succeeded.
    pub fn asset(&self, id: &str) -> Option<&AssetId> {
        self.assets.get(id)
    }

    /// Records the asset minted for a dataset this node holds.
    pub fn set_asset(&mut self, id: &str, asset: AssetId) -> Result<(), CatalogError> {
        let path = self.dir.join(format!("{id}.asset"));
        let temp = self.dir.join(format!("{id}.asset.tmp"));
        std::fs::write(&temp, asset.to_string())
            .and_then(|()| std::fs::rename(&temp, &path))
            .map_err(|e| CatalogError {
                path,
                reason: e.to_string(),
            })?;
        self.assets.insert(id.to_string(), asset);
        Ok(())
    }

    /// Whether another dataset still names `shard` (content-addressed shards can be shared).
    pub fn references(&self, shard: &ShardId) -> bool {
        self.holder_of(shard).is_some()
    }

    /// The dataset that names `shard`, if any.
    pub fn holder_of(&self, shard: &ShardId) -> Option<&str> {
        let id = shard.to_string();
        self.datasets
            .iter()
            .find(|(_, (m, _))| m.shards().any(|e| e.id == id))
            .map(|(dataset, _)| dataset.as_str())
    }

    pub fn get(&self, id: &str) -> Option<&(Manifest, DatasetKey)> {
        self.datasets.get(id)
    }

    /// Where this node's key of `id` is escrowed; nowhere when unrecorded.
    pub fn escrowed_with(&self, id: &str) -> crate::escrow::EscrowedWith {
        self.escrows.get(id).cloned().unwrap_or_default()
    }

    /// Records where this node's key of `id` is escrowed (`<id>.escrow`).
    pub fn set_escrowed_with(
        &mut self,
        id: &str,
        escrowed: &crate::escrow::EscrowedWith,
    ) -> Result<(), CatalogError> {
        let json = serde_json::to_vec(escrowed).expect("an escrow record always encodes");
        self.write(&format!("{id}.escrow"), &json, false)?;
        self.escrows.insert(id.to_string(), escrowed.clone());
        Ok(())
    }

    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.datasets.keys()
    }

    /// Every shard the catalog expects, with the dataset it belongs to.
    pub fn expected_shards(&self) -> BTreeMap<ShardId, String> {
        let mut shards = BTreeMap::new();
        for (id, (manifest, _)) in &self.datasets {
            for entry in manifest.train.iter().chain(&manifest.test) {
                if let Ok(shard) = entry.id.parse() {
                    shards.insert(shard, id.clone());
                }
            }
        }
        shards
    }
}
