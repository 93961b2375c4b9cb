//! `aic asset …`: ERC721 Dataset, Model and TrainedModel tokens.

use std::path::PathBuf;

use aic_ledger::amount::Amount;
use aic_ledger::api::{LedgerRequest, LedgerResponse, MAX_LISTINGS_PER_REQUEST};
use aic_ledger::state::Asset;
use aic_ledger::tx::Call;
use aic_protocol::AssetId;
use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::ledger_client::{self, load_wallet, parse_address, wallet_path};
use crate::nodes::{self, ClientArgs};
use crate::wallet::print_out;

#[derive(Args, Clone, Debug)]
pub struct AssetArgs {
    #[command(subcommand)]
    pub command: AssetCommand,
    #[arg(long, global = true)]
    pub wallet: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Clone, Debug)]
pub enum AssetCommand {
    /// All assets, or one owner's.
    List {
        #[arg(long)]
        owner: Option<String>,
    },
    /// One asset's owner, approval and metadata.
    Show { asset: AssetId },
    /// Move an asset you own (or may manage) to another address.
    Transfer { asset: AssetId, to: String },
    /// Let SPENDER move the asset (or `--clear` the approval).
    Approve {
        asset: AssetId,
        spender: Option<String>,
        #[arg(long)]
        clear: bool,
    },
    /// Offer an asset you own for sale at a fixed price (again: a new price).
    Sell {
        asset: AssetId,
        #[arg(long, value_name = "AIC")]
        price: Amount,
    },
    /// Withdraw your listing.
    Unlist { asset: AssetId },
    /// Buy a listed asset: its price to the seller and the asset to you, in one transaction.
    Buy {
        asset: AssetId,
        /// The most you pay: a price raised after you looked is refused, not charged.
        #[arg(long, value_name = "AIC")]
        max_price: Amount,
    },
    /// The assets for sale.
    Market,
}

fn asset_json(id: &AssetId, asset: &Asset) -> serde_json::Value {
    json!({
        "id": id.to_string(),
        "kind": asset.kind,
        "owner": asset.owner,
        "approved": asset.approved,
        "name": asset.metadata.name,
        "content_hash": hex::encode(asset.metadata.content_hash),
        "usage_fee": asset.metadata.usage_fee,
        "manifest": asset.metadata.manifest,
        "provenance": provenance_json(&asset.provenance),
    })
}

/// Where an asset came from, as the ledger enforced it.
fn provenance_json(provenance: &aic_ledger::state::Provenance) -> serde_json::Value {
    use aic_ledger::state::Provenance;
    match provenance {
        Provenance::Registered => json!({"source": "registered"}),
        Provenance::Imported { attesters } => json!({
            "source": "import",
            "attesters": attesters.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        }),
        Provenance::Trained { job } => json!({"source": "job", "job": job.to_string()}),
    }
}

