//! The ledger state tests' world: a genesis with known holders, and a sender that checks every
//! refusal leaves the state unchanged and the audit holds after every step.

// Each suite uses the helpers it needs.
#![allow(dead_code)]

use aic_ledger::amount::Amount;
use aic_ledger::genesis::{Genesis, Holders};
use aic_ledger::state::Event;
use aic_ledger::tx::{AssetMetadata, Call, Transaction};
use aic_ledger::{Address, Keypair, LedgerState, TxError};

pub struct World {
    pub state: LedgerState,
    pub system: Keypair,
    pub fundraiser: Keypair,
    pub team: Keypair,
    pub alice: Keypair,
    pub bob: Keypair,
}

pub fn world() -> World {
    let system = Keypair::generate();
    let fundraiser = Keypair::generate();
    let team = Keypair::generate();
    let holders = Holders {
        fundraiser: fundraiser.address(),
        advisors: Keypair::generate().address(),
        company: Keypair::generate().address(),
        team: team.address(),
        operations: Keypair::generate().address(),
    };
    let genesis = Genesis::local("aic-test", 1_000_000, holders, system.address());
    let state = LedgerState::from_genesis(genesis);
    state.audit().unwrap();
    World {
        state,
        system,
        fundraiser,
        team,
        alice: Keypair::generate(),
        bob: Keypair::generate(),
    }
}

pub fn aic(n: u128) -> Amount {
    Amount::aic(n).unwrap()
}

impl World {
    pub fn send(&mut self, key: &Keypair, call: Call) -> Result<Vec<Event>, TxError> {
        let nonce = self.state.account(&key.address()).nonce;
        let signed = Transaction {
            chain_id: "aic-test".into(),
            from: key.address(),
            nonce,
            call,
        }
        .sign(key);
        let before = self.state.clone();
        let result = self.state.apply_transaction(&signed);
        if result.is_err() {
            assert_eq!(self.state, before, "a refused transaction changed the state");
        }
        self.state.audit().unwrap();
        result
    }

    pub fn fund(&mut self, to: Address, amount: Amount) {
        let fundraiser = self.fundraiser.clone();
        self.send(&fundraiser, Call::Transfer { to, amount }).unwrap();
    }
}

pub fn metadata(name: &str) -> AssetMetadata {
    AssetMetadata {
        name: name.into(),
        content_hash: *blake3::hash(name.as_bytes()).as_bytes(),
        manifest: "{}".into(),
        usage_fee: aic(1),
    }
}

pub fn minted(events: &[Event]) -> aic_protocol::AssetId {
    match &events[0] {
        Event::AssetTransfer {
            from: None, asset, ..
        } => *asset,
        other => panic!("not a mint: {other:?}"),
    }
}
