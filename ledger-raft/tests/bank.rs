//! A bank test in the style of Jepsen. Three replicas talk over a fault-injecting network (seeded
//! loss, duplication and delay on every link); four clients, each the owner of one account,
//! transfer between the accounts and read them, while a nemesis kills the leader (and restarts
//! it), isolates the leader in a minority, and cuts one link so that a bridge node alone reaches
//! both sides — each fault only after the clients acknowledged more transfers since the last, so
//! the faults are synchronised with the work, not raced against it. Then the checks:
//!
//! - every acknowledged transfer applied exactly once, nothing else applied: each account's
//!   nonce counts its owner's acknowledged transfers, and every balance is what they imply;
//! - value conserved (the ledger's audit) and every replica in the same state;
//! - the reads are linearizable for the counter each account's nonce is: a read sees at least
//!   the transfers acknowledged before it began, at most those begun before it ended, and no
//!   read sees less than one that ended before it began.
//!
//! CI runs 20 leader kills and 10 partitions; `AIC_BANK_ROUNDS=N` runs N times as many.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aic_ledger::amount::Amount;
use aic_ledger::api::{LedgerApiError, LedgerRequest, LedgerResponse};
use aic_ledger::testkit::{wait_for, LedgerClient, TestCluster};
use aic_ledger::tx::{Call, Transaction};
use aic_ledger::{Address, Keypair, SignedTransaction, TxError};
use aic_protocol::fault_net::FaultPlan;
use aic_protocol::messages::{ClientRequest, ClientResponse};
use aic_protocol::rpc::RpcClient;
use aic_protocol::Role;

const ACCOUNTS: usize = 4;
const KILLS: usize = 20;
const PARTITIONS: usize = 10;
/// Transfers acknowledged between two faults.
const PROGRESS_PER_FAULT: u64 = 4;
/// The longest the nemesis waits for that progress, or for a leader, before the test fails.
const STALL: Duration = Duration::from_secs(60);

/// A small seeded generator (splitmix64), so a run's choices follow its seed.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One client operation, as the client saw it.
#[derive(Clone, Debug)]
enum Op {
    /// A transfer of the owner's account `from`; `applied` once acknowledged (or found applied
    /// after an unanswered send); None if the run ended before an answer.
    Transfer {
        from: usize,
        to: usize,
        amount: Amount,
        invoked: Instant,
        completed: Option<Instant>,
        applied: Option<bool>,
    },
    /// A read of `account`'s nonce.
    Read {
        account: usize,
        invoked: Instant,
        completed: Instant,
        nonce: u64,
    },
}

/// Connections to every replica, remade when one fails (its replica was killed and restarted).
struct Connections {
    endpoint: quinn::Endpoint,
    addrs: Vec<String>,
    clients: Vec<Option<LedgerClient>>,
}

impl Connections {
    async fn client(&mut self, i: usize) -> Option<LedgerClient> {
        if let Some(client) = self.clients[i].as_ref().filter(|c| !c.0.is_closed()) {
            return Some(client.clone());
        }
        let client = RpcClient::connect(&self.endpoint, &self.addrs[i], Role::Scheduler)
            .await
            .ok()
            // A leader cut off from its majority never answers a write: give up on it soon
            // (the write is then unanswered, and sent again).
            .map(|client| LedgerClient(client.with_timeout(Duration::from_secs(2))));
        self.clients[i] = client.clone();
        client
    }

    /// Sends `request` to replicas in turn until one answers with something other than "no
    /// leader / unreachable"; answers that, or None once `give_up` is set.
    async fn request(
        &mut self,
        request: &LedgerRequest,
        give_up: &AtomicBool,
        start: usize,
    ) -> Option<Result<LedgerResponse, LedgerApiError>> {
        let mut i = start;
        loop {
            if give_up.load(Ordering::SeqCst) {
                return None;
            }
            i = (i + 1) % self.addrs.len();
            let Some(client) = self.client(i).await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let answer = match client
                .0
                .call(&ClientRequest::Ledger(aic_ledger::api::encode(request)))
                .await
            {
                Ok(ClientResponse::Ledger(bytes)) => {
                    aic_ledger::api::decode::<aic_ledger::api::LedgerResult>(&bytes).unwrap_or_else(Err)
                }
                Ok(other) => panic!("unexpected answer {other:?}"),
                Err(error) => {
                    // The connection broke: its replica died; the next try reconnects. A write
                    // it carried may have applied before the answer was lost.
                    self.clients[i] = None;
                    if request.is_write() {
                        return Some(Err(LedgerApiError::Indeterminate(error.to_string())));
                    }
                    continue;
                }
            };
            match answer {
                Err(
                    LedgerApiError::NoLeader
                    | LedgerApiError::LeaderUnreachable(_)
                    | LedgerApiError::NoQuorum,
                ) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return Some(other),
            }
        }
    }
}

