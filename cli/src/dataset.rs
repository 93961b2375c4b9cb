//! `aic dataset list|stat|preview|import|export`: what storage nodes hold, a capped free look,
//! importing a CSV or Parquet file onto R storage nodes with its Dataset asset minted to the
//! importer, and exporting plain Parquet to the asset's owner.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::tx::AssetKind;
use aic_ledger::{Amount, Keypair};
use aic_protocol::messages::{ClientRequest, ClientResponse, DatasetStat, NodeState, NodeStatus, OwnerProof};
use aic_protocol::rpc::RpcClient;
use aic_protocol::transport;
use aic_protocol::{AssetId, NodeId, Role, ShardId};
use aic_storage_node::catalog::{dataset_id_of_hash, manifest_hash};
use aic_storage_node::encoding::MissingPolicy;
use aic_storage_node::import::{analyse, encode, Analysis, ColumnType, ImportOptions, Progress};
use aic_storage_node::manifest::{Manifest, ReplicaLocation};
use aic_storage_node::upload_client::UploadSink;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::ledger_client::{self, load_wallet, wallet_path};
use crate::nodes::{self, ClientArgs, ClientProfile};
use crate::wallet::print_out;

#[derive(Args, Clone, Debug)]
pub struct DatasetArgs {
    #[command(subcommand)]
    pub command: DatasetCommand,
    #[command(flatten)]
    pub client: ClientArgs,
    /// A storage node's QUIC address (default: chosen from the nodes the scheduler lists up).
    #[arg(long, global = true)]
    pub storage: Option<String>,
    /// The wallet that owns imported datasets and signs export proofs.
    #[arg(long, global = true)]
    pub wallet: Option<PathBuf>,
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Clone, Debug)]
pub enum DatasetCommand {
    /// Datasets held by a storage node.
    List,
    /// A dataset's shards and their state (healthy, damaged, missing) on a storage node.
    Stat { dataset: String },
    /// Up to ROWS random preprocessed rows (never more than 1 % of the dataset or 100 rows).
    Preview {
        dataset: String,
        #[arg(long, default_value_t = 10)]
        rows: u32,
    },
    /// Preprocess a CSV or Parquet file, store it on R storage nodes, mint its Dataset asset.
    Import(Box<ImportArgs>),
    /// Write a dataset (or trained model) you own as plain Parquet files and its manifest into DIR.
    Export {
        asset: AssetId,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Clone, Debug)]
pub struct ImportArgs {
    pub file: PathBuf,
    /// The column holding the class label.
    #[arg(long, required_unless_present = "target", conflicts_with = "target")]
    pub label: Option<String>,
    /// A numeric column to regress on, instead of a class label.
    #[arg(long)]
    pub target: Option<String>,
    /// The dataset's name (default: the file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Rows per shard (default: shards of about 1 MiB of encoded values, at least 512 rows,
    /// and at least 64 shards where the file has the rows).
    #[arg(long)]
    pub shard_rows: Option<usize>,
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Seeds the train/test split.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// What a job pays you each time it uses the dataset, in AIC.
    #[arg(long, default_value = "0")]
    pub fee: Amount,
    /// How many storage nodes hold the dataset.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Leave a column out (repeatable).
    #[arg(long = "exclude", value_name = "COL")]
    pub exclude: Vec<String>,
    /// Say what a column is: COL=numeric|categorical|text|date (repeatable).
    #[arg(long = "column-type", value_name = "COL=TYPE", value_parser = parse_column_type)]
    pub column_types: Vec<(String, ColumnType)>,
    /// What a column's missing values become: COL=mean|median|most_frequent|level|drop_row|refuse
    /// (repeatable; defaults: mean for numbers and dates, a "<missing>" level for categories,
    /// drop_row for the label).
    #[arg(long = "missing", value_name = "COL=POLICY", value_parser = parse_policy)]
    pub missing: Vec<(String, MissingPolicy)>,
    /// A value read as missing (repeatable; replaces the defaults: empty, NA, N/A, NaN, null, None).
    #[arg(long = "null-marker", value_name = "TEXT")]
    pub null_markers: Vec<String>,
    /// Print the import report and store nothing.
    /// Read the input columns as images, CxHxW (row-major pixels), e.g. 1x8x8: recorded in the
    /// manifest for models whose input is an image.
    #[arg(long, value_name = "CxHxW", value_parser = parse_image_shape)]
    pub image_shape: Option<[u64; 3]>,
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_column_type(text: &str) -> Result<(String, ColumnType), String> {
    let (column, kind) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("{text:?}: expected COL=TYPE"))?;
    Ok((column.to_string(), kind.parse()?))
}

