//! Model-based test: random ERC20/ERC721 operations, with amounts up to u128::MAX, run against
//! the ledger and against a plain in-memory reference written independently; after every step
//! both must agree on the outcome and on every balance, allowance and owner, and the ledger's
//! audit must hold.

use std::collections::{BTreeMap, BTreeSet};

use aic_ledger::genesis::{Genesis, Holders};
use aic_ledger::state::Event;
use aic_ledger::tx::{AssetKind, AssetMetadata, Call, Transaction};
use aic_ledger::{Amount, Keypair, LedgerState};
use aic_protocol::AssetId;
use proptest::prelude::*;

const ACCOUNTS: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    Transfer {
        from: usize,
        to: usize,
        amount: u128,
    },
    Approve {
        owner: usize,
        spender: usize,
        amount: u128,
    },
    TransferFrom {
        spender: usize,
        owner: usize,
        to: usize,
        amount: u128,
    },
    Burn {
        from: usize,
        amount: u128,
    },
    Mint {
        owner: usize,
    },
    TransferAsset {
        caller: usize,
        from: usize,
        to: usize,
        asset: usize,
    },
    ApproveAsset {
        caller: usize,
        approved: Option<usize>,
        asset: usize,
    },
    SetOperator {
        owner: usize,
        operator: usize,
        approved: bool,
    },
    BurnAsset {
        caller: usize,
        asset: usize,
    },
    Replay {
        from: usize,
    },
}

fn amount() -> impl Strategy<Value = u128> {
    prop_oneof![
        0u128..1_000,
        0u128..(1u128 << 100),
        (u128::MAX - 1_000)..=u128::MAX,
        any::<u128>(),
    ]
}

fn who() -> impl Strategy<Value = usize> {
    0..ACCOUNTS
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (who(), who(), amount()).prop_map(|(from, to, amount)| Op::Transfer { from, to, amount }),
        (who(), who(), amount()).prop_map(|(owner, spender, amount)| Op::Approve {
            owner,
            spender,
            amount
        }),
        (who(), who(), who(), amount()).prop_map(|(spender, owner, to, amount)| Op::TransferFrom {
            spender,
            owner,
            to,
            amount
        }),
        (who(), amount()).prop_map(|(from, amount)| Op::Burn { from, amount }),
        who().prop_map(|owner| Op::Mint { owner }),
        (who(), who(), who(), 0usize..6).prop_map(|(caller, from, to, asset)| Op::TransferAsset {
            caller,
            from,
            to,
            asset
        }),
        (who(), proptest::option::of(who()), 0usize..6).prop_map(|(caller, approved, asset)| {
            Op::ApproveAsset {
                caller,
                approved,
                asset,
            }
        }),
        (who(), who(), any::<bool>()).prop_map(|(owner, operator, approved)| Op::SetOperator {
            owner,
            operator,
            approved
        }),
        (who(), 0usize..6).prop_map(|(caller, asset)| Op::BurnAsset { caller, asset }),
        who().prop_map(|from| Op::Replay { from }),
    ]
}

/// The reference: the ERC20 and ERC721 rules, written as plainly as possible.
#[derive(Default)]
struct Reference {
    balances: BTreeMap<usize, u128>,
    allowances: BTreeMap<(usize, usize), u128>,
    owners: BTreeMap<usize, usize>,
    approvals: BTreeMap<usize, usize>,
    operators: BTreeSet<(usize, usize)>,
    burned: u128,
}

impl Reference {
    fn balance(&self, who: usize) -> u128 {
        self.balances.get(&who).copied().unwrap_or(0)
    }

    fn may_manage(&self, caller: usize, asset: usize) -> bool {
        let owner = self.owners[&asset];
        owner == caller
            || self.approvals.get(&asset) == Some(&caller)
            || self.operators.contains(&(owner, caller))
    }

    /// Returns whether the operation succeeds, applying it if so.
    fn apply(&mut self, op: &Op, assets: &mut Vec<usize>) -> bool {
        match *op {
            Op::Transfer { from, to, amount } => {
                if self.balance(from) < amount {
                    return false;
                }
                *self.balances.entry(from).or_default() -= amount;
                *self.balances.entry(to).or_default() += amount;
                true
            }
            Op::Approve {
                owner,
                spender,
                amount,
            } => {
                self.allowances.insert((owner, spender), amount);
                true
            }
            Op::TransferFrom {
                spender,
                owner,
                to,
                amount,
            } => {
                let allowance = self.allowances.get(&(owner, spender)).copied().unwrap_or(0);
                if allowance < amount || self.balance(owner) < amount {
                    return false;
                }
                if allowance != u128::MAX {
                    self.allowances.insert((owner, spender), allowance - amount);
                }
                *self.balances.entry(owner).or_default() -= amount;
                *self.balances.entry(to).or_default() += amount;
                true
            }
            Op::Burn { from, amount } => {
                if self.balance(from) < amount {
                    return false;
                }
                *self.balances.entry(from).or_default() -= amount;
                self.burned += amount;
                true
            }
            Op::Mint { owner } => {
                let id = assets.len();
                assets.push(id);
                self.owners.insert(id, owner);
                true
            }
            Op::TransferAsset {
                caller,
                from,
                to,
                asset,
            } => {
                if !self.owners.contains_key(&asset)
                    || !self.may_manage(caller, asset)
                    || self.owners[&asset] != from
                {
                    return false;
                }
                self.owners.insert(asset, to);
                self.approvals.remove(&asset);
                true
            }
            Op::ApproveAsset {
                caller,
                approved,
                asset,
            } => {
                let Some(&owner) = self.owners.get(&asset) else {
                    return false;
                };
                if owner != caller && !self.operators.contains(&(owner, caller)) || approved == Some(owner) {
                    return false;
                }
                match approved {
                    Some(a) => self.approvals.insert(asset, a),
                    None => self.approvals.remove(&asset),
                };
                true
            }
            Op::SetOperator {
                owner,
                operator,
                approved,
            } => {
                if owner == operator {
                    return false;
                }
                if approved {
                    self.operators.insert((owner, operator));
                } else {
                    self.operators.remove(&(owner, operator));
                }
                true
            }
            Op::BurnAsset { caller, asset } => {
                if !self.owners.contains_key(&asset) || !self.may_manage(caller, asset) {
                    return false;
                }
                self.owners.remove(&asset);
                self.approvals.remove(&asset);
                true
            }
            Op::Replay { .. } => false,
        }
    }
}