fn sign(chain: &str, key: &Keypair, nonce: u64, to: Address, amount: Amount) -> SignedTransaction {
    Transaction {
        chain_id: chain.to_string(),
        from: key.address(),
        nonce,
        call: Call::Transfer { to, amount },
    }
    .sign(key)
}

/// One account owner: transfers to the others, reads an account after each, until `stop`.
#[allow(clippy::too_many_arguments)]
async fn owner(
    me: usize,
    key: Keypair,
    accounts: Vec<Address>,
    chain: String,
    mut connections: Connections,
    history: Arc<Mutex<Vec<Op>>>,
    acknowledged: Arc<tokio::sync::watch::Sender<u64>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut draw = Draw(seed);
    let mut nonce = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let to = (me + 1 + draw.below(ACCOUNTS as u64 - 1) as usize) % ACCOUNTS;
        let amount = Amount::aic(1)
            .unwrap()
            .mul_div(1 + u128::from(draw.below(9)), 1000)
            .unwrap();
        let signed = sign(&chain, &key, nonce, accounts[to], amount);
        let invoked = Instant::now();
        let submit = LedgerRequest::Submit(Box::new(signed.clone()));
        let mut uncertain = false;
        let applied = loop {
            let start = draw.below(3) as usize;
            match connections.request(&submit, &stop, start).await {
                None => break None,
                Some(Ok(LedgerResponse::Submitted { result: Ok(_), .. })) => break Some(true),
                Some(Ok(LedgerResponse::Submitted {
                    result: Err(TxError::BadNonce { .. }),
                    ..
                }))
                | Some(Err(LedgerApiError::Refused(TxError::BadNonce { .. })))
                    if uncertain =>
                {
                    // The unanswered send applied: only this owner signs for the account.
                    break Some(true);
                }
                Some(Ok(LedgerResponse::Submitted {
                    result: Err(refusal), ..
                }))
                | Some(Err(LedgerApiError::Refused(refusal))) => {
                    panic!("a transfer within the balance was refused: {refusal:?}")
                }
                Some(Err(LedgerApiError::Indeterminate(_))) => uncertain = true,
                Some(other) => panic!("unexpected answer {other:?}"),
            }
        };
        let completed = applied.map(|_| Instant::now());
        if applied == Some(true) {
            nonce += 1;
            acknowledged.send_modify(|n| *n += 1);
        }
        history.lock().unwrap().push(Op::Transfer {
            from: me,
            to,
            amount,
            invoked,
            completed,
            applied,
        });
        // A read of some account's nonce, through any replica (reads are linearizable: the
        // leader confirms it leads before answering).
        let account = draw.below(ACCOUNTS as u64) as usize;
        let invoked = Instant::now();
        let start = draw.below(3) as usize;
        if let Some(Ok(LedgerResponse::Account(view))) = connections
            .request(&LedgerRequest::Account(accounts[account]), &stop, start)
            .await
        {
            history.lock().unwrap().push(Op::Read {
                account,
                invoked,
                completed: Instant::now(),
                nonce: view.account.nonce,
            });
        }
    }
}

/// Waits (bounded) until the clients acknowledged `more` transfers since `from`: woken by each
/// acknowledgement, not by a timer.
async fn progress(acknowledged: &tokio::sync::watch::Sender<u64>, from: u64, more: u64, what: &str) -> u64 {
    let mut seen = acknowledged.subscribe();
    let reached = tokio::time::timeout(STALL, seen.wait_for(|n| *n >= from + more))
        .await
        .map(|now| now.map(|n| *n));
    match reached {
        Ok(Ok(now)) => now,
        _ => panic!("no progress within {STALL:?} after {what}"),
    }
}