fn parse_policy(text: &str) -> Result<(String, MissingPolicy), String> {
    let (column, policy) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("{text:?}: expected COL=POLICY"))?;
    Ok((column.to_string(), policy.parse()?))
}

impl ImportArgs {
    /// A plain import of `file` with the class label `label` and every other choice defaulted.
    pub fn new(file: PathBuf, label: &str) -> Self {
        ImportArgs {
            file,
            label: Some(label.to_string()),
            target: None,
            name: None,
            shard_rows: None,
            test_fraction: 0.2,
            seed: 42,
            fee: Amount::ZERO,
            replicas: 2,
            exclude: Vec::new(),
            column_types: Vec::new(),
            missing: Vec::new(),
            null_markers: Vec::new(),
            image_shape: None,
            dry_run: false,
        }
    }

    fn options(&self) -> ImportOptions {
        let (label, regression) = match (&self.label, &self.target) {
            (_, Some(target)) => (target.clone(), true),
            (Some(label), None) => (label.clone(), false),
            (None, None) => (String::new(), false),
        };
        ImportOptions {
            regression,
            shard_rows: self.shard_rows,
            test_fraction: self.test_fraction,
            seed: self.seed,
            exclude: self.exclude.clone(),
            column_types: self.column_types.iter().cloned().collect(),
            missing: self.missing.iter().cloned().collect(),
            null_markers: self.null_markers.clone(),
            image_shape: self.image_shape,
            ..ImportOptions::new(&label)
        }
    }

    fn dataset_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.file
                .file_stem()
                .map_or("dataset".into(), |s| s.to_string_lossy().into_owned())
        })
    }
}

/// `CxHxW`, each a whole number of at least 1.
fn parse_image_shape(text: &str) -> Result<[u64; 3], String> {
    let dims: Vec<u64> = text
        .split(['x', 'X', '×'])
        .map(|d| d.trim().parse::<u64>().ok().filter(|d| *d >= 1))
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| format!("{text:?} is not CxHxW (e.g. 1x8x8)"))?;
    match dims[..] {
        [c, h, w] => Ok([c, h, w]),
        _ => Err(format!("{text:?} is not CxHxW (e.g. 1x8x8)")),
    }
}

pub(crate) async fn dial_storage(profile: &ClientProfile, addr: &str) -> anyhow::Result<RpcClient> {
    let endpoint = transport::outbound_endpoint(&profile.tls.load()?)?;
    RpcClient::connect(&endpoint, addr, Role::Storage)
        .await
        .with_context(|| format!("connecting to storage node {addr}"))
}

async fn storage_nodes_up(profile: &ClientProfile) -> anyhow::Result<Vec<NodeStatus>> {
    let scheduler = nodes::connect(profile).await?;
    Ok(nodes::list_nodes(&scheduler)
        .await?
        .into_iter()
        .filter(|n| n.role == Role::Storage && n.state == NodeState::Up)
        .collect())
}

