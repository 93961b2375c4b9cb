//! The genesis file: chain id, the whitepaper's allocation of 10,000,000,000 AIC, vesting of the
//! locked shares, the unsold fundraiser part burned at genesis, the issuance curve, and the
//! scheduler's system key.
//!
//! Allocation (whitepaper): fundraiser 30 %, additional-issuance reserve 20 %, advisors 10 %,
//! company 10 %, team 25 %, operations 5 %. The reserve is not an account: it is the budget of
//! Proof-of-Value rewards ([`crate::issuance`]), counted as `issued` when paid out.

use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::issuance::IssuanceCurve;
use crate::keys::Address;

/// AIC minted at genesis, reserve included.
pub const TOTAL_GENESIS_AIC: u128 = 10_000_000_000;

/// A linear vesting schedule with a cliff, in ledger time (milliseconds since the Unix epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VestingSchedule {
    pub start_ms: u64,
    pub cliff_ms: u64,
    pub duration_ms: u64,
}

/// The holders of the allocation shares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holders {
    pub fundraiser: Address,
    pub advisors: Address,
    pub company: Address,
    pub team: Address,
    pub operations: Address,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Genesis {
    pub chain_id: String,
    /// Ledger time at genesis; vesting and blocks count from here.
    pub time_ms: u64,
    pub holders: Holders,
    /// Part of the fundraiser's share that was not sold and is burned at genesis.
    pub unsold_fundraiser: Amount,
    /// Vesting of the advisors', company's and team's shares.
    pub vesting: VestingSchedule,
    pub issuance: IssuanceCurve,
    /// The scheduler's key: the only signer of system transactions.
    pub system_key: Address,
    /// Inference gateways' keys: besides the system key, the only signers of inference
    /// settlements.
    #[serde(default)]
    pub inference_settlers: Vec<Address>,
}

/// One genesis share.
pub struct Share {
    pub holder: Address,
    pub amount: Amount,
    pub vested: bool,
}

impl Genesis {
    /// A genesis for a local devnet or a test: locked shares vest linearly over a year with no
    /// cliff, nothing unsold, the default issuance curve.
    pub fn local(chain_id: &str, time_ms: u64, holders: Holders, system_key: Address) -> Self {
        Genesis {
            chain_id: chain_id.to_string(),
            time_ms,
            holders,
            unsold_fundraiser: Amount::ZERO,
            vesting: VestingSchedule {
                start_ms: time_ms,
                cliff_ms: 0,
                duration_ms: 365 * 24 * 3600 * 1000,
            },
            issuance: IssuanceCurve::default(),
            system_key,
            inference_settlers: Vec::new(),
        }
    }

    fn percent(p: u128) -> Amount {
        Amount::aic(TOTAL_GENESIS_AIC / 100 * p).expect("fits")
    }

    /// The reserve: 20 % of the genesis supply.
    pub fn reserve(&self) -> Amount {
        Self::percent(20)
    }

    /// The shares minted into accounts, in whitepaper order (the reserve is kept apart).
    pub fn shares(&self) -> Vec<Share> {
        let h = &self.holders;
        let fundraiser = Self::percent(30)
            .checked_sub(self.unsold_fundraiser)
            .unwrap_or(Amount::ZERO);
        vec![
            Share {
                holder: h.fundraiser,
                amount: fundraiser,
                vested: false,
            },
            Share {
                holder: h.advisors,
                amount: Self::percent(10),
                vested: true,
            },
            Share {
                holder: h.company,
                amount: Self::percent(10),
                vested: true,
            },
            Share {
                holder: h.team,
                amount: Self::percent(25),
                vested: true,
            },
            Share {
                holder: h.operations,
                amount: Self::percent(5),
                vested: false,
            },
        ]
    }

    /// Reads and validates a genesis file (TOML).
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("genesis file {}: {e}", path.display()))?;
        let genesis: Genesis =
            toml::from_str(&text).map_err(|e| format!("genesis file {}: {e}", path.display()))?;
        genesis
            .validate()
            .map_err(|e| format!("genesis file {}: {e}", path.display()))?;
        Ok(genesis)
    }

    /// Writes the genesis as TOML.
    pub fn save(&self, path: &std::path::Path) -> Result<(), String> {
        let text = toml::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.chain_id.is_empty() || self.chain_id.len() > 64 {
            return Err("chain_id must be 1 to 64 characters".into());
        }
        if self.unsold_fundraiser > Self::percent(30) {
            return Err("unsold_fundraiser exceeds the fundraiser's 30 % share".into());
        }
        if self.vesting.duration_ms == 0 || self.vesting.cliff_ms > self.vesting.duration_ms {
            return Err("vesting needs duration_ms > 0 and cliff_ms ≤ duration_ms".into());
        }
        self.issuance.validate()
    }
}
