//! The client side of the ledger API for every `aic` command: typed requests over the
//! scheduler connection, waiting out a leader election, and wallet key files.

use std::path::{Path, PathBuf};

use aic_ledger::api::{LedgerApiError, LedgerRequest, LedgerResponse};
use aic_ledger::block::{verify_chain, BlockHeader};
use aic_ledger::remote::RemoteError;
use aic_ledger::tx::{Call, Transaction};
use aic_ledger::{Address, Keypair};
use aic_protocol::rpc::RpcClient;
use anyhow::{bail, Context};

/// Sends one ledger request, waiting out an election.
pub async fn request(client: &RpcClient, request: &LedgerRequest) -> anyhow::Result<LedgerResponse> {
    Ok(aic_ledger::remote::request(client, request).await?)
}

/// How long a write keeps being sent again while its outcome is unknown (a leader died under it).
const RESUBMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Signs `call` with `key` at the account's next nonce and submits it; a refusal is an error.
///
/// A write whose leader died before answering may or may not have applied; the same signed
/// transaction is sent again until an answer comes. Its nonce makes that safe: it applies at most
/// once, and a nonce already spent is checked against the account's history for this very
/// transaction.
pub async fn submit(
    client: &RpcClient,
    key: &Keypair,
    call: Call,
) -> anyhow::Result<(String, u64, Vec<aic_ledger::state::Event>)> {
    let LedgerResponse::Status(status) = request(client, &LedgerRequest::Status).await? else {
        bail!("unexpected answer to a status request");
    };
    let LedgerResponse::Account(view) = request(client, &LedgerRequest::Account(key.address())).await? else {
        bail!("unexpected answer to an account request");
    };
    let signed = Transaction {
        chain_id: status.chain_id,
        from: key.address(),
        nonce: view.account.nonce,
        call,
    }
    .sign(key);
    let tx_hash = signed.hash();
    let deadline = std::time::Instant::now() + RESUBMIT_WAIT;
    let mut uncertain = false;
    loop {
        let sent =
            aic_ledger::remote::request(client, &LedgerRequest::Submit(Box::new(signed.clone()))).await;
        match sent {
            Ok(LedgerResponse::Submitted { hash, index, result }) => match result {
                Ok(events) => return Ok((hex::encode(hash), index, events)),
                Err(aic_ledger::error::TxError::BadNonce { .. }) if uncertain => {
                    return applied_earlier(client, key, tx_hash).await;
                }
                // Typed, so a caller can branch on the refusal (`downcast_ref::<TxError>`).
                Err(refusal) => {
                    let code = refusal.code();
                    return Err(anyhow::Error::new(refusal).context(format!("refused (code {code})")));
                }
            },
            Ok(other) => bail!("unexpected answer to a transaction: {other:?}"),
            Err(RemoteError::Ledger(LedgerApiError::Indeterminate(_)))
                if std::time::Instant::now() < deadline =>
            {
                uncertain = true;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// After a send whose outcome was unknown, the nonce is spent: by this transaction (found in the
/// account's recent history), or by another one signed with the same key.
async fn applied_earlier(
    client: &RpcClient,
    key: &Keypair,
    tx_hash: [u8; 32],
) -> anyhow::Result<(String, u64, Vec<aic_ledger::state::Event>)> {
    let LedgerResponse::History(history) = request(
        client,
        &LedgerRequest::History {
            account: key.address(),
            limit: 100,
        },
    )
    .await?
    else {
        bail!("unexpected answer to a history request");
    };
    let events: Vec<_> = history
        .into_iter()
        .filter(|entry| entry.tx_hash == tx_hash)
        .map(|entry| entry.event)
        .collect();
    if events.is_empty() {
        bail!(
            "the transaction's outcome was unknown and its nonce is now spent by another \
             transaction of this wallet; it was not applied"
        );
    }
    Ok((hex::encode(tx_hash), 0, events))
}

/// The asset a mint created, from its transaction's events.
pub fn minted_asset(events: &[aic_ledger::state::Event]) -> anyhow::Result<aic_protocol::AssetId> {
    aic_ledger::state::Event::minted_asset(events).context("the mint reported no new asset")
}

/// Every block from genesis with its transaction hashes, fetched page by page.
pub async fn all_blocks(client: &RpcClient) -> anyhow::Result<Vec<(BlockHeader, Vec<[u8; 32]>)>> {
    let mut blocks = Vec::new();
    loop {
        let page = LedgerRequest::Blocks {
            from: blocks.len() as u64,
            count: aic_ledger::api::MAX_BLOCKS_PER_REQUEST,
        };
        let LedgerResponse::Blocks(mut got) = request(client, &page).await? else {
            bail!("unexpected answer to a blocks request");
        };
        if got.is_empty() {
            return Ok(blocks);
        }
        blocks.append(&mut got);
    }
}

/// Re-checks the whole chain from genesis: hash links, Merkle roots, proposer signatures.
pub async fn verify(client: &RpcClient) -> anyhow::Result<u64> {
    let blocks = all_blocks(client).await?;
    let (headers, transactions): (Vec<_>, Vec<_>) = blocks.into_iter().unzip();
    verify_chain(&headers, &transactions).map_err(|e| anyhow::anyhow!("chain does not verify: {e}"))?;
    Ok(headers.last().map_or(0, |h| h.height))
}

/// Writes a new wallet key (hex secret, mode 0600); refuses to overwrite one.
pub fn save_wallet(path: &Path, key: &Keypair) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "creating wallet {} (an existing wallet is never overwritten)",
                path.display()
            )
        })?;
    writeln!(file, "{}", hex::encode(key.secret_bytes()))?;
    Ok(())
}

pub fn load_wallet(path: &Path) -> anyhow::Result<Keypair> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading wallet {}", path.display()))?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret)
        .map_err(|_| anyhow::anyhow!("wallet {} does not hold a 64-digit hex key", path.display()))?;
    Ok(Keypair::from_secret(secret))
}

/// The wallet file: `--wallet`, else `AIC_WALLET`, else `wallet.key`.
pub fn wallet_path(flag: Option<&PathBuf>) -> PathBuf {
    flag.cloned()
        .or_else(|| std::env::var_os("AIC_WALLET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("wallet.key"))
}

pub fn parse_address(text: &str) -> anyhow::Result<Address> {
    text.parse().map_err(|e: String| anyhow::anyhow!(e))
}
