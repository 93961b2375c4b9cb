//! `aic wallet …`: keys, balances and ERC20 transfers and approvals.

use std::path::PathBuf;

use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::tx::Call;
use aic_ledger::{Amount, Keypair};
use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::ledger_client::{self, load_wallet, parse_address, save_wallet, wallet_path};
use crate::nodes::{self, ClientArgs};

#[derive(Args, Clone, Debug)]
pub struct WalletArgs {
    #[command(subcommand)]
    pub command: WalletCommand,
    /// The wallet key file (default: $AIC_WALLET, else ./wallet.key).
    #[arg(long, global = true)]
    pub wallet: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Clone, Debug)]
pub enum WalletCommand {
    /// Make a new key in the wallet file (never overwrites one).
    New,
    /// Print the wallet's address.
    Address,
    /// Balance, stake, nonce and what is spendable now (of ADDRESS, default the wallet's).
    Balance { address: Option<String> },
    /// Send AIC (decimal, e.g. 12.5) to an address.
    Transfer { to: String, amount: Amount },
    /// Let SPENDER move up to AMOUNT of the wallet's AIC (overwrites the previous allowance).
    Approve { spender: String, amount: Amount },
    /// How much SPENDER may still move for OWNER.
    Allowance { owner: String, spender: String },
    /// Lock AMOUNT of the wallet's AIC as stake: what a provider's payout account puts at risk
    /// (a node confirmed wrong is slashed from it).
    Stake { amount: Amount },
    /// Unlock AMOUNT of the wallet's stake.
    Unstake { amount: Amount },
    /// The wallet's recent events.
    History {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

pub async fn run(args: WalletArgs) -> anyhow::Result<()> {
    let path = wallet_path(args.wallet.as_ref());
    match &args.command {
        WalletCommand::New => {
            let key = Keypair::generate();
            save_wallet(&path, &key)?;
            print_out(
                args.json,
                json!({"address": key.address(), "wallet": path}),
                || format!("new wallet {}\naddress {}", path.display(), key.address()),
            );
            return Ok(());
        }
        WalletCommand::Address => {
            let address = load_wallet(&path)?.address();
            print_out(args.json, json!({"address": address}), || address.to_string());
            return Ok(());
        }
        _ => {}
    }
    let client = nodes::connect(&args.client.load()?).await?;
    match args.command {
        WalletCommand::New | WalletCommand::Address => unreachable!("handled above"),
        WalletCommand::Balance { address } => {
            let address = match address {
                Some(text) => parse_address(&text)?,
                None => load_wallet(&path)?.address(),
            };
            let LedgerResponse::Account(view) =
                ledger_client::request(&client, &LedgerRequest::Account(address)).await?
            else {
                bail!("unexpected answer");
            };
            print_out(args.json, serde_json::to_value(&view)?, || {
                format!(
                    "address   {}\nbalance   {} AIC\nspendable {} AIC\nstake     {} AIC\nnonce     {}\nassets    {}",
                    view.address, view.account.balance, view.spendable, view.account.stake, view.account.nonce, view.assets
                )
            });
        }
        WalletCommand::Transfer { to, amount } => {
            let key = load_wallet(&path)?;
            let to = parse_address(&to)?;
            let (hash, index, _) =
                ledger_client::submit(&client, &key, Call::Transfer { to, amount }).await?;
            print_out(
                args.json,
                json!({"tx": hash, "index": index, "to": to, "amount": amount}),
                || format!("sent {amount} AIC to {to}\ntx {hash} (log index {index})"),
            );
        }
        WalletCommand::Approve { spender, amount } => {
            let key = load_wallet(&path)?;
            let spender = parse_address(&spender)?;
            let (hash, index, _) =
                ledger_client::submit(&client, &key, Call::Approve { spender, amount }).await?;
            print_out(
                args.json,
                json!({"tx": hash, "index": index, "spender": spender, "amount": amount}),
                || format!("{spender} may now move up to {amount} AIC\ntx {hash}"),
            );
        }
        WalletCommand::Stake { amount } | WalletCommand::Unstake { amount } => {
            let key = load_wallet(&path)?;
            let (call, done) = match args.command {
                WalletCommand::Stake { .. } => (Call::Stake { amount }, "staked"),
                _ => (Call::Unstake { amount }, "unstaked"),
            };
            let (hash, index, _) = ledger_client::submit(&client, &key, call).await?;
            print_out(
                args.json,
                json!({"tx": hash, "index": index, done: amount}),
                || format!("{done} {amount} AIC\ntx {hash}"),
            );
        }
        WalletCommand::Allowance { owner, spender } => {
            let (owner, spender) = (parse_address(&owner)?, parse_address(&spender)?);
            let LedgerResponse::Allowance(amount) =
                ledger_client::request(&client, &LedgerRequest::Allowance { owner, spender }).await?
            else {
                bail!("unexpected answer");
            };
            print_out(
                args.json,
                json!({"owner": owner, "spender": spender, "allowance": amount}),
                || format!("{amount} AIC"),
            );
        }
        WalletCommand::History { limit } => {
            let account = load_wallet(&path)?.address();
            let LedgerResponse::History(entries) =
                ledger_client::request(&client, &LedgerRequest::History { account, limit }).await?
            else {
                bail!("unexpected answer");
            };
            let rows: Vec<_> = entries
                .iter()
                .map(|e| json!({"tx": hex::encode(e.tx_hash), "block": e.block_height, "event": e.event}))
                .collect();
            print_out(args.json, json!(rows), || {
                entries
                    .iter()
                    .map(|e| {
                        format!(
                            "block {:>6}  {}  {:?}",
                            e.block_height,
                            &hex::encode(e.tx_hash)[..12],
                            e.event
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(())
}

/// Prints JSON or the human text. A reader that went away (`aic … | head`) ends the output
/// quietly rather than with a panic.
pub fn print_out(json: bool, value: serde_json::Value, text: impl FnOnce() -> String) {
    use std::io::Write;
    let out = if json {
        serde_json::to_string_pretty(&value).unwrap_or_default()
    } else {
        text()
    };
    let _ = writeln!(std::io::stdout().lock(), "{out}");
}