pub async fn run(args: AssetArgs) -> anyhow::Result<()> {
    let client = nodes::connect(&args.client.load()?).await?;
    match args.command {
        AssetCommand::List { owner } => {
            let owner = owner.as_deref().map(parse_address).transpose()?;
            let LedgerResponse::Assets(assets) =
                ledger_client::request(&client, &LedgerRequest::Assets { owner }).await?
            else {
                bail!("unexpected answer");
            };
            let rows: Vec<_> = assets.iter().map(|(id, a)| asset_json(id, a)).collect();
            print_out(args.json, json!(rows), || {
                if assets.is_empty() {
                    return "no assets".to_string();
                }
                assets
                    .iter()
                    .map(|(id, a)| {
                        format!(
                            "{id}  {:?}  {}  owner {}",
                            a.kind,
                            a.metadata.name,
                            a.owner.short()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        AssetCommand::Show { asset } => {
            let LedgerResponse::Asset(found) =
                ledger_client::request(&client, &LedgerRequest::Asset(asset)).await?
            else {
                bail!("unexpected answer");
            };
            let Some(found) = found else {
                bail!("unknown asset {asset} (never minted, or burned)");
            };
            let value = asset_json(&asset, &found);
            print_out(args.json, value.clone(), || {
                serde_json::to_string_pretty(&value).unwrap_or_default()
            });
        }
        AssetCommand::Transfer { asset, to } => {
            let key = load_wallet(&wallet_path(args.wallet.as_ref()))?;
            let to = parse_address(&to)?;
            let LedgerResponse::Asset(Some(found)) =
                ledger_client::request(&client, &LedgerRequest::Asset(asset)).await?
            else {
                bail!("unknown asset {asset}");
            };
            let call = Call::TransferAsset {
                from: found.owner,
                to,
                asset,
            };
            let (hash, index, _) = ledger_client::submit(&client, &key, call).await?;
            print_out(
                args.json,
                json!({"tx": hash, "index": index, "asset": asset.to_string(), "to": to}),
                || format!("asset {asset} now belongs to {to}\ntx {hash}"),
            );
        }
        AssetCommand::Approve {
            asset,
            spender,
            clear,
        } => {
            let key = load_wallet(&wallet_path(args.wallet.as_ref()))?;
            let approved = match (spender, clear) {
                (Some(spender), false) => Some(parse_address(&spender)?),
                (None, true) => None,
                _ => bail!("name a SPENDER or pass --clear, not both"),
            };
            let (hash, index, _) =
                ledger_client::submit(&client, &key, Call::ApproveAsset { approved, asset }).await?;
            print_out(
                args.json,
                json!({"tx": hash, "index": index, "approved": approved}),
                || match approved {
                    Some(a) => format!("{a} may now move asset {asset}\ntx {hash}"),
                    None => format!("approval of asset {asset} cleared\ntx {hash}"),
                },
            );
        }
        AssetCommand::Sell { asset, price } => {
            let key = load_wallet(&wallet_path(args.wallet.as_ref()))?;
            let (hash, index, _) =
                ledger_client::submit(&client, &key, Call::ListAsset { asset, price }).await?;
            print_out(
                args.json,
                json!({"tx": hash, "index": index, "asset": asset.to_string(), "price": price}),
                || format!("asset {asset} is for sale at {price} AIC\ntx {hash}"),
            );
        }
        AssetCommand::Unlist { asset } => {
            let key = load_wallet(&wallet_path(args.wallet.as_ref()))?;
            let (hash, index, _) = ledger_client::submit(&client, &key, Call::UnlistAsset { asset }).await?;
            print_out(
                args.json,
                json!({"tx": hash, "index": index, "asset": asset.to_string()}),
                || format!("asset {asset} is no longer for sale\ntx {hash}"),
            );
        }
        AssetCommand::Buy { asset, max_price } => {
            let key = load_wallet(&wallet_path(args.wallet.as_ref()))?;
            let (hash, index, events) =
                ledger_client::submit(&client, &key, Call::BuyAsset { asset, max_price }).await?;
            let price = events.iter().find_map(|e| match e {
                aic_ledger::state::Event::AssetSold { price, .. } => Some(*price),
                _ => None,
            });
            print_out(
                args.json,
                json!({"tx": hash, "index": index, "asset": asset.to_string(), "price": price}),
                || format!("asset {asset} is yours\ntx {hash}"),
            );
        }
        AssetCommand::Market => {
            let mut listed = Vec::new();
            loop {
                let page = LedgerRequest::Listings {
                    after: listed.last().map(|(id, _, _)| *id),
                    limit: MAX_LISTINGS_PER_REQUEST,
                };
                let LedgerResponse::Listings(mut got) = ledger_client::request(&client, &page).await? else {
                    bail!("unexpected answer");
                };
                let full = got.len() == MAX_LISTINGS_PER_REQUEST as usize;
                listed.append(&mut got);
                if !full {
                    break;
                }
            }
            let rows: Vec<_> = listed
                .iter()
                .map(|(id, listing, asset)| {
                    let mut row = asset_json(id, asset);
                    row["price"] = json!(listing.price);
                    row["seller"] = json!(listing.seller);
                    row
                })
                .collect();
            print_out(args.json, json!(rows), || {
                if listed.is_empty() {
                    return "nothing is for sale".to_string();
                }
                listed
                    .iter()
                    .map(|(id, listing, a)| {
                        format!(
                            "{id}  {:?}  {}  {} AIC  seller {}",
                            a.kind,
                            a.metadata.name,
                            listing.price,
                            listing.seller.short()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(())
}
