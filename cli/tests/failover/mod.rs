//! The ledger's failover as a user meets it: the Raft leader's process killed (SIGKILL, through
//! `aic devnet kill`) and plain `aic wallet transfer` commands sent until one is acknowledged;
//! then the replica restarted. Measures the time from each kill to the first acknowledgement,
//! and checks every acknowledged transfer applied exactly once. Then two of three replicas down:
//! a write fails with one clear line, and succeeds once they are back.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{aic, stderr};

/// Most transfers tried after one kill (each waits out an election on its own).
const TRIES_PER_KILL: usize = 10;

struct Cluster<'a> {
    data_dir: &'a str,
    profile: String,
}

impl Cluster<'_> {
    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--profile", &self.profile]);
        aic(&all)
    }

    fn status(&self) -> Value {
        let out = self.run(&["ledger", "status", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The devnet's name of the replica that leads now.
    fn leader(&self) -> String {
        let status = self.status();
        let leader = status["leader"].as_u64().expect("a leader");
        let addr = status["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"].as_u64() == Some(leader))
            .and_then(|r| r["addr"]["addr"].as_str())
            .expect("the leader is a member")
            .to_string();
        (1..=3)
            .map(|i| format!("scheduler-{i}"))
            .find(|name| {
                let ready = std::fs::read(format!("{}/run/{name}.ready", self.data_dir)).unwrap();
                let ready: Value = serde_json::from_slice(&ready).unwrap();
                ready["quic"].as_str() == Some(addr.as_str())
            })
            .expect("the leader is one of the devnet's schedulers")
    }

    fn control(&self, verb: &str, name: &str) {
        let out = aic(&["devnet", verb, name, "--data-dir", self.data_dir]);
        assert!(out.status.success(), "{verb} {name}: {}", stderr(&out));
    }

    fn balance(&self, wallet: &str) -> aic_ledger::Amount {
        let out = self.run(&["wallet", "balance", "--json", "--wallet", wallet]);
        assert!(out.status.success(), "{}", stderr(&out));
        let view: Value = serde_json::from_slice(&out.stdout).unwrap();
        view["account"]["balance"].as_str().unwrap().parse().unwrap()
    }

    fn transfer(&self, from: &str, to: &str, amount: &str) -> std::process::Output {
        self.run(&["wallet", "transfer", to, amount, "--wallet", from, "--json"])
    }
}

/// Kills the leader `kills` times, each time sending transfers until one is acknowledged.
/// Answers the times from each kill to its first acknowledgement.
pub fn leader_kills(data_dir: &Path, kills: usize) -> Vec<Duration> {
    let data_dir = data_dir.to_str().unwrap();
    let cluster = Cluster {
        data_dir,
        profile: format!("{data_dir}/client.toml"),
    };
    let from = format!("{data_dir}/wallets/fundraiser.key");
    let receiver = format!("{data_dir}/wallets/model-owner.key");
    let out = cluster.run(&["wallet", "address", "--wallet", &receiver]);
    assert!(out.status.success(), "{}", stderr(&out));
    let to = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let before = cluster.balance(&receiver);
    // Each try sends a different amount (k·100 + try base units of 10⁻⁶ AIC), so what applied
    // can be told from what was only sent.
    let mut acknowledged = aic_ledger::Amount::ZERO;
    let mut sent_unacknowledged = aic_ledger::Amount::ZERO;
    let mut times = Vec::new();
    for kill in 0..kills {
        let leader = cluster.leader();
        let killed = Instant::now();
        cluster.control("kill", &leader);
        let mut acked = None;
        for attempt in 0..TRIES_PER_KILL {
            let micro = (kill * 100 + attempt + 1) as u64;
            let amount = format!("0.{micro:06}");
            let out = cluster.transfer(&from, &to, &amount);
            let value: aic_ledger::Amount = amount.parse().unwrap();
            if out.status.success() {
                acked = Some(killed.elapsed());
                acknowledged = acknowledged.checked_add(value).unwrap();
                break;
            }
            eprintln!(
                "failover: try {attempt} after killing {leader}: {}",
                stderr(&out).trim()
            );
            sent_unacknowledged = sent_unacknowledged.checked_add(value).unwrap();
        }
        let acked = acked.unwrap_or_else(|| panic!("no transfer acknowledged after {leader} was killed"));
        times.push(acked);
        cluster.control("restart", &leader);
    }
    // Every acknowledged transfer applied once; of the unacknowledged, at most each once.
    let received = cluster.balance(&receiver).checked_sub(before).unwrap();
    assert!(
        received >= acknowledged && received <= acknowledged.checked_add(sent_unacknowledged).unwrap(),
        "received {received}, acknowledged {acknowledged}, sent unacknowledged {sent_unacknowledged}"
    );
    times
}

/// With two of the three replicas down a write fails, saying why in one line, within the
/// client's bounded wait; with them back it goes through.
pub fn two_replicas_down(data_dir: &Path) {
    let data_dir = data_dir.to_str().unwrap();
    let cluster = Cluster {
        data_dir,
        profile: format!("{data_dir}/client.toml"),
    };
    let from = format!("{data_dir}/wallets/fundraiser.key");
    let out = cluster.run(&[
        "wallet",
        "address",
        "--wallet",
        &format!("{data_dir}/wallets/user.key"),
    ]);
    let to = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let leader = cluster.leader();
    let down: Vec<String> = (1..=3)
        .map(|i| format!("scheduler-{i}"))
        .filter(|name| *name != leader)
        .collect();
    for name in &down {
        cluster.control("kill", name);
    }
    let refused = Instant::now();
    // The profile's bound, shortened for this one command.
    let out = cluster.run(&[
        "wallet",
        "transfer",
        &to,
        "0.5",
        "--wallet",
        &from,
        "--json",
        "--leader-wait-ms",
        "4000",
    ]);
    assert!(
        !out.status.success(),
        "a write without a majority is never acknowledged"
    );
    let error = stderr(&out);
    eprintln!(
        "failover: with two replicas down a write failed after {:?}: {}",
        refused.elapsed(),
        error.trim()
    );
    let lines: Vec<&str> = error.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {error}");
    assert!(lines[0].contains("majority"), "{error}");
    assert!(lines[0].contains("within 4s"), "the bound asked for: {error}");
    for name in &down {
        cluster.control("restart", name);
    }
    let out = cluster.transfer(&from, &to, "0.5");
    assert!(out.status.success(), "with the replicas back: {}", stderr(&out));
}
