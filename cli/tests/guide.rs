//! The operator guide (`ops/README.md`) walked as an operator would, on loopback processes: keys
//! made where they are used and signed from requests, wallets and genesis, the sample configs
//! checked and started, replicas joined, nodes seeded with one replica following the rest, an
//! online ledger backup, a replica removed, a certificate rotated, a full restart, and the whole
//! cluster restored from the backup without its retired replica. The state is checked after
//! each step, so the guide and the software cannot drift apart unnoticed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn aic(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("aic runs")
}

/// Runs `aic` and answers its stdout; fails the test with its stderr otherwise.
fn ok(args: &[&str]) -> String {
    let output = aic(args);
    assert!(
        output.status.success(),
        "aic {}:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).unwrap()
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// One service process, started from its config as a unit would start it.
struct Service {
    name: String,
    role: &'static str,
    config: PathBuf,
    child: Option<Child>,
    quic: String,
    metrics: String,
}

impl Service {
    fn start(dir: &Path, name: &str, role: &'static str, config: PathBuf) -> Service {
        let mut service = Service {
            name: name.into(),
            role,
            config,
            child: None,
            quic: String::new(),
            metrics: String::new(),
        };
        service.run(dir);
        service
    }

    fn run(&mut self, dir: &Path) {
        let ready = dir.join(format!("{}.ready", self.name));
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.log", self.name)))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_aic"))
            .args([
                self.role,
                "--config",
                text(&self.config),
                "--ready-file",
                text(&ready),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        let addresses: Value = loop {
            if let Ok(bytes) = std::fs::read(&ready) {
                break serde_json::from_slice(&bytes).unwrap();
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.name,
                    std::fs::read_to_string(dir.join(format!("{}.log", self.name))).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "{} did not get ready", self.name);
            std::thread::sleep(Duration::from_millis(50));
        };
        self.quic = addresses["quic"].as_str().unwrap().to_string();
        self.metrics = addresses["metrics"].as_str().unwrap().to_string();
        // A restart comes back where peers and the membership know it: pin the bound ports.
        let config = std::fs::read_to_string(&self.config).unwrap();
        let pinned = config
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{}\"", self.quic))
            .replace(
                "metrics_listen = \"127.0.0.1:0\"",
                &format!("metrics_listen = \"{}\"", self.metrics),
            );
        std::fs::write(&self.config, pinned).unwrap();
    }

    /// SIGTERM, as systemd stops a unit, and wait for the process to exit cleanly.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{} stopped with {status}", self.name);
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let page = reqwest::blocking::get(format!("http://{}/metrics", self.metrics))
            .ok()?
            .text()
            .ok()?;
        page.lines()
            .find(|l| l.split([' ', '{']).next() == Some(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (bounded) until `check` holds.
fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A host's key and certificate as the guide makes them: the key on the host, a request to the
/// CA host, the signed certificate and the CA back. Answers the node id.
fn certificate(dir: &Path, ca_host: &Path, name: &str, role: &str) -> String {
    let tls = dir.join(name).join("tls");
    ok(&["ca", "request", "--dir", text(&tls), "--name", "node"]);
    let request = dir.join(format!("{name}.csr"));
    std::fs::copy(tls.join("node.csr"), &request).unwrap();
    let signed = ok(&[
        "ca",
        "issue",
        "--dir",
        text(ca_host),
        "--role",
        role,
        "--name",
        name,
        "--csr",
        text(&request),
    ]);
    std::fs::copy(ca_host.join(format!("{name}.pem")), tls.join("node.pem")).unwrap();
    std::fs::copy(ca_host.join("ca.pem"), tls.join("ca.pem")).unwrap();
    signed
        .lines()
        .find_map(|l| l.trim().strip_prefix("node id "))
        .expect("the node id is printed")
        .trim()
        .to_string()
}

/// A role's sample config from `ops/config`, with this host's paths, loopback ports and the
/// scheduler seed.
fn config(dir: &Path, name: &str, sample: &str, seed: &str, payout: &str) -> PathBuf {
    let host = dir.join(name);
    let sample_text = std::fs::read_to_string(repo().join("ops/config").join(sample))
        .unwrap()
        .replace("/etc/aic/tls/", &format!("{}/tls/", host.display()))
        .replace("/var/lib/aic/", &format!("{}/data/", host.display()))
        .replace(
            "/etc/aic/genesis.toml",
            &format!("{}/genesis.toml", dir.display()),
        )
        .replace(
            "/etc/aic/system.key",
            &format!("{}/wallets/system.key", dir.display()),
        )
        .lines()
        .map(|line| {
            let key = line.split('=').next().unwrap_or_default().trim();
            match key {
                "listen" | "metrics_listen" => format!("{key} = \"127.0.0.1:0\""),
                "advertise" => "advertise = \"\"".to_string(),
                "addr" if !seed.is_empty() => format!("addr = \"{seed}\""),
                "replicas" => "replicas = []".to_string(),
                "payout_address" => format!("payout_address = \"{payout}\""),
                "backend" => "backend = \"cpu\"".to_string(),
                _ => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = host.join("config.toml");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(&path, sample_text).unwrap();
    let checked = aic(&[
        match sample {
            "scheduler.toml" => "scheduler",
            "storage.toml" => "storage-node",
            _ => "compute-node",
        },
        "--check-config",
        "--config",
        text(&path),
    ]);
    assert!(
        checked.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    path
}

fn set(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

fn status(profile: &Path) -> Value {
    json(&["ledger", "status", "--json", "--profile", text(profile)])
}

fn voters(status: &Value) -> Vec<String> {
    let mut ids: Vec<String> = status["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["voter"] == true)
        .map(|r| r["addr"]["node_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn nodes_seen_by(scheduler: &str, profile: &Path) -> Vec<(String, String, String)> {
    json(&[
        "nodes",
        "--json",
        "--scheduler",
        scheduler,
        "--profile",
        text(profile),
    ])
    .as_array()
    .unwrap()
    .iter()
    .map(|n| {
        (
            n["name"].as_str().unwrap().to_string(),
            n["id"].as_str().unwrap().to_string(),
            n["state"].as_str().unwrap().to_string(),
        )
    })
    .collect()
}

fn up_on(scheduler: &str, profile: &Path, name: &str) -> Option<String> {
    nodes_seen_by(scheduler, profile)
        .into_iter()
        .find(|(n, _, state)| n == name && state == "up")
        .map(|(_, id, _)| id)
}

#[test]
fn the_operator_guide_walked_on_loopback() {
    aic_protocol::install_crypto_provider();
    // AIC_GUIDE_KEEP=1 keeps the processes' logs and data for a look after a failure.
    let temp = tempfile::Builder::new()
        .prefix("aic-guide-")
        .disable_cleanup(std::env::var_os("AIC_GUIDE_KEEP").is_some())
        .tempdir()
        .unwrap();
    let dir = temp.path();
    let ca_host = dir.join("ca-host");

    // --- Bringing up a cluster: the CA, and each key made on its own host.
    ok(&["ca", "init", "--dir", text(&ca_host)]);
    let mut ids = std::collections::BTreeMap::new();
    for (name, role) in [
        ("sched-0", "scheduler"),
        ("sched-1", "scheduler"),
        ("sched-2", "scheduler"),
        ("storage-0", "storage"),
        ("storage-1", "storage"),
        ("gpu-1", "compute"),
    ] {
        ids.insert(name, certificate(dir, &ca_host, name, role));
    }
    assert!(
        !ca_host.join("sched-0.key").exists(),
        "no node's key was ever on the CA host"
    );
    let people = dir.join("people");
    for (name, role) in [("ops", "client"), ("admin", "operator")] {
        ok(&[
            "ca",
            "issue",
            "--dir",
            text(&ca_host),
            "--role",
            role,
            "--name",
            name,
        ]);
        for file in [format!("{name}.pem"), format!("{name}.key")] {
            std::fs::create_dir_all(&people).unwrap();
            std::fs::copy(ca_host.join(&file), people.join(&file)).unwrap();
        }
    }
    std::fs::copy(ca_host.join("ca.pem"), people.join("ca.pem")).unwrap();

    // Wallets and genesis, as the guide's loop makes them.
    let mut addresses = std::collections::BTreeMap::new();
    for who in [
        "fundraiser",
        "advisors",
        "company",
        "team",
        "operations",
        "system",
        "provider",
    ] {
        let wallet = dir.join("wallets").join(format!("{who}.key"));
        ok(&["wallet", "new", "--wallet", text(&wallet)]);
        addresses.insert(
            who,
            ok(&["wallet", "address", "--wallet", text(&wallet)])
                .trim()
                .to_string(),
        );
    }
    ok(&[
        "ledger",
        "genesis",
        "--chain-id",
        "aic-guide",
        "--fundraiser",
        &addresses["fundraiser"],
        "--advisors",
        &addresses["advisors"],
        "--company",
        &addresses["company"],
        "--team",
        &addresses["team"],
        "--operations",
        &addresses["operations"],
        "--system-key",
        &addresses["system"],
        "--vesting-days",
        "730",
        "--cliff-days",
        "180",
        "--out",
        text(&dir.join("genesis.toml")),
    ]);

    // The schedulers from the sample config; the first bootstraps.
    let mut schedulers: Vec<Service> = Vec::new();
    for name in ["sched-0", "sched-1", "sched-2"] {
        let path = config(dir, name, "scheduler.toml", "", "");
        if name == "sched-0" {
            set(&path, "bootstrap = false", "bootstrap = true");
        }
        schedulers.push(Service::start(dir, name, "scheduler", path));
    }
    let seed = schedulers[0].quic.clone();
    // Each person's profile, written and checked by `aic profile init`.
    let profile = |file: &str, name: &str| {
        let path = dir.join(file);
        ok(&[
            "profile",
            "init",
            "--out",
            text(&path),
            "--scheduler",
            &seed,
            "--ca",
            text(&people.join("ca.pem")),
            "--cert",
            text(&people.join(format!("{name}.pem"))),
            "--key",
            text(&people.join(format!("{name}.key"))),
        ]);
        path
    };
    let client = profile("client.toml", "ops");
    let operator = profile("operator.toml", "admin");
    until("sched-0 leads", || status(&client)["leader"].is_u64());
    for (i, name) in ["sched-1", "sched-2"].into_iter().enumerate() {
        let addr = schedulers[i + 1].quic.clone();
        ok(&[
            "ledger",
            "add-learner",
            "--addr",
            &addr,
            "--node-id",
            &ids[name],
            "--profile",
            text(&operator),
        ]);
        ok(&["ledger", "promote", &ids[name], "--profile", text(&operator)]);
    }
    let mut three = vec![
        ids["sched-0"].clone(),
        ids["sched-1"].clone(),
        ids["sched-2"].clone(),
    ];
    three.sort();
    assert_eq!(voters(&status(&client)), three);

    // --- Adding a node: seeded with one replica, each follows the ledger's replica set.
    let payout = addresses["provider"].clone();
    let storage_config = config(dir, "storage-0", "storage.toml", &seed, &payout);
    let mut storage = Service::start(dir, "storage-0", "storage-node", storage_config);
    let second_config = config(dir, "storage-1", "storage.toml", &seed, &payout);
    let mut second_storage = Service::start(dir, "storage-1", "storage-node", second_config);
    let compute_config = config(dir, "gpu-1", "compute.toml", &seed, &payout);
    let mut compute = Service::start(dir, "gpu-1", "compute-node", compute_config);
    for scheduler in &schedulers {
        until("every replica sees both nodes up", || {
            up_on(&scheduler.quic, &client, "storage-0").is_some()
                && up_on(&scheduler.quic, &client, "gpu-1").is_some()
        });
    }
    assert_eq!(storage.metric("aic_storage_scheduler_connected"), Some(3.0));

    // Some money moves, so the restores below have something to show.
    let fundraiser = dir.join("wallets/fundraiser.key");
    let transfer = |amount: &str| {
        ok(&[
            "wallet",
            "transfer",
            &addresses["provider"],
            amount,
            "--wallet",
            text(&fundraiser),
            "--profile",
            text(&client),
        ]);
    };
    let balance = || {
        json(&[
            "wallet",
            "balance",
            &addresses["provider"],
            "--json",
            "--profile",
            text(&client),
        ])["account"]["balance"]
            .clone()
    };
    transfer("100");

    // --- A storage node's disk lost: restored from a backup holding no key, its dataset's key
    // recovered from the storage node it was escrowed with.
    let digits = repo().join("storage-node/data/digits/digits.csv");
    let imported = json(&[
        "dataset",
        "import",
        text(&digits),
        "--label",
        "digit",
        "--replicas",
        "1",
        "--storage",
        &storage.quic,
        "--wallet",
        text(&fundraiser),
        "--json",
        "--profile",
        text(&client),
    ]);
    let dataset = imported["dataset"].as_str().unwrap().to_string();
    let storage_data = dir.join("storage-0/data/storage");
    let escrow_record = storage_data.join(format!("datasets/{dataset}.escrow"));
    until("the dataset's key is escrowed with storage-1", || {
        std::fs::read(&escrow_record)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|r| r["nodes"].as_array().is_some_and(|n| !n.is_empty()))
    });
    let preview = |storage: &Service| {
        aic(&[
            "dataset",
            "preview",
            &dataset,
            "--rows",
            "3",
            "--storage",
            &storage.quic,
            "--json",
            "--profile",
            text(&client),
        ])
    };
    let columns_before =
        serde_json::from_slice::<Value>(&preview(&storage).stdout).unwrap()["columns"].clone();
    let storage_backup = dir.join("storage-0.backup");
    ok(&[
        "storage",
        "backup",
        "--config",
        text(&storage.config),
        "--out",
        text(&storage_backup),
    ]);
    let mut in_backup = vec![storage_backup.clone()];
    while let Some(path) = in_backup.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let path = entry.unwrap().path();
            assert!(
                !path.to_string_lossy().ends_with(".key"),
                "a key in the backup: {}",
                path.display()
            );
            if path.is_dir() {
                in_backup.push(path);
            }
        }
    }
    storage.stop();
    std::fs::remove_dir_all(&storage_data).unwrap();
    ok(&[
        "storage",
        "restore",
        "--config",
        text(&storage.config),
        "--from",
        text(&storage_backup),
    ]);
    storage.run(dir);
    let restored = preview(&storage);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&restored.stdout).unwrap()["columns"],
        columns_before
    );
    // The node's key of the dataset is only given back to a holder: another storage node
    // restored with this backup recovers nothing.
    let other_restore = dir.join("storage-1-restore-attempt");
    let stranger_config = dir.join("storage-1/stranger.toml");
    std::fs::write(
        &stranger_config,
        std::fs::read_to_string(&second_storage.config)
            .unwrap()
            .replace("data/storage\"", "storage-1-restore-attempt\""),
    )
    .unwrap();
    let refused = aic(&[
        "storage",
        "restore",
        "--config",
        text(&stranger_config),
        "--from",
        text(&storage_backup),
        "--json",
    ]);
    assert!(
        !refused.status.success(),
        "a node that never held the dataset gets no key"
    );
    let report: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(report["recovered"].as_array().unwrap().len(), 0, "{report}");
    assert!(!other_restore.join(format!("datasets/{dataset}.key")).exists());

    // --- Backing up the ledger, online.
    let backup = dir.join("ledger.backup");
    ok(&[
        "ledger",
        "backup",
        "--out",
        text(&backup),
        "--profile",
        text(&operator),
    ]);
    let inspected = json(&["ledger", "inspect", "--backup", text(&backup), "--json"]);
    assert_eq!(inspected["members"].as_array().unwrap().len(), 3);
    let balance_at_backup = balance();
    transfer("5");
    assert_ne!(balance(), balance_at_backup);

    // --- One replica's disk lost: it starts on an empty data dir and rejoins.
    schedulers[1].stop();
    std::fs::remove_dir_all(dir.join("sched-1/data/ledger")).unwrap();
    schedulers[1].run(dir);
    let rejoin_addr = schedulers[1].quic.clone();
    ok(&[
        "ledger",
        "rejoin",
        "--addr",
        &rejoin_addr,
        "--node-id",
        &ids["sched-1"],
        "--profile",
        text(&operator),
    ]);
    assert_eq!(voters(&status(&client)), three);
    until("the rejoined replica holds the ledger again", || {
        let status = status(&client);
        let applied = status["applied_index"].as_u64().unwrap();
        status["replicas"].as_array().unwrap().iter().any(|r| {
            r["addr"]["node_id"] == ids["sched-1"].as_str()
                && r["matched_index"].as_u64().is_some_and(|m| m >= applied)
        })
    });

    // --- Retiring a replica: removed, then stopped; the nodes let it go.
    ok(&["ledger", "remove", &ids["sched-2"], "--profile", text(&operator)]);
    let mut retired = schedulers.pop().unwrap();
    retired.stop();
    until("the storage node let the retired replica go", || {
        storage.metric("aic_storage_scheduler_connected") == Some(2.0)
    });
    let mut two = vec![ids["sched-0"].clone(), ids["sched-1"].clone()];
    two.sort();
    assert_eq!(voters(&status(&client)), two);

    // --- Rotating a certificate: a new one for the same key, the node id kept.
    let tls = dir.join("storage-0/tls");
    ok(&["ca", "request", "--dir", text(&tls), "--name", "node", "--renew"]);
    std::fs::copy(tls.join("node.csr"), dir.join("storage-0.csr")).unwrap();
    ok(&[
        "ca",
        "issue",
        "--dir",
        text(&ca_host),
        "--role",
        "storage",
        "--name",
        "storage-0",
        "--csr",
        text(&dir.join("storage-0.csr")),
        "--days",
        "30",
    ]);
    std::fs::copy(ca_host.join("storage-0.pem"), tls.join("node.pem")).unwrap();
    storage.stop();
    storage.run(dir);
    until("storage-0 back with its node id", || {
        up_on(&seed, &client, "storage-0").as_deref() == Some(ids["storage-0"].as_str())
    });

    // --- A full restart: everything stopped (SIGTERM) and started again.
    for service in schedulers
        .iter_mut()
        .chain([&mut storage, &mut second_storage, &mut compute])
    {
        service.stop();
    }
    for service in schedulers
        .iter_mut()
        .chain([&mut storage, &mut second_storage, &mut compute])
    {
        service.run(dir);
    }
    until("a leader after the restart", || {
        status(&client)["leader"].is_u64()
    });
    assert_eq!(voters(&status(&client)), two);
    let after_restart = balance();
    until("both nodes up after the restart", || {
        up_on(&seed, &client, "storage-0").is_some() && up_on(&seed, &client, "gpu-1").is_some()
    });

    // --- Restoring the whole cluster from the backup, without the retired replica.
    for scheduler in schedulers.iter_mut() {
        scheduler.stop();
    }
    for scheduler in schedulers.iter_mut() {
        let restored = dir.join(&scheduler.name).join("data/ledger-restored");
        ok(&[
            "ledger",
            "restore",
            "--backup",
            text(&backup),
            "--data-dir",
            text(&restored),
            "--genesis",
            text(&dir.join("genesis.toml")),
            "--voter",
            &ids["sched-0"],
            "--voter",
            &ids["sched-1"],
        ]);
        set(&scheduler.config, "data/ledger\"", "data/ledger-restored\"");
    }
    // sched-0 still says `bootstrap = true`: a restored replica belongs to a cluster already.
    for scheduler in schedulers.iter_mut() {
        scheduler.run(dir);
    }
    until("a leader after the restore", || {
        status(&client)["leader"].is_u64()
    });
    assert_eq!(voters(&status(&client)), two, "the retired replica stays retired");
    assert_eq!(balance(), balance_at_backup, "the ledger is the backup's");
    assert_ne!(after_restart, balance_at_backup);
    transfer("1");
    ok(&["chain", "verify", "--profile", text(&client)]);
    ok(&["chain", "audit", "--profile", text(&client)]);

    for service in schedulers
        .iter_mut()
        .chain([&mut storage, &mut second_storage, &mut compute])
    {
        service.stop();
    }
}