/// `--storage`, else a storage node the scheduler lists up (one holding `dataset` whole, when
/// one is named).
async fn pick_storage(args: &DatasetArgs, dataset: Option<&str>) -> anyhow::Result<String> {
    if let Some(addr) = &args.storage {
        return Ok(addr.clone());
    }
    let up = storage_nodes_up(&args.client.load()?).await?;
    let holder = up.iter().find(|n| {
        dataset.is_none_or(|d| {
            n.holdings
                .iter()
                .any(|h| h.dataset == d && h.healthy_shards == h.shards)
        })
    });
    match (holder, dataset) {
        (Some(node), _) => Ok(node.quic_addr.clone()),
        (None, Some(d)) => {
            bail!("no storage node that is up reports holding dataset {d} intact; pass --storage")
        }
        (None, None) => bail!("the scheduler lists no storage node that is up; pass --storage"),
    }
}

pub async fn run(args: DatasetArgs) -> anyhow::Result<()> {
    match &args.command {
        DatasetCommand::List => list(&args).await,
        DatasetCommand::Stat { dataset } => {
            let client = dial_storage(&args.client.load()?, &pick_storage(&args, None).await?).await?;
            let stat = stat(&client, dataset).await?;
            print_stat(args.json, &stat);
            Ok(())
        }
        DatasetCommand::Preview { dataset, rows } => preview(&args, dataset, *rows).await,
        DatasetCommand::Import(import) => run_import(&args, import).await,
        DatasetCommand::Export { asset, out } => export(&args, asset, out).await,
    }
}

