//! `aic storage backup|restore`: a storage node's data dir backed up without its secrets, and
//! restored with each dataset's key recovered from the storage nodes it was escrowed with.

use std::path::PathBuf;

use aic_protocol::config;
use aic_storage_node::StorageConfig;
use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::wallet::print_out;

#[derive(Args, Clone, Debug)]
pub struct StorageArgs {
    #[command(subcommand)]
    pub command: StorageCommand,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Clone, Debug)]
pub enum StorageCommand {
    /// Copy the node's data dir into a new directory without its secrets: sealed shards,
    /// manifests, holder sets, where each key is escrowed, keys kept for others (sealed). The
    /// node may keep running.
    Backup {
        /// The node's config (`aic storage-node --config`).
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Fill the node's empty data dir from a backup, recovering each dataset's key from its
    /// escrows with the node's own certificate key; run with the node stopped, then start it.
    Restore {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        from: PathBuf,
    },
}

pub async fn run(args: StorageArgs) -> anyhow::Result<()> {
    match args.command {
        StorageCommand::Backup { config, out } => {
            let config: StorageConfig = config::load(Some(&config), &json!({}))?;
            let report = aic_storage_node::backup::backup(&config, &out)?;
            for id in &report.unescrowed {
                eprintln!(
                    "warning: dataset {id}'s key is escrowed nowhere yet: a restore of this backup cannot open it"
                );
            }
            if let Some(store) = &report.shards_elsewhere {
                eprintln!("note: the shards live in {store}, which this backup does not copy");
            }
            print_out(
                args.json,
                json!({
                    "out": out,
                    "datasets": report.datasets,
                    "files": report.files,
                    "bytes": report.bytes,
                    "unescrowed": report.unescrowed,
                }),
                || {
                    format!(
                        "backed up {} datasets ({} files, {} bytes) into {}; no dataset key is in it",
                        report.datasets,
                        report.files,
                        report.bytes,
                        out.display()
                    )
                },
            );
            Ok(())
        }
        StorageCommand::Restore { config, from } => {
            let config: StorageConfig = config::load(Some(&config), &json!({}))?;
            let report = aic_storage_node::backup::restore(&config, &from).await?;
            for (id, why) in &report.unrecovered {
                eprintln!("dataset {id}: key not recovered ({why}); set aside under unrecovered/");
            }
            print_out(
                args.json,
                json!({
                    "recovered": report.recovered,
                    "unrecovered": report.unrecovered.iter().map(|(id, why)| json!({"dataset": id, "why": why})).collect::<Vec<_>>(),
                }),
                || {
                    format!(
                        "restored {}: {} datasets with their keys, {} without",
                        config.storage.data_dir.display(),
                        report.recovered.len(),
                        report.unrecovered.len()
                    )
                },
            );
            if !report.unrecovered.is_empty() {
                bail!(
                    "{} datasets could not be restored (above)",
                    report.unrecovered.len()
                );
            }
            Ok(())
        }
    }
}