/// A model description of its own (each mint's content differs: a content is minted once).
fn metadata(mint: usize) -> AssetMetadata {
    AssetMetadata {
        name: "m".into(),
        content_hash: *blake3::hash(&mint.to_le_bytes()).as_bytes(),
        manifest: String::new(),
        usage_fee: Amount::ZERO,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_agrees_with_the_reference(ops in proptest::collection::vec(op(), 1..80)) {
        let keys: Vec<Keypair> = (0..ACCOUNTS).map(|_| Keypair::generate()).collect();
        let addr = |i: usize| keys[i].address();
        let holders = Holders {
            fundraiser: addr(0),
            advisors: Keypair::generate().address(),
            company: Keypair::generate().address(),
            team: Keypair::generate().address(),
            operations: Keypair::generate().address(),
        };
        let mut ledger = LedgerState::from_genesis(Genesis::local("model", 0, holders, Keypair::generate().address()));
        let mut reference = Reference::default();
        reference.balances.insert(0, ledger.balance_of(&addr(0)).0);
        let mut reference_assets: Vec<usize> = Vec::new();
        let mut ledger_assets: Vec<AssetId> = Vec::new();
        let mut last_signed: BTreeMap<usize, aic_ledger::SignedTransaction> = BTreeMap::new();

        for (step, op) in ops.iter().enumerate() {
            let (signer, call) = match *op {
                Op::Transfer { from, to, amount } => (from, Call::Transfer { to: addr(to), amount: Amount(amount) }),
                Op::Approve { owner, spender, amount } => (owner, Call::Approve { spender: addr(spender), amount: Amount(amount) }),
                Op::TransferFrom { spender, owner, to, amount } => {
                    (spender, Call::TransferFrom { owner: addr(owner), to: addr(to), amount: Amount(amount) })
                }
                Op::Burn { from, amount } => (from, Call::Burn { amount: Amount(amount) }),
                Op::Mint { owner } => (
                    owner,
                    Call::MintAsset { kind: AssetKind::Model, metadata: metadata(step) },
                ),
                Op::TransferAsset { caller, from, to, asset } => {
                    let asset = ledger_assets.get(asset).copied().unwrap_or(AssetId::from_bytes([9; 16]));
                    (caller, Call::TransferAsset { from: addr(from), to: addr(to), asset })
                }
                Op::ApproveAsset { caller, approved, asset } => {
                    let asset = ledger_assets.get(asset).copied().unwrap_or(AssetId::from_bytes([9; 16]));
                    (caller, Call::ApproveAsset { approved: approved.map(addr), asset })
                }
                Op::SetOperator { owner, operator, approved } => {
                    (owner, Call::SetApprovalForAll { operator: addr(operator), approved })
                }
                Op::BurnAsset { caller, asset } => {
                    let asset = ledger_assets.get(asset).copied().unwrap_or(AssetId::from_bytes([9; 16]));
                    (caller, Call::BurnAsset { asset })
                }
                Op::Replay { from } => (from, Call::Burn { amount: Amount::ZERO }),
            };
            let signed = match (op, last_signed.get(&signer)) {
                (Op::Replay { .. }, Some(previous)) => previous.clone(),
                (Op::Replay { .. }, None) => continue,
                _ => Transaction {
                    chain_id: "model".into(),
                    from: addr(signer),
                    nonce: ledger.account(&addr(signer)).nonce,
                    call,
                }
                .sign(&keys[signer]),
            };
            let before = ledger.clone();
            let outcome = ledger.apply_transaction(&signed);
            let expected = reference.apply(op, &mut reference_assets);
            prop_assert_eq!(outcome.is_ok(), expected, "op {:?} gave {:?}", op, outcome);
            match outcome {
                Ok(events) => {
                    last_signed.insert(signer, signed);
                    if let (Op::Mint { .. }, Some(Event::AssetTransfer { asset, .. })) = (op, events.first()) {
                        ledger_assets.push(*asset);
                    }
                }
                Err(_) => prop_assert_eq!(&ledger, &before),
            }
            prop_assert!(ledger.audit().is_ok());
            for i in 0..ACCOUNTS {
                prop_assert_eq!(ledger.balance_of(&addr(i)).0, reference.balance(i));
                for j in 0..ACCOUNTS {
                    let expected = reference.allowances.get(&(i, j)).copied().unwrap_or(0);
                    prop_assert_eq!(ledger.allowance(&addr(i), &addr(j)).0, expected);
                }
            }
            for (index, asset) in ledger_assets.iter().enumerate() {
                let owner = ledger.owner_of(asset).ok();
                prop_assert_eq!(owner, reference.owners.get(&index).map(|&o| addr(o)));
            }
            prop_assert_eq!(ledger.burned.0, reference.burned);
        }
    }
}
