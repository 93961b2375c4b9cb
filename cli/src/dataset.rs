//! `aic dataset list|preview`: what storage nodes hold, and a capped free look at a dataset.

use aic_protocol::messages::{ClientRequest, ClientResponse, NodeState};
use aic_protocol::rpc::RpcClient;
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::Role;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::nodes::{self, ClientArgs};
use crate::wallet::print_out;

#[derive(Args, Clone, Debug)]
pub struct DatasetArgs {
    #[command(subcommand)]
    pub command: DatasetCommand,
    #[command(flatten)]
    pub client: ClientArgs,
    /// A storage node's QUIC address (default: the first storage node the scheduler lists up).
    #[arg(long, global = true)]
    pub storage: Option<String>,
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Clone, Debug)]
pub enum DatasetCommand {
    /// Datasets held by the storage node.
    List,
    /// Up to ROWS random preprocessed rows (never more than 1 % of the dataset or 100 rows).
    Preview {
        dataset: String,
        #[arg(long, default_value_t = 10)]
        rows: u32,
    },
}

async fn storage_client(args: &DatasetArgs) -> anyhow::Result<RpcClient> {
    let profile = args.client.load()?;
    let addr = match &args.storage {
        Some(addr) => addr.clone(),
        None => {
            let scheduler = nodes::connect(&profile).await?;
            nodes::list_nodes(&scheduler)
                .await?
                .into_iter()
                .find(|n| n.role == Role::Storage && n.state == NodeState::Up)
                .map(|n| n.quic_addr)
                .context("the scheduler lists no storage node that is up; pass --storage")?
        }
    };
    let identity = profile.tls.load()?;
    let tuning = TransportTuning::default();
    let endpoint = transport::endpoint(
        transport::bind_udp("0.0.0.0:0".parse()?, &tuning)?,
        &identity,
        &tuning,
    )?;
    Ok(RpcClient::connect(&endpoint, &addr, Role::Storage).await?)
}

pub async fn run(args: DatasetArgs) -> anyhow::Result<()> {
    let client = storage_client(&args).await?;
    match &args.command {
        DatasetCommand::List => {
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
        }
        DatasetCommand::Preview { dataset, rows } => {
            let request = ClientRequest::Preview {
                dataset: dataset.clone(),
                rows: *rows,
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
        }
    }
    Ok(())
}