async fn a_leader_among(cluster: &TestCluster, among: &[usize]) -> usize {
    let deadline = Instant::now() + STALL;
    loop {
        if let Some(leader) = among.iter().copied().find(|&i| {
            cluster.replicas[i]
                .as_ref()
                .is_some_and(|r| r.replica.is_leader())
        }) {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "no leader among {among:?} within {STALL:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_transfer_survives_leader_kills_and_partitions_exactly_once() {
    let rounds: usize = std::env::var("AIC_BANK_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let seed: u64 = std::env::var("AIC_BANK_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(17);
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::new(dir.path(), 3);
    let plan = FaultPlan::new(seed);
    cluster.faults = Some(plan.clone());
    cluster.start_all().await;
    let chain = cluster.genesis.chain_id.clone();

    // Fund the accounts from the fundraiser.
    let keys: Vec<Keypair> = (0..ACCOUNTS).map(|_| Keypair::generate()).collect();
    let accounts: Vec<Address> = keys.iter().map(Keypair::address).collect();
    let funding = Amount::aic(1000).unwrap();
    let operator = cluster.client(0).await;
    for (n, to) in accounts.iter().enumerate() {
        let signed = sign(&chain, &cluster.keys.fundraiser, n as u64, *to, funding);
        match operator.request(&LedgerRequest::Submit(Box::new(signed))).await {
            Ok(LedgerResponse::Submitted { result: Ok(_), .. }) => {}
            other => panic!("funding: {other:?}"),
        }
    }
    // Noise on every link for the whole run: 1 % lost, 1 % duplicated, 2 % delayed up to 20 ms.
    plan.set_noise(10, 10, 20, Duration::from_millis(20));

    let addrs: Vec<String> = (0..3).map(|i| cluster.addr(i).to_string()).collect();
    let history = Arc::new(Mutex::new(Vec::new()));
    let acknowledged = Arc::new(tokio::sync::watch::Sender::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    let mut owners = Vec::new();
    for (me, key) in keys.iter().enumerate() {
        let connections = Connections {
            endpoint: cluster.client_endpoint(Role::Client),
            addrs: addrs.clone(),
            clients: vec![None; 3],
        };
        owners.push(tokio::spawn(owner(
            me,
            key.clone(),
            accounts.clone(),
            chain.clone(),
            connections,
            history.clone(),
            acknowledged.clone(),
            stop.clone(),
            seed.wrapping_mul(31).wrapping_add(me as u64),
        )));
    }

    // The nemesis: a kill or a partition after each stretch of acknowledged transfers.
    let (mut kills, mut partitions) = (0, 0);
    let mut seen = progress(&acknowledged, 0, PROGRESS_PER_FAULT, "the start").await;
    let mut draw = Draw(seed ^ 0xFA17);
    while kills < KILLS * rounds || partitions < PARTITIONS * rounds {
        let leader = a_leader_among(&cluster, &[0, 1, 2]).await;
        let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let kill = partitions >= PARTITIONS * rounds || (kills < KILLS * rounds && draw.below(3) != 0);
        if kill {
            cluster.kill(leader).await;
            a_leader_among(&cluster, &others).await;
            seen = progress(&acknowledged, seen, PROGRESS_PER_FAULT, "a leader kill").await;
            cluster.start(leader).await;
            kills += 1;
        } else if partitions % 2 == 0 {
            // The leader alone in a minority: the majority elects another and goes on.
            plan.partition(&[
                vec![cluster.addr(leader)],
                others.iter().map(|&i| cluster.addr(i)).collect(),
            ]);
            a_leader_among(&cluster, &others).await;
            seen = progress(&acknowledged, seen, PROGRESS_PER_FAULT, "isolating the leader").await;
            plan.heal();
            partitions += 1;
        } else {
            // One link cut: the third replica bridges both sides.
            plan.cut_between(cluster.addr(leader), cluster.addr(others[0]));
            seen = progress(&acknowledged, seen, PROGRESS_PER_FAULT, "a bridged partition").await;
            plan.heal();
            partitions += 1;
        }
        seen = progress(&acknowledged, seen, PROGRESS_PER_FAULT, "healing").await;
    }
    stop.store(true, Ordering::SeqCst);
    for owner in owners {
        owner.await.unwrap();
    }
    plan.set_noise(0, 0, 0, Duration::ZERO);
    let (dropped, duplicated, delayed) = plan.counts();
    eprintln!(
        "bank: {kills} leader kills, {partitions} partitions, {} transfers acknowledged; datagrams dropped {dropped}, duplicated {duplicated}, delayed {delayed}",
        *acknowledged.borrow()
    );

    // Every replica converges on one state.
    let leader = a_leader_among(&cluster, &[0, 1, 2]).await;
    let target = cluster.replica(leader).status().applied_index;
    for i in 0..3 {
        let replica = cluster.replica(i).clone();
        wait_for(|| replica.status().applied_index >= target).await;
    }
    let client = cluster.client(leader).await;
    let view = |view: LedgerResponse| match view {
        LedgerResponse::Account(view) => view.account,
        other => panic!("{other:?}"),
    };
    let mut finals = Vec::new();
    for address in &accounts {
        finals.push(view(
            client.request(&LedgerRequest::Account(*address)).await.unwrap(),
        ));
    }
    let states: Vec<([u8; 32], u64)> = (0..3)
        .map(|i| {
            let s = cluster.replica(i).status();
            (s.state_hash, s.applied_index)
        })
        .collect();
    match client.request(&LedgerRequest::Audit).await.unwrap() {
        LedgerResponse::Audit(result) => result.expect("value conserved"),
        other => panic!("{other:?}"),
    }

    let history = history.lock().unwrap().clone();
    // Exactly once: each account's nonce is its owner's applied transfers; its balance is the
    // funding, less what it sent, plus what it received — of acknowledged transfers only (an
    // unanswered one at the end counts if its owner's nonce says it applied).
    let mut balance = [funding; ACCOUNTS];
    let mut sent = [0u64; ACCOUNTS];
    for op in &history {
        if let Op::Transfer {
            from,
            to,
            amount,
            applied,
            ..
        } = op
        {
            let pending_applied = applied.is_none() && finals[*from].nonce > sent[*from];
            if *applied == Some(true) || pending_applied {
                sent[*from] += 1;
                balance[*from] = balance[*from].checked_sub(*amount).unwrap();
                balance[*to] = balance[*to].checked_add(*amount).unwrap();
            }
        }
    }
    for a in 0..ACCOUNTS {
        assert_eq!(finals[a].nonce, sent[a], "account {a}: applied transfers");
        assert_eq!(finals[a].balance, balance[a], "account {a}: balance");
    }
    // Linearizable reads of each account's nonce (sorted once: the checks are n log n).
    for a in 0..ACCOUNTS {
        let mut acknowledged_at: Vec<Instant> = Vec::new();
        let mut invoked_at: Vec<Instant> = Vec::new();
        for op in &history {
            if let Op::Transfer {
                from,
                invoked,
                completed,
                applied,
                ..
            } = op
            {
                if *from == a && *applied != Some(false) {
                    invoked_at.push(*invoked);
                    acknowledged_at.extend(*completed);
                }
            }
        }
        acknowledged_at.sort();
        invoked_at.sort();
        let mut reads: Vec<(Instant, Instant, u64)> = history
            .iter()
            .filter_map(|op| match op {
                Op::Read {
                    account,
                    invoked,
                    completed,
                    nonce,
                } if *account == a => Some((*invoked, *completed, *nonce)),
                _ => None,
            })
            .collect();
        for &(invoked, completed, nonce) in &reads {
            let done_before = acknowledged_at.partition_point(|t| *t < invoked) as u64;
            let begun_before = invoked_at.partition_point(|t| *t < completed) as u64;
            assert!(
                done_before <= nonce && nonce <= begun_before,
                "account {a}: a read saw {nonce} transfers; {done_before} were acknowledged before it began, {begun_before} begun before it ended"
            );
        }
        // No read sees less than one that ended before it began.
        reads.sort_by_key(|(_, completed, _)| *completed);
        let mut most_seen = Vec::with_capacity(reads.len());
        let mut most = 0;
        for (_, _, nonce) in &reads {
            most = most.max(*nonce);
            most_seen.push(most);
        }
        for &(invoked, _, nonce) in &reads {
            let ended_before = reads.partition_point(|(_, completed, _)| *completed < invoked);
            if ended_before > 0 {
                assert!(
                    most_seen[ended_before - 1] <= nonce,
                    "account {a}: a read saw {nonce} transfers after one that saw {}",
                    most_seen[ended_before - 1]
                );
            }
        }
    }
    assert!(
        states.windows(2).all(|w| w[0] == w[1]),
        "replicas differ: {states:?}"
    );
    assert!(kills >= KILLS && partitions >= PARTITIONS);
}
