//! `aic gateway`: run an inference gateway (`--config gateway.toml`), or, as a caller, manage
//! the API keys bound to your wallet's account and its prepaid inference escrow; and
//! `aic model publish|unpublish`, the owner's side: a TrainedModel offered at a price per 1,000
//! rows, under an alias.

use aic_gateway::access::{key_hash, new_key};
use aic_ledger::amount::Amount;
use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::tx::Call;
use aic_protocol::AssetId;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::ledger_client::{load_wallet, submit, wallet_path};
use crate::nodes::{self, ClientArgs};
use crate::roles::ServiceArgs;
use crate::wallet::print_out;

#[derive(Args, Clone, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct GatewayArgs {
    #[command(subcommand)]
    pub command: Option<GatewayCommand>,
    #[command(flatten)]
    pub service: ServiceArgs,
    /// The HTTPS API's listen address (TCP).
    #[arg(long)]
    pub https_listen: Option<std::net::SocketAddr>,
    /// The scheduler's QUIC address (host:port).
    #[arg(long)]
    pub scheduler_addr: Option<String>,
}

#[derive(Subcommand, Clone, Debug)]
pub enum GatewayCommand {
    /// API keys bound to your wallet's account: each call is paid from its inference escrow.
    Key(KeyArgs),
    /// Move AIC from your balance into your inference escrow.
    Fund(EscrowArgs),
    /// Move AIC from your inference escrow back to your balance.
    Withdraw(EscrowArgs),
}

#[derive(Args, Clone, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
    #[command(flatten)]
    pub caller: CallerArgs,
}

#[derive(Subcommand, Clone, Debug)]
pub enum KeyCommand {
    /// A new key: printed once; the ledger keeps only its hash.
    Create {
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Your keys (hashes and labels) and your inference escrow.
    List,
    /// Revoke a key, by the key itself or its hash (hex, as `list` shows it).
    Revoke { key: String },
}

#[derive(Args, Clone, Debug)]
pub struct EscrowArgs {
    pub amount: Amount,
    #[command(flatten)]
    pub caller: CallerArgs,
}

/// Who signs: the wallet, and how the ledger is reached.
#[derive(Args, Clone, Debug)]
pub struct CallerArgs {
    #[arg(long, global = true)]
    pub wallet: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, global = true)]
    pub json: bool,
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    match args.command {
        None => run_gateway(&args).await,
        Some(GatewayCommand::Key(key)) => run_key(key).await,
        Some(GatewayCommand::Fund(escrow)) => move_escrow(escrow, true).await,
        Some(GatewayCommand::Withdraw(escrow)) => move_escrow(escrow, false).await,
    }
}

async fn run_gateway(args: &GatewayArgs) -> anyhow::Result<()> {
    let mut endpoint = Map::new();
    if let Some(name) = &args.service.name {
        endpoint.insert("name".into(), json!(name));
    }
    if let Some(listen) = args.https_listen {
        endpoint.insert("https_listen".into(), json!(listen.to_string()));
    }
    if let Some(metrics) = args.service.metrics_listen {
        endpoint.insert("metrics_listen".into(), json!(metrics.to_string()));
    }
    let mut flags = Map::new();
    if !endpoint.is_empty() {
        flags.insert("endpoint".into(), Value::Object(endpoint));
    }
    if let Some(scheduler) = &args.scheduler_addr {
        flags.insert("scheduler".into(), json!({ "addr": scheduler }));
    }
    crate::roles::run_service::<aic_gateway::GatewayConfig, _>(
        &args.service,
        flags,
        "aic gateway",
        |config, shutdown| async move { Ok(aic_gateway::start(config, shutdown).await?) },
    )
    .await
}

