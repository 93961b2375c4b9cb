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
//! - the reads are linearizable: a read of an account returns its nonce and its balance, and
//!   the balance says how many of each other owner's transfers had applied (each owner's amounts
//!   are multiples of its own power of 10⁵ base units, so what each sent can be told apart, and
//!   an owner's transfers apply in nonce order). So every read names, per owner, how many of its
//!   transfers it saw (an exact count, or the range a balance allows); that count must lie
//!   between the transfers acknowledged before the read began and those begun before it ended,
//!   and no read may have seen fewer than one that ended before it began.
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
    /// A read of `account`: its nonce and balance.
    Read {
        account: usize,
        invoked: Instant,
        completed: Instant,
        nonce: u64,
        balance: Amount,
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

/// Owner `owner`'s transfers are `k` (1 to 9) times 10^(5·owner) base units: a balance's
/// digits in base 10⁵ then say how much each owner sent to it (fewer than 11,111 transfers from
/// one owner to another keep each digit below 10⁵).
const DIGIT: u128 = 100_000;

fn amount_of(owner: usize, k: u128) -> Amount {
    Amount(k * DIGIT.pow(owner as u32))
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
        let amount = amount_of(me, 1 + u128::from(draw.below(9)));
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
                balance: view.account.balance,
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
    check_reads_linearizable(&history, funding);
    assert!(
        states.windows(2).all(|w| w[0] == w[1]),
        "replicas differ: {states:?}"
    );
    assert!(kills >= KILLS && partitions >= PARTITIONS);
}

/// Per owner, the fewest and the most of its transfers a read may have seen.
type Seen = [(u64, u64); ACCOUNTS];

/// How many of each owner's transfers a read saw: exactly (its own account's nonce) or within a
/// range (another owner's transfers to the read account, told by the balance's digits; its
/// transfers to other accounts leave the balance alone).
fn seen_by_read(
    account: usize,
    nonce: u64,
    balance: Amount,
    funding: Amount,
    applied: &[Vec<(usize, Amount)>; ACCOUNTS],
) -> Seen {
    let own = &applied[account];
    assert!(
        nonce as usize <= own.len(),
        "account {account}: a read saw {nonce} transfers, {} applied",
        own.len()
    );
    let sent: u128 = own[..nonce as usize].iter().map(|(_, a)| a.0).sum();
    let received = (balance.0 + sent)
        .checked_sub(funding.0)
        .unwrap_or_else(|| panic!("account {account}: a read's balance {balance:?} is below what it can be"));
    let mut seen = [(0, 0); ACCOUNTS];
    for (owner, transfers) in applied.iter().enumerate() {
        if owner == account {
            seen[owner] = (nonce, nonce);
            continue;
        }
        let from_owner = received / DIGIT.pow(owner as u32) % DIGIT;
        // The counts of the owner's transfers whose part to `account` sums to what it shows.
        let mut sum = 0u128;
        let mut range: Option<(u64, u64)> = (from_owner == 0).then_some((0, 0));
        for (i, (to, amount)) in transfers.iter().enumerate() {
            if *to == account {
                sum += amount.0 / DIGIT.pow(owner as u32);
            }
            if sum == from_owner {
                let count = i as u64 + 1;
                range = Some(range.map_or((count, count), |(lo, _)| (lo, count)));
            }
        }
        seen[owner] = range.unwrap_or_else(|| {
            panic!("account {account}: a read's balance shows {from_owner} from owner {owner}, no prefix of its transfers sums to that")
        });
    }
    seen
}

/// The reads against one order of the transfers (see the module documentation).
fn check_reads_linearizable(history: &[Op], funding: Amount) {
    // Each owner's applied transfers in nonce order (the order it sent them: it sends the next
    // only once the previous is answered), with when each was begun and acknowledged.
    let mut applied: [Vec<(usize, Amount)>; ACCOUNTS] = Default::default();
    let mut invoked_at: [Vec<Instant>; ACCOUNTS] = Default::default();
    let mut acknowledged_at: [Vec<Instant>; ACCOUNTS] = Default::default();
    for op in history {
        if let Op::Transfer {
            from,
            to,
            amount,
            invoked,
            completed,
            applied: outcome,
        } = op
        {
            if *outcome != Some(false) {
                applied[*from].push((*to, *amount));
                invoked_at[*from].push(*invoked);
                acknowledged_at[*from].extend(*completed);
            }
        }
    }
    for owner in 0..ACCOUNTS {
        acknowledged_at[owner].sort();
        invoked_at[owner].sort();
    }
    let mut reads: Vec<(Instant, Instant, Seen)> = history
        .iter()
        .filter_map(|op| match op {
            Op::Read {
                account,
                invoked,
                completed,
                nonce,
                balance,
            } => Some((
                *invoked,
                *completed,
                seen_by_read(*account, *nonce, *balance, funding, &applied),
            )),
            _ => None,
        })
        .collect();
    assert!(!reads.is_empty(), "the clients read");
    for (invoked, completed, seen) in &reads {
        for owner in 0..ACCOUNTS {
            let done_before = acknowledged_at[owner].partition_point(|t| t < invoked) as u64;
            let begun_before = invoked_at[owner].partition_point(|t| t < completed) as u64;
            let (lo, hi) = seen[owner];
            assert!(
                lo <= begun_before && done_before <= hi,
                "owner {owner}: a read saw {lo}..={hi} of its transfers; {done_before} were acknowledged before it began, {begun_before} begun before it ended"
            );
        }
    }
    // No read saw fewer of an owner's transfers than one that ended before it began.
    reads.sort_by_key(|(_, completed, _)| *completed);
    for owner in 0..ACCOUNTS {
        let mut most_seen = Vec::with_capacity(reads.len());
        let mut most = 0;
        for (_, _, seen) in &reads {
            most = most.max(seen[owner].0);
            most_seen.push(most);
        }
        for (invoked, _, seen) in &reads {
            let ended_before = reads.partition_point(|(_, completed, _)| completed < invoked);
            if ended_before > 0 {
                assert!(
                    most_seen[ended_before - 1] <= seen[owner].1,
                    "owner {owner}: a read saw at most {} of its transfers after one that saw {}",
                    seen[owner].1,
                    most_seen[ended_before - 1]
                );
            }
        }
    }
    let exact: usize = reads
        .iter()
        .map(|(_, _, seen)| seen.iter().filter(|(lo, hi)| lo == hi).count())
        .sum();
    eprintln!(
        "bank: {} reads checked against one order of the transfers ({exact} of {} per-owner counts exact)",
        reads.len(),
        reads.len() * ACCOUNTS
    );
}

/// A history of owner 0 sending two transfers to account 1 (from 0 to 10 ms and from 40 to
/// 50 ms), and reads of account 1 at the given times (ms after the start) with what they showed
/// it received.
fn two_transfers_and_reads(reads: &[(u64, u64, u128)]) -> Vec<Op> {
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let mut history = vec![
        Op::Transfer {
            from: 0,
            to: 1,
            amount: amount_of(0, 3),
            invoked: at(0),
            completed: Some(at(10)),
            applied: Some(true),
        },
        Op::Transfer {
            from: 0,
            to: 1,
            amount: amount_of(0, 4),
            invoked: at(40),
            completed: Some(at(50)),
            applied: Some(true),
        },
    ];
    for &(invoked, completed, received) in reads {
        history.push(Op::Read {
            account: 1,
            invoked: at(invoked),
            completed: at(completed),
            nonce: 0,
            balance: Amount(FUNDING_FOR_CHECKS.0 + received),
        });
    }
    history
}

const FUNDING_FOR_CHECKS: Amount = Amount(1_000_000_000);

#[test]
fn the_read_checker_accepts_reads_that_fit_one_order() {
    // Before anything, after the first, one overlapping the second, and after both.
    let history = two_transfers_and_reads(&[(0, 0, 0), (11, 20, 3), (39, 45, 3), (50, 60, 7)]);
    check_reads_linearizable(&history, FUNDING_FOR_CHECKS);
}

#[test]
#[should_panic(expected = "acknowledged before it began")]
fn the_read_checker_refuses_a_stale_read() {
    // Begun after the first transfer was acknowledged, it shows none.
    let history = two_transfers_and_reads(&[(20, 30, 0)]);
    check_reads_linearizable(&history, FUNDING_FOR_CHECKS);
}

#[test]
#[should_panic(expected = "after one that saw")]
fn the_read_checker_refuses_a_read_going_back() {
    // Both reads overlap the second transfer; the later one shows less than the earlier.
    let history = two_transfers_and_reads(&[(41, 45, 7), (46, 49, 3)]);
    check_reads_linearizable(&history, FUNDING_FOR_CHECKS);
}