async fn list(args: &DatasetArgs) -> anyhow::Result<()> {
    let client = dial_storage(&args.client.load()?, &pick_storage(args, None).await?).await?;
    let ClientResponse::Datasets(datasets) = client.call(&ClientRequest::ListDatasets).await? else {
        bail!("unexpected answer");
    };
    let rows: Vec<_> = datasets
        .iter()
        .map(|d| json!({"id": d.id, "name": d.name, "rows": d.rows, "shards": d.shards}))
        .collect();
    print_out(args.json, json!(rows), || {
        if datasets.is_empty() {
            return "no datasets".to_string();
        }
        datasets
            .iter()
            .map(|d| {
                format!(
                    "{}  {:<20} {:>9} rows  {:>4} shards",
                    d.id, d.name, d.rows, d.shards
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

async fn stat(client: &RpcClient, dataset: &str) -> anyhow::Result<DatasetStat> {
    match client
        .call(&ClientRequest::Stat {
            dataset: dataset.to_string(),
        })
        .await?
    {
        ClientResponse::Stat(stat) => Ok(stat),
        other => bail!("unexpected answer {other:?}"),
    }
}

fn print_stat(as_json: bool, stat: &DatasetStat) {
    let shards: Vec<_> = stat
        .shards
        .iter()
        .map(|s| json!({"id": s.id.to_string(), "split": if s.test {"test"} else {"train"}, "rows": s.rows, "bytes": s.bytes, "state": s.state.as_str()}))
        .collect();
    // The import report travels in the manifest the storage node holds.
    let manifest = Manifest::from_json(&stat.summary.manifest).ok();
    let input_width = manifest.as_ref().map(|m| m.input_width());
    let report = manifest.as_ref().map(|m| m.report.clone()).unwrap_or_default();
    let value = json!({
        "id": stat.summary.id,
        "name": stat.summary.name,
        "rows": stat.summary.rows,
        "input_width": input_width,
        "rows_dropped": manifest.as_ref().map(|m| m.rows_dropped),
        "report": report,
        "shards": shards,
    });
    print_out(as_json, value, || {
        let mut text = match &manifest {
            Some(m) if !m.report.is_empty() => {
                aic_storage_node::report::render(&m.report, m.rows, m.rows_dropped, m.input_width())
            }
            _ => String::new(),
        };
        text.push_str(&format!(
            "{}  {}  {} rows in {} shards\n",
            stat.summary.id,
            stat.summary.name,
            stat.summary.rows,
            stat.shards.len()
        ));
        for s in &stat.shards {
            text.push_str(&format!(
                "  {}  {:<5} {:>7} rows {:>9} bytes  {}\n",
                s.id,
                if s.test { "test" } else { "train" },
                s.rows,
                s.bytes,
                s.state.as_str()
            ));
        }
        text.trim_end().to_string()
    });
}

async fn preview(args: &DatasetArgs, dataset: &str, rows: u32) -> anyhow::Result<()> {
    let client = dial_storage(&args.client.load()?, &pick_storage(args, None).await?).await?;
    let request = ClientRequest::Preview {
        dataset: dataset.to_string(),
        rows,
    };
    let ClientResponse::Preview(preview) = client.call(&request).await? else {
        bail!("unexpected answer");
    };
    let value = json!({"columns": preview.columns, "rows": preview.rows, "labels": preview.labels});
    print_out(args.json, value, || {
        let mut text = format!(
            "{} rows of {} features (standardised)\n",
            preview.rows.len(),
            preview.columns.len()
        );
        for (row, label) in preview.rows.iter().zip(&preview.labels) {
            let head: Vec<String> = row.iter().take(6).map(|v| format!("{v:>6.2}")).collect();
            text.push_str(&format!("class {label:>3}: {} …\n", head.join(" ")));
        }
        text
    });
    Ok(())
}

/// Where the dataset goes: `storage` (or the roomiest node) first, then the roomiest others.
async fn placement(
    profile: &ClientProfile,
    storage: Option<&str>,
    replicas: usize,
) -> anyhow::Result<Vec<ReplicaLocation>> {
    if replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    let mut up = storage_nodes_up(profile).await?;
    let free = |n: &NodeStatus| {
        let held: u64 = n.holdings.iter().map(|h| h.bytes).sum();
        n.capacity.storage_bytes.saturating_sub(held)
    };
    up.sort_by_key(|n| std::cmp::Reverse(free(n)));
    if let Some(addr) = storage {
        let Some(at) = up.iter().position(|n| n.quic_addr == addr) else {
            bail!("--storage {addr} is not a storage node the scheduler lists up");
        };
        let first = up.remove(at);
        up.insert(0, first);
    }
    if up.len() < replicas {
        bail!(
            "--replicas {replicas} needs {replicas} storage nodes up, but the scheduler lists {}",
            up.len()
        );
    }
    Ok(up
        .into_iter()
        .take(replicas)
        .map(|n| ReplicaLocation {
            node: n.node_id.to_string(),
            quic_addr: n.quic_addr,
        })
        .collect())
}

pub(crate) fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}")
            .expect("a valid template"),
    );
    bar
}

async fn run_import(args: &DatasetArgs, import: &ImportArgs) -> anyhow::Result<()> {
    // Pass 1 first: the report is shown (and anything refused) before a byte is sent.
    let analysis = analyse_file(import)?;
    let report =
        || aic_storage_node::report::render(&analysis.report, analysis.rows, 0, analysis.input_width());
    if import.dry_run {
        let value = json!({
            "dry_run": true,
            "name": analysis.name,
            "rows": analysis.rows,
            "input_width": analysis.input_width(),
            "classes": analysis.classes,
            "target": analysis.target.is_some(),
            "excluded": analysis.excluded,
            "report": analysis.report,
        });
        print_out(args.json, value, || {
            format!("{}(dry run: nothing stored)", report())
        });
        return Ok(());
    }
    if !args.json {
        eprint!("{}", report());
    }
    let key = load_wallet(&wallet_path(args.wallet.as_ref()))?;
    let profile = args.client.load()?;
    let imported = import_analysed(&profile, args.storage.as_deref(), &key, import, &analysis).await?;
    let manifest = &imported.manifest;
    let value = json!({
        "dataset": imported.dataset,
        "asset": imported.asset.to_string(),
        "name": manifest.name,
        "rows": manifest.rows,
        "rows_dropped": manifest.rows_dropped,
        "train_shards": manifest.train.len(),
        "test_shards": manifest.test.len(),
        "classes": manifest.classes.len(),
        "features": manifest.features.len(),
        "input_width": manifest.input_width(),
        "replicas": imported.replicas.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "fee": manifest.fee,
        "excluded": manifest.excluded,
        "report": manifest.report,
    });
    print_out(args.json, value, || {
        format!(
            "{}imported {}: {} rows, {} features ({} model inputs), {} classes, {} shards on {} storage nodes\n\
             dataset {}\nasset   {} (owner {})",
            aic_storage_node::report::render(&manifest.report, manifest.rows, manifest.rows_dropped, manifest.input_width()),
            manifest.name,
            manifest.rows,
            manifest.features.len(),
            manifest.input_width(),
            manifest.classes.len(),
            manifest.shards().count(),
            imported.replicas.len(),
            imported.dataset,
            imported.asset,
            key.address()
        )
    });
    Ok(())
}

/// Pass 1 of an import on this machine: the report, or the refusal.
fn analyse_file(import: &ImportArgs) -> anyhow::Result<Analysis> {
    let options = ImportOptions {
        // A dry run has no pass 2 to keep anything for.
        spill: !import.dry_run,
        ..import.options()
    };
    Ok(analyse(&import.file, &import.dataset_name(), &options, &|_| {})?)
}

/// A dataset on the grid: stored on its replicas, its asset minted.
pub struct Imported {
    pub dataset: String,
    pub asset: AssetId,
    pub manifest: Manifest,
    pub replicas: Vec<NodeId>,
}

/// Preprocesses `import.file`, uploads it to the first of its replicas (placed on all of them,
/// which attest it), and has its Dataset asset minted to `key`'s address; if anything fails,
/// nothing is left stored and nothing is minted.
pub async fn import_dataset(
    profile: &ClientProfile,
    storage: Option<&str>,
    key: &Keypair,
    import: &ImportArgs,
) -> anyhow::Result<Imported> {
    let analysis = analyse_file(import)?;
    import_analysed(profile, storage, key, import, &analysis).await
}

/// [`import_dataset`] after its first pass.
async fn import_analysed(
    profile: &ClientProfile,
    storage: Option<&str>,
    key: &Keypair,
    import: &ImportArgs,
    analysis: &Analysis,
) -> anyhow::Result<Imported> {
    let file_size = std::fs::metadata(&import.file)
        .with_context(|| format!("reading {}", import.file.display()))?
        .len();
    let replicas = placement(profile, storage, import.replicas).await?;
    let storage = dial_storage(profile, &replicas[0].quic_addr).await?;

    // The second pass over the file; the message counts rows and bytes sent.
    let bar = progress_bar(file_size);
    let sent = std::sync::atomic::AtomicU64::new(0);
    let show = |p: Progress| {
        bar.set_position(p.bytes.min(file_size));
        let uploaded = sent.load(std::sync::atomic::Ordering::Relaxed);
        bar.set_message(format!(
            "encoding, uploading: {} rows, {} sent",
            p.rows,
            human_bytes(uploaded)
        ));
    };
    // The upload opens with the first shard, after pass 1 has checked the whole file; any
    // failure from there on aborts it, so the node frees its slot and deletes what was sent.
    let mut sink = UploadSink::new(&storage, |n| {
        sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    });
    let mut manifest = match encode(analysis, &mut sink, &show).await {
        Ok(manifest) => manifest,
        Err(error) => {
            bar.finish_and_clear();
            let aborted = sink.abort().await;
            return Err(with_abort(error.into(), aborted));
        }
    };
    manifest.replicas = replicas;
    manifest.fee = import.fee.to_string();
    bar.set_message(format!(
        "placing on {} storage nodes, minting the Dataset asset",
        manifest.replicas.len()
    ));
    // The storage nodes place the dataset, attest it and have its asset minted to this wallet;
    // if any step fails they undo it everywhere.
    let committed = sink.commit(&manifest, key.address().0).await;
    bar.finish_and_clear();
    let committed = committed.context("storing the dataset")?;
    let asset = committed
        .asset
        .ok_or_else(|| anyhow::anyhow!("the storage node stored the dataset but named no asset"))?;
    Ok(Imported {
        dataset: committed.dataset,
        asset,
        manifest,
        replicas: committed.replicas,
    })
}

/// An import's error, with what became of its upload.
fn with_abort(
    error: anyhow::Error,
    aborted: Result<(), aic_storage_node::import::SinkError>,
) -> anyhow::Error {
    match aborted {
        Ok(()) => error,
        Err(abort) => error.context(format!(
            "aborting the upload failed too ({abort}); the storage node drops it when it idles out"
        )),
    }
}

async fn export(args: &DatasetArgs, asset_id: &AssetId, out: &Path) -> anyhow::Result<()> {
    let key = load_wallet(&wallet_path(args.wallet.as_ref()))?;
    let profile = args.client.load()?;
    let me: NodeId = profile.tls.load()?.me.node_id;
    let scheduler = nodes::connect(&profile).await?;
    let LedgerResponse::Asset(asset) =
        ledger_client::request(&scheduler, &LedgerRequest::Asset(*asset_id)).await?
    else {
        bail!("unexpected answer to an asset request");
    };
    let Some(asset) = asset else {
        bail!("no asset {asset_id} on the ledger");
    };
    if !matches!(asset.kind, AssetKind::Dataset | AssetKind::TrainedModel) {
        bail!(
            "asset {asset_id} is a {:?}: only Dataset and TrainedModel assets are stored",
            asset.kind
        );
    }
    if asset.owner != key.address() {
        bail!(
            "asset {asset_id} belongs to {}, not to this wallet ({}); only the owner may export",
            asset.owner,
            key.address()
        );
    }
    if asset.kind == AssetKind::TrainedModel {
        return export_trained_model(
            args.json,
            args.storage.as_deref(),
            &profile,
            &key,
            me,
            asset_id,
            &asset,
            out,
        )
        .await;
    }
    let dataset = dataset_id_of_hash(&asset.metadata.content_hash);
    // Where to read it: --storage, else the nodes reporting it intact, else the replicas its
    // published manifest names (reports lag an import by a heartbeat).
    let mut candidates: Vec<String> = match pick_storage(args, Some(&dataset)).await {
        Ok(addr) => vec![addr],
        Err(_) => Vec::new(),
    };
    if args.storage.is_none() {
        let published: serde_json::Value = serde_json::from_str(&asset.metadata.manifest).unwrap_or_default();
        if let Some(replicas) = published["replicas"].as_array() {
            candidates.extend(
                replicas
                    .iter()
                    .filter_map(|r| r["quic_addr"].as_str().map(String::from)),
            );
        }
    }
    let mut found = None;
    let mut failures = Vec::new();
    for addr in &candidates {
        let attempt = async {
            let storage = dial_storage(&profile, addr).await?;
            let held = stat(&storage, &dataset).await?;
            anyhow::Ok((storage, held))
        };
        match attempt.await {
            Ok(ok) => {
                found = Some(ok);
                break;
            }
            Err(e) => failures.push(format!("{addr}: {e:#}")),
        }
    }
    let Some((storage, held)) = found else {
        bail!(
            "no storage node could serve dataset {dataset}: {}",
            failures.join("; ")
        );
    };
    // The storage node's manifest must be the one the asset names.
    let manifest = Manifest::from_json(&held.summary.manifest).map_err(|e| anyhow::anyhow!(e))?;
    if manifest_hash(&manifest) != asset.metadata.content_hash {
        bail!("the storage node's manifest for {dataset} does not match the asset's content hash");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let total: u64 = manifest.shards().map(|s| s.bytes).sum();
    let bar = progress_bar(total);
    let mut files = Vec::new();
    for (split, entries) in [("train", &manifest.train), ("test", &manifest.test)] {
        for (i, entry) in entries.iter().enumerate() {
            let shard: ShardId = entry
                .id
                .parse()
                .map_err(|_| anyhow::anyhow!("bad shard id in manifest"))?;
            let parquet = export_shard(&storage, &key, me, asset_id, &dataset, &shard, &bar).await?;
            let path = out.join(format!("{split}-{i:05}.parquet"));
            write_atomically(&path, &parquet)?;
            files.push(path.display().to_string());
        }
    }
    write_atomically(
        &out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    bar.finish_and_clear();
    let value =
        json!({"dataset": dataset, "asset": asset_id.to_string(), "rows": manifest.rows, "files": files});
    print_out(args.json, value, || {
        format!(
            "exported {} ({} rows) to {}: {} Parquet files and manifest.json",
            manifest.name,
            manifest.rows,
            out.display(),
            files.len()
        )
    });
    Ok(())
}

/// A TrainedModel's weights from the first storage node (--storage, else those its manifest
/// names) that serves them whole and true to the asset's content hash.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn export_trained_model(
    json_out: bool,
    storage: Option<&str>,
    profile: &ClientProfile,
    key: &Keypair,
    me: NodeId,
    asset_id: &AssetId,
    asset: &aic_ledger::state::Asset,
    out: &Path,
) -> anyhow::Result<()> {
    let (tensor, _, holders, _) = crate::model_export::weights_of(asset)?;
    let candidates = match storage {
        Some(addr) => vec![addr.to_string()],
        None => holders,
    };
    let bar = progress_bar(tensor.bytes());
    let mut failures = Vec::new();
    for addr in &candidates {
        let attempt = async {
            let storage = dial_storage(profile, addr).await?;
            crate::model_export::export_weights(&storage, key, me, asset_id, asset, out, &bar).await
        };
        match attempt.await {
            Ok(exported) => {
                bar.finish_and_clear();
                let value = json!({
                    "asset": asset_id.to_string(),
                    "parameters": exported.parameters,
                    "files": [exported.path.display().to_string(), out.join("model.json").display().to_string()],
                });
                print_out(json_out, value, || {
                    format!(
                        "exported the {} weights of {asset_id} to {} and model.json",
                        exported.parameters,
                        exported.path.display()
                    )
                });
                return Ok(());
            }
            Err(e) => failures.push(format!("{addr}: {e:#}")),
        }
    }
    Err(crate::model_export::no_holder_served(asset_id, &failures))
}

/// One shard's plain Parquet, checked against its name.
async fn export_shard(
    storage: &RpcClient,
    key: &Keypair,
    me: NodeId,
    asset: &AssetId,
    dataset: &str,
    shard: &ShardId,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<u8>> {
    let expires_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64
        + Duration::from_secs(600).as_millis() as u64;
    let signature = key.sign(&OwnerProof::message(asset, dataset, &me, expires_ms));
    let request = ClientRequest::Export {
        dataset: dataset.to_string(),
        shard: *shard,
        proof: OwnerProof {
            asset: *asset,
            owner: key.address().0,
            expires_ms,
            signature: signature.to_vec(),
        },
    };
    let mut stream = storage.call_stream(&request).await?;
    let mut parquet = Vec::new();
    while let Some(item) = stream.next().await {
        match item? {
            ClientResponse::ExportChunk { bytes } => {
                if (parquet.len() + bytes.len()) as u64 > aic_storage_node::MAX_SHARD_BYTES {
                    bail!("shard {shard}: more bytes than any shard holds");
                }
                bar.inc(bytes.len() as u64);
                parquet.extend_from_slice(&bytes);
            }
            other => bail!("unexpected answer {other:?}"),
        }
    }
    if ShardId::of_content(&parquet) != *shard {
        bail!("shard {shard}: the exported bytes do not hash to the shard's name");
    }
    Ok(parquet)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temp = path.with_extension("partial");
    std::fs::write(&temp, bytes).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}