async fn run_key(args: KeyArgs) -> anyhow::Result<()> {
    let caller = &args.caller;
    let key = load_wallet(&wallet_path(caller.wallet.as_ref()))?;
    let client = nodes::connect(&caller.client.load()?).await?;
    match args.command {
        KeyCommand::Create { label } => {
            let secret = new_key();
            let hash = key_hash(&secret);
            submit(
                &client,
                &key,
                Call::CreateApiKey {
                    key_hash: hash,
                    label: label.clone(),
                },
            )
            .await?;
            let value = json!({"api_key": secret, "hash": hex::encode(hash), "label": label, "account": key.address().to_string()});
            print_out(caller.json, value, || {
                format!(
                    "API key (shown once; the ledger keeps only its hash {}):\n{secret}",
                    &hex::encode(hash)[..16]
                )
            });
        }
        KeyCommand::List => {
            let LedgerResponse::ApiKeys { keys, escrow } =
                crate::ledger_client::request(&client, &LedgerRequest::ApiKeys(key.address())).await?
            else {
                bail!("unexpected answer to an API key listing");
            };
            let rows: Vec<Value> = keys
                .iter()
                .map(|(hash, k)| json!({"hash": hex::encode(hash), "label": k.label, "revoked": k.revoked}))
                .collect();
            let value =
                json!({"account": key.address().to_string(), "escrow": escrow.to_string(), "keys": rows});
            print_out(caller.json, value, || {
                let mut text = format!("inference escrow: {escrow} AIC\n");
                for (hash, k) in &keys {
                    text += &format!(
                        "{}  {:<24} {}\n",
                        hex::encode(hash),
                        k.label,
                        if k.revoked { "revoked" } else { "live" }
                    );
                }
                text.trim_end().to_string()
            });
        }
        KeyCommand::Revoke { key: given } => {
            let hash = if given.starts_with(aic_gateway::access::KEY_PREFIX) {
                key_hash(&given)
            } else {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&given, &mut hash)
                    .context("give the key itself, or its hash as 64 hex digits")?;
                hash
            };
            submit(&client, &key, Call::RevokeApiKey { key_hash: hash }).await?;
            print_out(caller.json, json!({"revoked": hex::encode(hash)}), || {
                format!("revoked {}", hex::encode(hash))
            });
        }
    }
    Ok(())
}

async fn move_escrow(args: EscrowArgs, fund: bool) -> anyhow::Result<()> {
    let caller = &args.caller;
    let key = load_wallet(&wallet_path(caller.wallet.as_ref()))?;
    let client = nodes::connect(&caller.client.load()?).await?;
    let call = if fund {
        Call::FundInference { amount: args.amount }
    } else {
        Call::WithdrawInference { amount: args.amount }
    };
    submit(&client, &key, call).await?;
    let LedgerResponse::ApiKeys { escrow, .. } =
        crate::ledger_client::request(&client, &LedgerRequest::ApiKeys(key.address())).await?
    else {
        bail!("unexpected answer to an escrow read");
    };
    print_out(caller.json, json!({"escrow": escrow.to_string()}), || {
        format!("inference escrow: {escrow} AIC")
    });
    Ok(())
}

/// `aic model publish`: the owner offers a TrainedModel for inference.
pub async fn publish(
    args: &crate::job::ModelArgs,
    asset: &AssetId,
    price: Amount,
    alias: Option<&str>,
) -> anyhow::Result<()> {
    let key = load_wallet(&wallet_path(args.wallet.as_ref()))?;
    let client = nodes::connect(&args.client.load()?).await?;
    submit(
        &client,
        &key,
        Call::PublishModel {
            asset: *asset,
            price_per_1k_rows: price,
            alias: alias.map(str::to_string),
        },
    )
    .await?;
    let name = alias.map_or_else(|| asset.to_string(), str::to_string);
    let value = json!({"asset": asset.to_string(), "name": name, "price_per_1k_rows": price.to_string()});
    print_out(args.json, value, || {
        format!("published {asset} as {name:?} at {price} AIC per 1,000 rows: POST /v2/models/{name}/infer")
    });
    Ok(())
}

/// `aic model unpublish`: calls to it are refused from now on (served calls are still settled).
pub async fn unpublish(args: &crate::job::ModelArgs, asset: &AssetId) -> anyhow::Result<()> {
    let key = load_wallet(&wallet_path(args.wallet.as_ref()))?;
    let client = nodes::connect(&args.client.load()?).await?;
    submit(&client, &key, Call::UnpublishModel { asset: *asset }).await?;
    print_out(args.json, json!({"unpublished": asset.to_string()}), || {
        format!("unpublished {asset}")
    });
    Ok(())
}
