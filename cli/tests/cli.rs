//! The `aic` binary end to end: the devnet in both modes, and the errors an operator meets first.

mod failover;
mod gateway;
mod plaza;
mod support;

use std::collections::BTreeMap;
use std::process::{Command, Output};

use serde_json::{json, Value};

fn aic(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(args)
        .env_remove("AIC_LOG")
        .output()
        .expect("the aic binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `aic devnet --once --json` with `extra` flags to completion; answers its status.
fn devnet_once(extra: &[&str]) -> Value {
    let mut args = vec!["devnet", "--once", "--json", "--timeout-secs", "60"];
    args.extend_from_slice(extra);
    let output = aic(&args);
    assert!(output.status.success(), "devnet failed: {}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("one JSON object on stdout")
}

/// Runs a devnet to completion and checks the status it prints.
fn check_devnet(extra: &[&str]) {
    let status = devnet_once(extra);

    let nodes = status["nodes"].as_array().expect("nodes");
    let mut roles = BTreeMap::new();
    for node in nodes {
        *roles
            .entry(node["role"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
        assert_eq!(node["state"], "up", "{node}");
        let id = node["id"].as_str().unwrap();
        assert_eq!(id.len(), 64, "a node id is a 32-byte hash in hex: {id}");
        let addr: std::net::SocketAddr = node["addr"].as_str().unwrap().parse().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0);
        if node["role"] != "scheduler" {
            assert!(
                !node["rtts"].as_array().unwrap().is_empty(),
                "RTTs measured: {node}"
            );
        }
    }
    let expected: BTreeMap<String, i32> = [("scheduler", 1), ("storage", 2), ("compute", 3)]
        .into_iter()
        .map(|(role, count)| (role.to_string(), count))
        .collect();
    assert_eq!(roles, expected);
    let ports: std::collections::BTreeSet<&str> = nodes.iter().map(|n| n["addr"].as_str().unwrap()).collect();
    assert_eq!(ports.len(), 6, "each service has its own QUIC port");

    let metrics = status["metrics"].as_object().expect("metrics");
    assert_eq!(
        metrics.len(),
        9,
        "three scheduler replicas, five nodes and the gateway: {metrics:?}"
    );
    let gateway = &status["gateway"];
    assert!(
        gateway["url"].as_str().unwrap().starts_with("https://127.0.0.1:")
            && gateway["model"] == "digits"
            && gateway["api_key"].as_str().unwrap().starts_with("aic_"),
        "{gateway}"
    );

    let ledger = &status["ledger"];
    assert_eq!(ledger["replicas"].as_array().unwrap().len(), 3, "{ledger}");
    assert!(ledger["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["voter"] == true));
    assert!(
        ledger["leader"].as_str().unwrap().starts_with("scheduler-"),
        "{ledger}"
    );
    // 10 billion AIC less the 20 % reserve, less what the main job burned (its platform fee).
    let supply: f64 = ledger["total_supply"].as_str().unwrap().parse().unwrap();
    assert!((7_999_999_000.0..=8_000_000_000.0).contains(&supply), "{ledger}");
    assert!(ledger["block_height"].as_u64().unwrap() >= 1);
    assert!(ledger["applied_index"].as_u64().unwrap() >= 1);
    assert_eq!(ledger["chain_verified"], true);
    let digits = &status["datasets"][0];
    assert_eq!(digits["rows"], 1797, "the bundled digits are imported: {status}");
    check_main_job(&status["job"], None);
    assert_eq!(status["chain"]["verified"], true);
    // The job's Proof-of-Value rewards accrued at settlement and were issued at a reward epoch.
    let chain = &status["chain"];
    assert!(chain["reward_epoch"].as_u64().unwrap() >= 1, "{chain}");
    let issued = amount(&chain["rewards_issued"]);
    assert!(issued > aic_ledger::Amount::ZERO, "{chain}");
    // Issued (within the issuance cap) plus still accrued is exactly what the job earned.
    let earned = status["job"]["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["paid"] == "at the next reward epoch")
        .fold(aic_ledger::Amount::ZERO, |sum, r| {
            sum.checked_add(amount(&r["amount"])).unwrap()
        });
    assert!(earned > aic_ledger::Amount::ZERO, "{status}");
    assert_eq!(
        issued.checked_add(amount(&chain["rewards_accrued"])).unwrap(),
        earned,
        "{chain}"
    );
    let lottery = status["chain"]["lottery_blocks"].as_array().unwrap();
    assert!(!lottery.is_empty(), "a verified node won a block: {status}");
    for block in lottery {
        assert!(
            block["proposer"].as_str().unwrap().starts_with("compute-"),
            "{block}"
        );
        assert!(
            block["signatures"].as_u64().unwrap() >= 2,
            "winner and co-signer: {block}"
        );
    }
    assert_eq!(digits["replicas"].as_array().unwrap().len(), 2, "{digits}");
    for url in metrics.values() {
        let url = url.as_str().unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:") && url.ends_with("/metrics"),
            "{url}"
        );
    }
    let data_dir = status["data_dir"].as_str().unwrap();
    assert!(
        !std::path::Path::new(data_dir).exists(),
        "a temporary devnet dir is removed after --once"
    );
}

#[test]
fn devnet_in_process_comes_up_and_reports_json() {
    check_devnet(&[]);
}

#[test]
fn devnet_with_one_process_per_service_comes_up_the_same() {
    check_devnet(&["--processes"]);
}

#[test]
fn devnet_refuses_to_wipe_a_directory_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), b"keep me").unwrap();
    let output = aic(&["devnet", "--once", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("refusing to wipe"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read(dir.path().join("precious.txt")).unwrap(),
        b"keep me"
    );
}

#[test]
fn a_bad_config_file_names_the_file_the_key_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scheduler.toml");
    std::fs::write(&file, "[membership]\nheartbeat_interval_ms = \"fast\"\n").unwrap();
    let output = aic(&["scheduler", "--config", file.to_str().unwrap()]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains(file.to_str().unwrap()), "{message}");
    assert!(message.contains("membership.heartbeat_interval_ms"), "{message}");
    assert!(message.contains("string"), "{message}");

    std::fs::write(&file, "[endpoint]\nlisten = \"127.0.0.1:7400\"\nlisen = 1\n").unwrap();
    let message = stderr(&aic(&["scheduler", "--config", file.to_str().unwrap()]));
    assert!(message.contains("lisen"), "{message}");
}

#[test]
fn sample_configs_are_valid_toml_for_every_role() {
    for role in ["scheduler", "storage-node", "compute-node"] {
        let output = aic(&[role, "--print-sample-config"]);
        assert!(output.status.success(), "{role}: {}", stderr(&output));
        let text = String::from_utf8(output.stdout).unwrap();
        let parsed: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{role}: {e}\n{text}"));
        assert!(parsed.contains_key("endpoint"), "{role}");
    }
}

#[test]
fn ca_issue_then_a_metrics_port_in_use_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs = certs.to_str().unwrap();
    assert!(aic(&["ca", "init", "--dir", certs]).status.success());
    let again = aic(&["ca", "init", "--dir", certs]);
    assert!(!again.status.success(), "an existing CA is never overwritten");
    let issued = aic(&[
        "ca",
        "issue",
        "--dir",
        certs,
        "--role",
        "scheduler",
        "--name",
        "sched",
    ]);
    assert!(issued.status.success(), "{}", stderr(&issued));
    let bad_role = aic(&["ca", "issue", "--dir", certs, "--role", "admin", "--name", "x"]);
    assert!(!bad_role.status.success());
    let storage = aic(&[
        "ca", "issue", "--dir", certs, "--role", "storage", "--name", "store",
    ]);
    assert!(storage.status.success(), "{}", stderr(&storage));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = dir.path().join("s.toml");
    std::fs::write(
        &config,
        format!(
            "[endpoint]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:{port}\"\n[endpoint.tls]\nca = \"{certs}/ca.pem\"\ncert = \"{certs}/store.pem\"\nkey = \"{certs}/store.key\"\n[storage]\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    // Every file the config names is there: the port is what fails, when the node binds it.
    let output = aic(&["storage-node", "--config", config.to_str().unwrap()]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains(&format!("127.0.0.1:{port}")) && message.contains("metrics"),
        "{message}"
    );
}

#[test]
fn environment_overrides_are_validated_and_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(["scheduler"])
        .env("AIC_MEMBERSHIP__HEARTBEAT_INTERVAL_MS", "5")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("membership.heartbeat_interval_ms"), "{message}");
    assert!(
        message.contains("AIC_"),
        "the environment is named as the source: {message}"
    );
}

#[test]
fn a_running_devnet_answers_aic_nodes_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("devnet");
    // The status line appears once the grid is up; the devnet then keeps serving.
    let (devnet, status) = devnet_serving(&data_dir, &[]);
    let profile = status["profile"].as_str().unwrap();

    let listed = aic(&["nodes", "--json", "--profile", profile]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let nodes: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 6);
    let table = aic(&["nodes", "--profile", profile]);
    let table = String::from_utf8(table.stdout).unwrap();
    for column in [
        "NAME",
        "ROLE",
        "STATE",
        "ADDRESS",
        "LAST HEARTBEAT",
        "RTT TO PEERS",
    ] {
        assert!(table.contains(column), "{table}");
    }
    assert_eq!(
        table.lines().filter(|line| line.contains(" up ")).count(),
        6,
        "{table}"
    );

    // The ledger through the CLI: a transfer, an overdraft refused with its code, the chain
    // verified and the invariants audited.
    let fundraiser = data_dir.join("wallets/fundraiser.key");
    let fundraiser = fundraiser.to_str().unwrap();
    let alice = dir.path().join("alice.key");
    let alice = alice.to_str().unwrap();
    assert!(aic(&["wallet", "new", "--wallet", alice]).status.success());
    assert!(
        !aic(&["wallet", "new", "--wallet", alice]).status.success(),
        "a wallet is never overwritten"
    );
    let address = String::from_utf8(aic(&["wallet", "address", "--wallet", alice]).stdout).unwrap();
    let address = address.trim();
    let sent = aic(&[
        "wallet",
        "transfer",
        address,
        "12.5",
        "--profile",
        profile,
        "--wallet",
        fundraiser,
        "--json",
    ]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    let balance = aic(&[
        "wallet",
        "balance",
        "--profile",
        profile,
        "--wallet",
        alice,
        "--json",
    ]);
    let balance: Value = serde_json::from_slice(&balance.stdout).unwrap();
    assert_eq!(balance["account"]["balance"], "12.5", "{balance}");
    let overdraft = aic(&[
        "wallet",
        "transfer",
        address,
        "13",
        "--profile",
        profile,
        "--wallet",
        alice,
    ]);
    assert!(!overdraft.status.success());
    assert!(stderr(&overdraft).contains("code 103"), "{}", stderr(&overdraft));
    let verify = aic(&["chain", "verify", "--profile", profile, "--json"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    let audit = aic(&["chain", "audit", "--profile", profile]);
    assert!(audit.status.success(), "{}", stderr(&audit));
    let history = aic(&[
        "wallet",
        "history",
        "--profile",
        profile,
        "--wallet",
        alice,
        "--json",
    ]);
    let history: Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");

    gateway::check_the_gateway(&status, &data_dir);
    check_dataset_commands(dir.path(), profile, alice, fundraiser);
    check_a_copier_gets_no_dataset(&data_dir, status["datasets"][0]["asset"].as_str().unwrap());
    check_a_penguins_job(&data_dir, profile);
    check_a_ten_million_parameter_job(
        dir.path(),
        &data_dir,
        profile,
        status["datasets"][0]["asset"].as_str().unwrap(),
        &status["metrics"],
    );
    check_job_refusals(
        &data_dir,
        profile,
        status["datasets"][0]["asset"].as_str().unwrap(),
    );
    let console = plaza::Console::open(&status);
    plaza::check_the_console(&console, &status, &data_dir);
    check_the_marketplace(
        &data_dir,
        profile,
        status["datasets"][0]["asset"].as_str().unwrap(),
        &console,
    );
    // Softmax regression 64 → 10: 640 weights and 10 biases.
    check_trained_model_export(
        dir.path(),
        "weights",
        &data_dir,
        profile,
        status["job"]["trained_model"].as_str().unwrap(),
        65 * 10,
    );
    check_ledger_backup(dir.path(), &data_dir);
    // The whole story again, in a real browser: build, train, watch, publish, sell, buy, call.
    plaza::browser::walk_the_story(&status, &data_dir);

    devnet.stop();
    assert!(data_dir.join("client.toml").exists(), "a named data dir is kept");
}

/// `aic ledger backup` with the operator's profile (a client's is refused), `inspect` naming the
/// three replicas, and `restore` filling an empty data dir once and refusing it the second time.
fn check_ledger_backup(dir: &std::path::Path, data_dir: &std::path::Path) {
    let operator = data_dir.join("operator.toml");
    let client = data_dir.join("client.toml");
    let file = dir.join("ledger.backup");
    let file_text = file.to_str().unwrap();
    let refused = aic(&[
        "ledger",
        "backup",
        "--out",
        file_text,
        "--profile",
        client.to_str().unwrap(),
    ]);
    assert!(!refused.status.success(), "a client certificate takes no backup");
    assert!(!file.exists());
    let taken = aic(&[
        "ledger",
        "backup",
        "--out",
        file_text,
        "--json",
        "--profile",
        operator.to_str().unwrap(),
    ]);
    assert!(taken.status.success(), "{}", stderr(&taken));
    let inspected = aic(&["ledger", "inspect", "--backup", file_text, "--json"]);
    assert!(inspected.status.success(), "{}", stderr(&inspected));
    let info: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    let members = info["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{info}");
    assert!(info["block_height"].as_u64().unwrap() > 0);
    // Two of the three as the restored cluster's voters, into an empty dir: once only.
    let restored = dir.join("restored-replica");
    let genesis = data_dir.join("genesis.toml");
    let restore = || {
        aic(&[
            "ledger",
            "restore",
            "--backup",
            file_text,
            "--data-dir",
            restored.to_str().unwrap(),
            "--genesis",
            genesis.to_str().unwrap(),
            "--voter",
            members[0]["node_id"].as_str().unwrap(),
            "--voter",
            members[1]["node_id"].as_str().unwrap(),
            "--json",
        ])
    };
    let first = restore();
    assert!(first.status.success(), "{}", stderr(&first));
    let restored_info: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(restored_info["state_hash"], info["state_hash"]);
    assert!(restored.join("state/snapshot").exists());
    let again = restore();
    assert!(
        !again.status.success(),
        "a data dir with data is never restored over"
    );
}

/// The marketplace from the command line: a model's owner lists it and `aic asset market` shows
/// it; a buyer who will pay less than the price is refused (code 129) and charged nothing; one
/// who agrees buys it — the price to the seller and the asset to the buyer in one transaction —
/// and the listing is gone.
fn check_the_marketplace(data_dir: &std::path::Path, profile: &str, digits: &str, console: &plaza::Console) {
    const NAME: &str = "for-sale <script>alert(1)</script>";
    let wallet = |name: &str| data_dir.join(format!("wallets/{name}.key")).display().to_string();
    let (seller, buyer) = (wallet("model-owner"), wallet("user"));
    let run = |args: &[&str], who: &str| -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--profile", profile, "--wallet", who, "--json"]);
        let out = aic(&all);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let balance = |who: &str| -> aic_ledger::Amount {
        run(&["wallet", "balance"], who)["account"]["balance"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let model = run(
        &[
            "model",
            "register",
            "--name",
            NAME,
            "--kind",
            "softmax",
            "--for-dataset",
            digits,
        ],
        &seller,
    );
    let model = model["asset"].as_str().unwrap();
    run(&["asset", "sell", model, "--price", "2.5"], &seller);
    let market = run(&["asset", "market"], &buyer);
    let row = market
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["id"] == model)
        .unwrap_or_else(|| panic!("listed: {market}"));
    assert_eq!((&row["price"], &row["name"]), (&json!("2.5"), &json!(NAME)));
    // The console lists it, the name a user chose escaped, not run.
    let (code, market) = console.get("/market");
    assert_eq!(code, 200);
    assert!(
        market.contains("2.5 AIC") && market.contains(&format!("/assets/{model}")),
        "{market}"
    );
    assert!(
        market.contains("for-sale &#60;script&#62;") && !market.contains("<script>"),
        "{market}"
    );
    let (code, page) = console.get(&format!("/assets/{model}"));
    assert_eq!(code, 200);
    assert!(page.contains("<dd id=\"price\">2.5 AIC</dd>"), "{page}");

    let (seller_before, buyer_before) = (balance(&seller), balance(&buyer));
    let cheap = aic(&[
        "asset",
        "buy",
        model,
        "--max-price",
        "2",
        "--profile",
        profile,
        "--wallet",
        &buyer,
    ]);
    assert!(!cheap.status.success());
    assert!(stderr(&cheap).contains("code 129"), "{}", stderr(&cheap));
    assert_eq!(balance(&buyer), buyer_before, "a refused purchase costs nothing");

    let bought = run(&["asset", "buy", model, "--max-price", "2.5"], &buyer);
    assert_eq!(bought["price"], "2.5", "{bought}");
    let price: aic_ledger::Amount = "2.5".parse().unwrap();
    assert_eq!(balance(&seller).0, seller_before.0 + price.0);
    assert_eq!(balance(&buyer).0, buyer_before.0 - price.0);
    let shown = run(&["asset", "show", model], &buyer);
    assert_eq!(
        shown["owner"].as_str().unwrap(),
        run(&["wallet", "address"], &buyer)["address"].as_str().unwrap()
    );
    let market = run(&["asset", "market"], &buyer);
    assert!(
        market.as_array().unwrap().iter().all(|row| row["id"] != model),
        "sold: no longer listed: {market}"
    );
}

/// A devnet of one process per service whose compute-3 corrupts every inference output, kept
/// running: the gateway's verification outvotes compute-3 and the rater penalises it; an honest node dies
/// holding a batch (the devnet's drill) and no call is lost; every row is charged once
/// (`tests/gateway/mod.rs`).
#[test]
fn the_gateway_outvotes_a_lying_node_and_loses_no_call_when_another_dies() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("devnet");
    let rows = gateway::DRILL_ROWS.to_string();
    let (devnet, status) = devnet_serving(
        &data_dir,
        &[
            "--processes",
            "--faulty-inference-percent",
            "100",
            "--kill-compute-on-inference-rows",
            &rows,
        ],
    );
    gateway::check_a_lying_node_and_a_dead_one(&status, &data_dir);
    devnet.stop();
}

/// A flooding client over HTTPS: a gateway allowing one call a minute and a burst of two answers
/// the third 429 with `Retry-After`, before the body or the ledger (`tests/gateway/limits.rs`).
#[test]
fn a_gateway_refuses_a_key_over_its_rate() {
    gateway::limits::check_a_key_over_its_rate_is_refused();
}

/// `aic dataset` against the running devnet: bad imports refused before anything is stored; the
/// digits imported onto both storage nodes with a Dataset asset minted to the importer; every
/// shard healthy on each node; export for the owner only, as Parquet the parquet reader reads.
fn check_dataset_commands(dir: &std::path::Path, profile: &str, owner: &str, stranger: &str) {
    let digits = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../storage-node/data/digits/digits.csv"
    );
    let dataset = |args: &[&str], wallet: &str| {
        let mut all = vec!["dataset"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--profile", profile, "--wallet", wallet]);
        aic(&all)
    };
    let unknown_label = dataset(&["import", digits, "--label", "class"], owner);
    assert!(!unknown_label.status.success());
    assert!(
        stderr(&unknown_label).contains("no label column \"class\""),
        "{}",
        stderr(&unknown_label)
    );
    let too_many = dataset(&["import", digits, "--label", "digit", "--replicas", "3"], owner);
    assert!(!too_many.status.success());
    assert!(
        stderr(&too_many).contains("--replicas 3 needs 3 storage nodes"),
        "{}",
        stderr(&too_many)
    );
    let listed = dataset(&["list", "--json"], owner);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    // The devnet's digits (the main job's trained weights are a tensor, not a dataset); nothing
    // from a refused import.
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "only the devnet's own objects; nothing stored by a refused import: {listed}"
    );

    // The ledger refuses the asset (its name is too long): the storage nodes drop their copies
    // again, and nothing is minted.
    let long_name = "n".repeat(300);
    let unminted = dataset(
        &["import", digits, "--label", "digit", "--name", &long_name],
        owner,
    );
    assert!(!unminted.status.success());
    let message = stderr(&unminted);
    assert!(
        message.contains("the Dataset asset was not minted") && message.contains("name at most"),
        "{message}"
    );
    let listed = dataset(&["list", "--json"], owner);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "no half dataset: {listed}");

    let imported = dataset(
        &["import", digits, "--label", "digit", "--fee", "0.5", "--json"],
        owner,
    );
    assert!(imported.status.success(), "{}", stderr(&imported));
    let imported: Value = serde_json::from_slice(&imported.stdout).unwrap();
    assert_eq!(imported["rows"], 1797, "{imported}");
    assert_eq!(imported["replicas"].as_array().unwrap().len(), 2, "{imported}");
    let id = imported["dataset"].as_str().unwrap();
    let asset = imported["asset"].as_str().unwrap();

    let shown = aic(&["asset", "show", asset, "--profile", profile, "--json"]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["kind"], "dataset", "{shown}");
    assert_eq!(shown["usage_fee"], "0.5", "{shown}");
    // Minted from the import both storage nodes attested, not by the importer itself.
    assert_eq!(shown["provenance"]["source"], "import", "{shown}");
    assert_eq!(
        shown["provenance"]["attesters"].as_array().unwrap().len(),
        2,
        "{shown}"
    );
    let manifest: Value = serde_json::from_str(shown["manifest"].as_str().unwrap()).unwrap();
    assert_eq!(manifest["rows"], 1797);
    assert_eq!(manifest["replicas"].as_array().unwrap().len(), 2);

    let stat = dataset(&["stat", id, "--json"], owner);
    assert!(stat.status.success(), "{}", stderr(&stat));
    let stat: Value = serde_json::from_slice(&stat.stdout).unwrap();
    let shards = stat["shards"].as_array().unwrap();
    assert!(shards.iter().all(|s| s["state"] == "healthy"), "{stat}");

    let refused = dataset(
        &["export", asset, "--out", dir.join("stolen").to_str().unwrap()],
        stranger,
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("only the owner may export"),
        "{}",
        stderr(&refused)
    );
    let out = dir.join("export");
    let exported = dataset(
        &["export", asset, "--out", out.to_str().unwrap(), "--json"],
        owner,
    );
    assert!(exported.status.success(), "{}", stderr(&exported));
    let mut rows = 0usize;
    let mut files = 0;
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "parquet") {
            files += 1;
            let file = std::fs::File::open(&path).unwrap();
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                assert_eq!(batch.num_columns(), 65, "64 features and the label");
                rows += batch.num_rows();
            }
        }
    }
    assert_eq!((files, rows), (shards.len(), 1797));
    assert!(out.join("manifest.json").exists());
}

/// Issue 12's first attack, made as an attacker would — a fresh wallet and raw requests over the
/// client certificate, not the CLI: minting a Dataset (or TrainedModel) asset that carries the
/// digits' content hash is refused by the ledger; a Model asset with that hash can be minted
/// (another kind) but the storage node refuses to export the digits against it.
fn check_a_copier_gets_no_dataset(data_dir: &std::path::Path, digits_asset: &str) {
    use aic_ledger::api::{LedgerRequest, LedgerResponse};
    use aic_ledger::tx::{AssetKind, AssetMetadata, Call, Transaction};
    use aic_ledger::{Keypair, TxError};
    use aic_protocol::certs::IdentityFiles;
    use aic_protocol::messages::{ClientRequest, NodeState, OwnerProof};
    use aic_protocol::rpc::RpcClient;
    use aic_protocol::{AssetId, ErrorCode, Role};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        aic_protocol::install_crypto_provider();
        let certs = data_dir.join("certs");
        let identity = IdentityFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join("client.pem"),
            key: certs.join("client.key"),
        }
        .load()
        .unwrap();
        let endpoint = aic_protocol::transport::outbound_endpoint(&identity).unwrap();
        let profile: toml::Value =
            toml::from_str(&std::fs::read_to_string(data_dir.join("client.toml")).unwrap()).unwrap();
        let scheduler =
            RpcClient::connect(&endpoint, profile["scheduler"].as_str().unwrap(), Role::Scheduler)
                .await
                .unwrap();
        let ledger = |request: LedgerRequest| {
            let scheduler = scheduler.clone();
            async move { aic_ledger::remote::request(&scheduler, &request).await.unwrap() }
        };
        let digits_asset: AssetId = digits_asset.parse().unwrap();
        let LedgerResponse::Asset(Some(digits)) = ledger(LedgerRequest::Asset(digits_asset)).await else {
            panic!("the digits asset is on the ledger");
        };
        let LedgerResponse::Status(status) = ledger(LedgerRequest::Status).await else {
            panic!("a status");
        };
        let copier = Keypair::generate();
        // A refused transaction spends no nonce: every attempt here is the copier's first.
        let mint = |kind: AssetKind| {
            let tx = Transaction {
                chain_id: status.chain_id.clone(),
                from: copier.address(),
                nonce: 0,
                call: Call::MintAsset {
                    kind,
                    metadata: AssetMetadata {
                        name: "my digits".into(),
                        content_hash: digits.metadata.content_hash,
                        manifest: digits.metadata.manifest.clone(),
                        usage_fee: "100".parse().unwrap(),
                    },
                },
            }
            .sign(&copier);
            ledger(LedgerRequest::Submit(Box::new(tx)))
        };
        for kind in [AssetKind::Dataset, AssetKind::TrainedModel] {
            match mint(kind).await {
                LedgerResponse::Submitted { result, .. } => {
                    assert_eq!(result.unwrap_err(), TxError::NeedsProvenance(kind))
                }
                other => panic!("{other:?}"),
            }
        }
        let LedgerResponse::Submitted {
            result: Ok(events), ..
        } = mint(AssetKind::Model).await
        else {
            panic!("a Model asset with any hash may be registered");
        };
        let decoy = events
            .iter()
            .find_map(|e| match e {
                aic_ledger::state::Event::AssetTransfer {
                    from: None, asset, ..
                } => Some(*asset),
                _ => None,
            })
            .unwrap();

        // The export request a copier would make against the decoy.
        let nodes = match scheduler.call(&ClientRequest::ListNodes).await.unwrap() {
            aic_protocol::messages::ClientResponse::Nodes(nodes) => nodes,
            other => panic!("{other:?}"),
        };
        let storage = nodes
            .iter()
            .find(|n| n.role == Role::Storage && n.state == NodeState::Up)
            .unwrap();
        let storage = RpcClient::connect(&endpoint, &storage.quic_addr, Role::Storage)
            .await
            .unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&digits.metadata.manifest).unwrap();
        let shard = manifest["train"][0]["id"].as_str().unwrap().parse().unwrap();
        let dataset = hex::encode(&digits.metadata.content_hash[..16]);
        let expires_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + 60_000;
        let message = OwnerProof::message(&decoy, &dataset, &identity.me.node_id, expires_ms);
        let request = ClientRequest::Export {
            dataset,
            shard,
            proof: OwnerProof {
                asset: decoy,
                owner: copier.address().0,
                expires_ms,
                signature: copier.sign(&message).to_vec(),
            },
        };
        let mut answer = storage.call_stream(&request).await.unwrap();
        match answer.next().await {
            Some(Err(aic_protocol::Error::Rpc(refusal))) => {
                assert_eq!(refusal.code, ErrorCode::PermissionDenied, "{}", refusal.message);
                assert!(
                    refusal.message.contains("not the genuine asset"),
                    "{}",
                    refusal.message
                );
            }
            other => panic!("the copier got an answer: {other:?}"),
        }
    });
}

/// Real-world data through the grid: the penguins file (missing values, categories) imported
/// with the defaults, a model sized from the dataset (`--for-dataset`), and a job whose held-out
/// accuracy is the logistic regression's (scikit-learn: 0.988 over 5 folds; issue 19 asks 0.97).
fn check_a_penguins_job(data_dir: &std::path::Path, profile: &str) {
    let penguins = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../storage-node/data/penguins/penguins.csv"
    );
    let wallet = |name: &str| data_dir.join(format!("wallets/{name}.key")).display().to_string();
    let run = |args: &[&str]| {
        let out = aic(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let (owner, developer, user) = (wallet("data-owner"), wallet("model-owner"), wallet("user"));
    let imported = run(&[
        "dataset",
        "import",
        penguins,
        "--label",
        "species",
        "--profile",
        profile,
        "--wallet",
        &owner,
        "--json",
    ]);
    assert_eq!(
        (imported["rows"].as_u64(), imported["input_width"].as_u64()),
        (Some(344), Some(14))
    );
    let dataset = imported["asset"].as_str().unwrap();
    let stat = run(&[
        "dataset",
        "stat",
        imported["dataset"].as_str().unwrap(),
        "--profile",
        profile,
        "--json",
    ]);
    assert_eq!(stat["input_width"], 14, "{stat}");
    let sex = stat["report"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sex")
        .unwrap();
    assert_eq!(sex["missing"], 11, "{stat}");
    let model = run(&[
        "model",
        "register",
        "--name",
        "penguins",
        "--kind",
        "softmax",
        "--for-dataset",
        dataset,
        "--profile",
        profile,
        "--wallet",
        &developer,
        "--json",
    ]);
    assert_eq!(model["model"]["softmax_regression"]["features"], 14, "{model}");
    let job = run(&[
        "job",
        "submit",
        "--dataset",
        dataset,
        "--model",
        model["asset"].as_str().unwrap(),
        "--budget",
        "200",
        "--epochs",
        "100",
        "--profile",
        profile,
        "--wallet",
        &user,
        "--json",
    ]);
    assert_eq!(job["state"], "done", "{job}");
    let accuracy = job["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.97, "held-out accuracy {accuracy}");
    check_onnx_export(data_dir, job["trained_model"].as_str().unwrap(), penguins);

    // Body mass from the other columns: a linear regression job, held to ridge regression's R²
    // on the same seeded split (computed by `penguins.rs::a_linear_regression_on_body_mass_
    // matches_ridge`, which also pins it).
    const RIDGE_R2: f64 = 0.8947;
    let imported = run(&[
        "dataset",
        "import",
        penguins,
        "--target",
        "body_mass_g",
        "--name",
        "penguin mass",
        "--profile",
        profile,
        "--wallet",
        &owner,
        "--json",
    ]);
    let dataset = imported["asset"].as_str().unwrap();
    let model = run(&[
        "model",
        "register",
        "--spec",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/models/penguins-regression.toml"
        ),
        "--for-dataset",
        dataset,
        "--profile",
        profile,
        "--wallet",
        &developer,
        "--json",
    ]);
    // The description's training defaults (100 epochs at 0.05) stand: no flags override them.
    let job = run(&[
        "job",
        "submit",
        "--dataset",
        dataset,
        "--model",
        model["asset"].as_str().unwrap(),
        "--budget",
        "200",
        "--profile",
        profile,
        "--wallet",
        &user,
        "--json",
    ]);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["epochs"], 100, "the description's default epochs");
    let r2 = job["r2"].as_f64().unwrap();
    assert!(r2 >= RIDGE_R2 - 0.03, "held-out R² {r2}, ridge {RIDGE_R2}");
    check_onnx_export(data_dir, job["trained_model"].as_str().unwrap(), penguins);
}

/// A trained model leaves the grid as ONNX, its owner only: the onnx package's full checker
/// accepts the file and onnxruntime, fed the raw CSV (`NA`s and all, through
/// `ops/onnx-predict.py`), answers every row as `aic model predict` does, to 1e-4.
fn check_onnx_export(data_dir: &std::path::Path, trained_model: &str, rows: &str) {
    let profile = data_dir.join("client.toml");
    let profile = profile.to_str().unwrap();
    let user = data_dir.join("wallets/user.key");
    let stranger = data_dir.join("wallets/data-owner.key");
    let file = data_dir.join(format!("{trained_model}.onnx"));
    let export = |wallet: &std::path::Path| {
        aic(&[
            "model",
            "export",
            trained_model,
            "--format",
            "onnx",
            "--out",
            file.to_str().unwrap(),
            "--profile",
            profile,
            "--wallet",
            wallet.to_str().unwrap(),
            "--json",
        ])
    };
    let refused = export(&stranger);
    assert!(
        !refused.status.success() && !file.exists(),
        "only the owner exports"
    );
    assert!(
        stderr(&refused).contains("only the owner"),
        "{}",
        stderr(&refused)
    );
    let exported = export(&user);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let predicted = aic(&[
        "model",
        "predict",
        trained_model,
        "--input",
        rows,
        "--profile",
        profile,
        "--wallet",
        user.to_str().unwrap(),
        "--json",
    ]);
    assert!(predicted.status.success(), "{}", stderr(&predicted));
    let grid: Vec<Value> = serde_json::from_slice(&predicted.stdout).unwrap();
    let runtime = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/onnx-predict.py"))
        .arg(&file)
        .arg(rows)
        .output()
        .expect("python3 runs (ops/install-test-deps.sh installs onnx and onnxruntime)");
    assert!(
        runtime.status.success(),
        "{}",
        String::from_utf8_lossy(&runtime.stderr)
    );
    let theirs: Vec<Value> = String::from_utf8(runtime.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(theirs.len(), grid.len());
    assert!(grid.len() > 300, "every penguin answered: {}", grid.len());
    for (row, (ours, theirs)) in grid.iter().zip(&theirs).enumerate() {
        if let Some(value) = ours["prediction"].as_f64() {
            let got = theirs["prediction"].as_f64().unwrap();
            // Grams: 1e-4 of the value.
            assert!(
                (value - got).abs() <= 1e-4 * value.abs(),
                "row {row}: {value} vs {got}"
            );
        } else {
            assert_eq!(ours["label"], theirs["label"], "row {row}");
            let (a, b) = (
                ours["probabilities"].as_array().unwrap(),
                theirs["probabilities"].as_array().unwrap(),
            );
            assert_eq!(a.len(), b.len());
            for (p, q) in a.iter().zip(b) {
                let (p, q) = (p.as_f64().unwrap(), q.as_f64().unwrap());
                assert!((p - q).abs() <= 1e-4, "row {row}: {ours} vs {theirs}");
            }
        }
    }
}

/// A 10,000,060-parameter MLP (64 → 133,334 → 10) trained on the digits with local-SGD rounds
/// (2 local Adam steps per task, Nesterov outside): it completes, its TrainedModel exports with
/// every parameter, and each scheduler replica's Raft log pays at most 2 KB per checkpoint —
/// the weights (40 MB) never touch the log.
fn check_a_ten_million_parameter_job(
    dir: &std::path::Path,
    data_dir: &std::path::Path,
    profile: &str,
    digits: &str,
    metrics: &Value,
) {
    const HIDDEN: u64 = 133_334;
    const PARAMETERS: u64 = (64 + 1) * HIDDEN + (HIDDEN + 1) * 10;
    let wallet = |name: &str| data_dir.join(format!("wallets/{name}.key")).display().to_string();
    let run = |args: &[&str]| {
        let out = aic(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let replicas: Vec<String> = (1..=3)
        .map(|i| {
            let url = metrics[format!("scheduler-{i}")].as_str().unwrap();
            url.trim_start_matches("http://")
                .trim_end_matches("/metrics")
                .to_string()
        })
        .collect();
    let checkpoint_bytes = || -> Vec<f64> {
        replicas
            .iter()
            .map(|addr| {
                let (code, page) = support::http_get(addr, "/metrics");
                assert_eq!(code, 200);
                support::sample(
                    &page,
                    "aic_ledger_transaction_bytes_total",
                    "kind=\"checkpoint_job\"",
                )
            })
            .collect()
    };
    let checkpoints = || -> Vec<f64> {
        replicas
            .iter()
            .map(|addr| {
                let (_, page) = support::http_get(addr, "/metrics");
                support::sample(
                    &page,
                    "aic_ledger_transactions_total",
                    "kind=\"checkpoint_job\",result=\"ok\"",
                )
            })
            .collect()
    };
    let (bytes_before, count_before) = (checkpoint_bytes(), checkpoints());

    let model = run(&[
        "model",
        "register",
        "--name",
        "digits-mlp-10m",
        "--kind",
        "mlp",
        "--hidden",
        &HIDDEN.to_string(),
        "--for-dataset",
        digits,
        "--profile",
        profile,
        "--wallet",
        &wallet("model-owner"),
        "--json",
    ]);
    let job = run(&[
        "job",
        "submit",
        "--dataset",
        digits,
        "--model",
        model["asset"].as_str().unwrap(),
        "--budget",
        "200",
        "--epochs",
        "1",
        "--local-steps",
        "2",
        "--inner-optimizer",
        "adam",
        "--learning-rate",
        "0.001",
        "--outer-optimizer",
        "nesterov",
        "--outer-lr",
        "0.7",
        "--profile",
        profile,
        "--wallet",
        &wallet("user"),
        "--json",
    ]);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["local_steps"], 2, "{job}");
    let rounds = job["rounds"].as_u64().unwrap();
    assert!(rounds >= 2, "{job}");
    // The rounds moved the weights as tensors: stored, fetched by the compute nodes, and every
    // update collected once.
    let wire = &job["wire"];
    assert!(
        wire["stored_bytes"].as_u64().unwrap() >= rounds * PARAMETERS * 4,
        "{wire}"
    );
    assert!(
        wire["collected_bytes"].as_u64().unwrap() >= rounds * PARAMETERS * 4,
        "{wire}"
    );

    let (bytes_after, count_after) = (checkpoint_bytes(), checkpoints());
    for (i, ((b0, b1), (c0, c1))) in bytes_before
        .iter()
        .zip(&bytes_after)
        .zip(count_before.iter().zip(&count_after))
        .enumerate()
    {
        let entries = c1 - c0;
        assert!(
            entries >= rounds as f64,
            "replica {i}: {entries} checkpoints for {rounds} rounds"
        );
        let per_checkpoint = (b1 - b0) / entries;
        assert!(
            per_checkpoint <= 2048.0,
            "replica {i}: {per_checkpoint} bytes per checkpoint of a {PARAMETERS}-parameter model"
        );
    }

    // The owner exports every parameter, checked against the asset's content hash.
    check_trained_model_export(
        dir,
        "weights-10m",
        data_dir,
        profile,
        job["trained_model"].as_str().unwrap(),
        PARAMETERS as usize,
    );
}

/// Sums decimal AIC amounts exactly (base units).
fn amount(text: &Value) -> aic_ledger::Amount {
    text.as_str()
        .expect("an amount")
        .parse()
        .expect("a decimal AIC amount")
}

/// The main job's report: done, accurate, every payment and the refund adding up to the budget
/// to the last base unit; penalties only for `faulty`, which is never paid.
fn check_main_job(job: &Value, faulty: Option<&str>) {
    assert_eq!(job["state"], "done", "{job}");
    let accuracy = job["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.95, "held-out accuracy {accuracy} below 0.95: {job}");
    let tasks = job["tasks"].as_array().unwrap();
    assert!(!tasks.is_empty());
    for task in tasks {
        for term in [
            "rtt_ms",
            "transfer_secs",
            "queue_secs",
            "compute_secs",
            "reputation",
            "total",
        ] {
            assert!(task["cost"][term].as_f64().unwrap().is_finite(), "{task}");
        }
        assert!(task["node"].as_str().unwrap().starts_with("compute-"), "{task}");
        assert!(
            task["storage_node"].as_str().unwrap().starts_with("storage-"),
            "{task}"
        );
    }
    let payments = job["payments"].as_array().unwrap();
    let mut total = amount(&job["platform_fee_burned"])
        .checked_add(amount(&job["refund"]))
        .unwrap();
    for payment in payments {
        total = total.checked_add(amount(&payment["amount"])).unwrap();
    }
    assert_eq!(
        total,
        amount(&job["budget"]),
        "escrow balances to the last base unit: {job}"
    );
    for role in ["dataset owner", "model owner"] {
        assert!(payments.iter().any(|p| p["role"] == role), "{role} paid: {job}");
    }
    let penalised: Vec<&str> = job["penalties"]["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node"].as_str().unwrap())
        .collect();
    match faulty {
        None => assert!(penalised.is_empty(), "no honest node is penalised: {job}"),
        Some(faulty) => {
            assert!(!penalised.is_empty(), "the corrupting node is caught: {job}");
            assert!(
                penalised.iter().all(|n| *n == faulty),
                "no honest node is penalised: {job}"
            );
            let slashed = job["penalties"]["slashed"].as_array().unwrap();
            assert!(
                slashed
                    .iter()
                    .any(|s| s["node"] == faulty && s["slashed"] == "10"),
                "its stake is slashed: {job}"
            );
            assert!(
                !payments
                    .iter()
                    .any(|p| p["role"].as_str().unwrap().contains(faulty)),
                "nothing paid for its work: {job}"
            );
            let checks = job["spot_checks"].as_array().unwrap();
            assert!(checks
                .iter()
                .any(|c| c["verdict"] == "original_wrong" || c["verdict"] == "checker_wrong"));
        }
    }
}

#[test]
fn the_main_job_catches_and_slashes_a_node_that_corrupts_its_results() {
    let status = devnet_once(&["--faulty-percent", "100"]);
    check_main_job(&status["job"], Some("compute-3"));
    let lottery = status["chain"]["lottery_blocks"].as_array().unwrap();
    assert!(
        lottery.iter().all(|b| b["proposer"] != "compute-3"),
        "a node found wrong holds no ticket: {lottery:?}"
    );
    assert_eq!(status["chain"]["verified"], true);
}

/// A job over budget, beyond the wallet, on an unknown dataset, or with a model that does not
/// fit the data: each refused before any escrow is opened.
fn check_job_refusals(data_dir: &std::path::Path, profile: &str, digits: &str) {
    let wallet = |name: &str| {
        data_dir
            .join("wallets")
            .join(format!("{name}.key"))
            .display()
            .to_string()
    };
    let (user, owner) = (wallet("user"), wallet("model-owner"));
    let register = |features: &str| {
        let out = aic(&[
            "model",
            "register",
            "--name",
            "m",
            "--kind",
            "softmax",
            "--features",
            features,
            "--classes",
            "10",
            "--profile",
            profile,
            "--wallet",
            &owner,
            "--json",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out: Value = serde_json::from_slice(&out.stdout).unwrap();
        out["asset"].as_str().unwrap().to_string()
    };
    let (fits, misfit) = (register("64"), register("10"));
    // A described CNN registers (checked against the digits) and shows its layers.
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/models/digits-cnn.toml");
    let out = aic(&[
        "model",
        "register",
        "--spec",
        spec,
        "--for-dataset",
        digits,
        "--profile",
        profile,
        "--wallet",
        &owner,
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let registered: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(registered["parameters"].as_u64(), Some(14698));
    let cnn = registered["asset"].as_str().unwrap().to_string();
    let shown = aic(&["model", "show", &cnn, "--profile", profile, "--json"]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["parameters"], 14698);
    assert_eq!(shown["layers"][0]["output"], "32×8×8");
    let balance = || {
        let out = aic(&[
            "wallet",
            "balance",
            "--profile",
            profile,
            "--wallet",
            &user,
            "--json",
        ]);
        let out: Value = serde_json::from_slice(&out.stdout).unwrap();
        out["account"]["balance"].clone()
    };
    let before = balance();
    let submit = |dataset: &str, model: &str, budget: &str| {
        aic(&[
            "job",
            "submit",
            "--dataset",
            dataset,
            "--model",
            model,
            "--budget",
            budget,
            "--epochs",
            "2",
            "--profile",
            profile,
            "--wallet",
            &user,
        ])
    };
    for (dataset, model, budget, expected) in [
        (
            digits,
            misfit.as_str(),
            "50",
            "the model takes 10 features into 10 classes; the dataset has 64 features",
        ),
        (
            digits,
            fits.as_str(),
            "0.000001",
            "is below what this job may cost",
        ),
        (
            digits,
            fits.as_str(),
            "1000000",
            "more than this wallet can spend",
        ),
        (
            "00000000000000000000000000000000",
            fits.as_str(),
            "50",
            "no asset 00000000000000000000000000000000",
        ),
    ] {
        let out = submit(dataset, model, budget);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains(expected),
            "expected {expected:?} in: {}",
            stderr(&out)
        );
    }
    assert_eq!(balance(), before, "no escrow was opened by a refused job");

    // The CNN on the digits read as 1×8×8 images, with its description's training defaults
    // (60 epochs of minibatches of 32, 16 AdamW steps per task, a cosine schedule). The issue
    // asks ≥ 0.98 held out. A seeded job trains the same weights every time (below), so this
    // asserts one reproducible run — seed 1 gives 0.986 — not a draw; unseeded runs gave
    // 0.978–0.989 (seven runs, one under 0.98).
    let out = aic(&[
        "job",
        "submit",
        "--dataset",
        digits,
        "--model",
        &cnn,
        "--budget",
        "50",
        "--seed",
        "1",
        "--profile",
        profile,
        "--wallet",
        &user,
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(
        (&job["epochs"], &job["local_steps"], &job["batch_size"]),
        (&Value::from(60), &Value::from(16), &Value::from(32)),
        "the description's defaults"
    );
    let accuracy = job["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.98, "the CNN's held-out accuracy {accuracy}");

    // Two hidden ReLU layers with dropout, on its description's defaults: the issue asks ≥ 0.975.
    // Seed 1 gives 0.981; seeds 1–4 at 40 and 60 epochs and four unseeded runs gave 0.972–0.983
    // (mean 0.979, two of twelve under 0.975).
    let mlp = aic(&[
        "model",
        "register",
        "--spec",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/models/digits-mlp.toml"),
        "--for-dataset",
        digits,
        "--profile",
        profile,
        "--wallet",
        &owner,
        "--json",
    ]);
    assert!(mlp.status.success(), "{}", stderr(&mlp));
    let mlp: Value = serde_json::from_slice(&mlp.stdout).unwrap();
    let out = aic(&[
        "job",
        "submit",
        "--dataset",
        digits,
        "--model",
        mlp["asset"].as_str().unwrap(),
        "--budget",
        "50",
        "--seed",
        "1",
        "--profile",
        profile,
        "--wallet",
        &user,
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["state"], "done", "{job}");
    let accuracy = job["accuracy"].as_f64().unwrap();
    assert!(
        accuracy >= 0.975,
        "the two-hidden-layer MLP's held-out accuracy {accuracy}"
    );

    // A described graph the fixed kernels do not cover (dense → gelu → layer_norm → dense →
    // tanh → dense) trains layer by layer on the compute nodes and learns the digits, with
    // AdamW inside and a cosine schedule over the rounds.
    let deep = aic(&[
        "model",
        "register",
        "--spec",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/models/deep-mlp.toml"),
        "--for-dataset",
        digits,
        "--profile",
        profile,
        "--wallet",
        &owner,
        "--json",
    ]);
    assert!(deep.status.success(), "{}", stderr(&deep));
    let deep: Value = serde_json::from_slice(&deep.stdout).unwrap();
    let deep_job = || {
        aic(&[
            "job",
            "submit",
            "--dataset",
            digits,
            "--model",
            deep["asset"].as_str().unwrap(),
            "--budget",
            "50",
            "--epochs",
            "8",
            "--local-steps",
            "8",
            "--learning-rate",
            "0.002",
            "--inner-optimizer",
            "adamw",
            "--weight-decay",
            "0.0001",
            "--schedule",
            "cosine",
            "--warmup-rounds",
            "2",
            "--seed",
            "7",
            "--profile",
            profile,
            "--wallet",
            &user,
            "--json",
        ])
    };
    let out = deep_job();
    assert!(out.status.success(), "{}", stderr(&out));
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["model"]["parameters"], 17482, "{job}");
    assert_eq!(job["inner_optimizer"], "adamw", "{job}");
    assert_eq!(job["schedule"]["cosine"]["warmup_rounds"], 2, "{job}");
    let accuracy = job["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.93, "the deep MLP's held-out accuracy {accuracy}");
    // The same job with the same seed trains bit for bit the same weights, however its tasks
    // were placed and checked: the same losses, and weights that are the first job's asset.
    let out = deep_job();
    assert!(out.status.success(), "{}", stderr(&out));
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["state"], "done", "{again}");
    assert_eq!(
        (&again["loss"], &again["test_loss"], &again["accuracy"]),
        (&job["loss"], &job["test_loss"], &job["accuracy"])
    );
    assert_eq!(again["trained_model_weights"], job["trained_model_weights"]);
    assert_eq!(
        again["trained_model_identical_to"], job["trained_model"],
        "the second run's weights are the first's asset: {again}"
    );
    assert!(again.get("settlement_error").is_none(), "{again}");

    // A long job cancelled by its submitter: the work done is paid, the rest refunded, and the
    // escrow balances to the base unit.
    let submitted = aic(&[
        "job",
        "submit",
        "--dataset",
        digits,
        "--model",
        &fits,
        "--budget",
        "100",
        "--epochs",
        "500",
        "--detach",
        "--json",
        "--profile",
        profile,
        "--wallet",
        &user,
    ]);
    assert!(submitted.status.success(), "{}", stderr(&submitted));
    let submitted: Value = serde_json::from_slice(&submitted.stdout).unwrap();
    let job = submitted["job"].as_str().unwrap();
    let cancelled = aic(&["job", "cancel", job, "--profile", profile, "--wallet", &user]);
    assert!(cancelled.status.success(), "{}", stderr(&cancelled));
    let mut report = Value::Null;
    for _ in 0..100 {
        let out = aic(&["job", "result", job, "--json", "--profile", profile]);
        report = serde_json::from_slice(&out.stdout).unwrap();
        if report["state"] != "running" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(report["state"], "cancelled", "{report}");
    assert!(
        report["rounds"].as_u64().unwrap() < 1000,
        "stopped early: {report}"
    );
    let mut total = amount(&report["platform_fee_burned"])
        .checked_add(amount(&report["refund"]))
        .unwrap();
    for payment in report["payments"].as_array().unwrap() {
        total = total.checked_add(amount(&payment["amount"])).unwrap();
    }
    assert_eq!(
        total,
        amount(&report["budget"]),
        "escrow balances to the last base unit: {report}"
    );
    assert!(
        !report["payments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["role"] == "dataset owner"),
        "usage fees are paid for completed jobs only: {report}"
    );
}

/// A job's trained weights are stored on the storage nodes: the TrainedModel asset's owner (the
/// job's submitter) exports them as Parquet, one row per parameter, which the parquet reader
/// reads back whole.
fn check_trained_model_export(
    dir: &std::path::Path,
    out: &str,
    data_dir: &std::path::Path,
    profile: &str,
    asset: &str,
    parameters: usize,
) {
    let user = data_dir.join("wallets/user.key");
    let out = dir.join(out);
    let exported = aic(&[
        "dataset",
        "export",
        asset,
        "--out",
        out.to_str().unwrap(),
        "--profile",
        profile,
        "--wallet",
        user.to_str().unwrap(),
    ]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let file = std::fs::File::open(out.join("weights.parquet")).unwrap();
    let rows: usize = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum();
    assert_eq!(rows, parameters);
}

#[test]
fn a_compute_node_killed_mid_job_has_its_tasks_rerun_and_the_job_finishes() {
    let status = devnet_once(&["--processes", "--kill-compute-at-round", "3"]);
    let job = &status["job"];
    // Done, accurate, every payment once and the escrow balanced to the base unit.
    check_main_job(job, None);
    assert_eq!(job["rounds"], 60, "every round ran: {job}");
    // The drill held the job after its third round's checkpoint and killed compute-2 then:
    // it delivers nothing from the fourth round (index 3) on; its work went elsewhere.
    let tasks = job["tasks"].as_array().unwrap();
    let rounds_of_dead: Vec<u64> = tasks
        .iter()
        .filter(|t| t["node"] == "compute-2")
        .filter_map(|t| t["round"].as_u64())
        .collect();
    assert!(
        rounds_of_dead.iter().all(|round| *round < 3),
        "no results from compute-2 after it was killed with the job held at round 3: {rounds_of_dead:?} {job}"
    );
    assert!(
        tasks
            .iter()
            .any(|t| t["round"].as_u64() >= Some(3) && t["node"] != "compute-2"),
        "the rounds after the kill ran elsewhere: {job}"
    );
    for failure in job["failed_attempts"].as_array().unwrap() {
        assert_eq!(
            failure["node"], "compute-2",
            "only the dead node fails: {failure}"
        );
    }
}

/// A devnet left serving; stopped (SIGTERM, then killed) if a check fails before the test
/// stops it, so no devnet outlives its test.
struct ServingDevnet(std::process::Child);

impl ServingDevnet {
    /// Stops it as an operator would, and checks it stopped cleanly.
    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let exit = self.0.wait().unwrap();
        assert!(exit.success(), "SIGTERM is a graceful stop: {exit}");
    }
}

impl Drop for ServingDevnet {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `aic devnet --json` with `extra` flags and leaves it serving; answers it and the
/// status it printed once the grid was up.
fn devnet_serving(data_dir: &std::path::Path, extra: &[&str]) -> (ServingDevnet, Value) {
    use std::io::{BufRead, BufReader};
    let mut devnet = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(["devnet", "--json", "--timeout-secs", "60", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status_line = String::new();
    BufReader::new(devnet.stdout.take().unwrap())
        .read_line(&mut status_line)
        .unwrap();
    let status = serde_json::from_str(&status_line).expect("a status line");
    (ServingDevnet(devnet), status)
}

#[test]
fn a_scheduler_replica_killed_mid_job_has_the_job_resumed_by_the_new_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (devnet, status) = devnet_serving(
        &dir.path().join("devnet"),
        &["--processes", "--kill-scheduler-at-round", "5"],
    );
    // The console was reading through the replica the drill killed: its pages still show the
    // job, read through the replicas left.
    plaza::check_a_job_after_its_leader_died(&plaza::Console::open(&status), &status["job"]);
    check_a_killed_replica_restarted(&dir.path().join("devnet"));
    // The leader's process killed five times under plain CLI writes: the first acknowledgement
    // after each kill (printed: the figure the note reports), each acknowledged write once.
    let mut after_kills = failover::leader_kills(&dir.path().join("devnet"), 5);
    after_kills.sort();
    eprintln!(
        "failover: first acknowledged write after a leader kill: p50 {:?}, max {:?} ({after_kills:?})",
        after_kills[after_kills.len() / 2],
        after_kills[after_kills.len() - 1]
    );
    failover::two_replicas_down(&dir.path().join("devnet"));
    devnet.stop();
    let job = &status["job"];
    // Done, accurate, every payment once (work before the kill included) and the escrow
    // balanced to the base unit.
    check_main_job(job, None);
    assert_eq!(job["rounds"], 60, "every round ran: {job}");
    let resumed = &job["resumed"];
    let from = resumed["from_round"].as_u64().expect("the job was resumed");
    assert_eq!(
        from, 5,
        "resumed from the checkpoint the drill held the job at, not from scratch: {resumed}"
    );
    assert_ne!(resumed["by"], resumed["previous_runner"], "{resumed}");
    // It went on from the checkpoint's weights, fetched by name from the storage nodes.
    assert_eq!(resumed["weights"].as_str().map(str::len), Some(64), "{resumed}");
    assert!(resumed["weights_holders"].as_u64().unwrap() >= 1, "{resumed}");
    for task in job["tasks"].as_array().unwrap() {
        assert!(
            task["round"].as_u64().unwrap() >= from,
            "the new runner re-ran no checkpointed round: {task}"
        );
    }
    let paid_compute: Vec<&str> = job["payments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["role"].as_str())
        .filter(|r| r.starts_with("compute"))
        .collect();
    assert!(!paid_compute.is_empty(), "{job}");
    assert_eq!(status["chain"]["verified"], true, "{status}");
}

/// `aic devnet restart` brings back the replica the drill killed, as a supervisor would: it
/// listens where the membership expects it and catches up with the chain the others grew.
fn check_a_killed_replica_restarted(data_dir: &std::path::Path) {
    let data_dir = data_dir.to_str().unwrap();
    let profile = format!("{data_dir}/client.toml");
    let height = || {
        let out = aic(&["ledger", "status", "--json", "--profile", &profile]);
        assert!(out.status.success(), "{}", stderr(&out));
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        status["block_height"].as_u64().unwrap()
    };
    let unknown = aic(&["devnet", "restart", "scheduler-9", "--data-dir", data_dir]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("no service scheduler-9"),
        "{}",
        stderr(&unknown)
    );

    let chain_height = height();
    let out = aic(&["devnet", "restart", "scheduler-1", "--data-dir", data_dir]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    let metrics = answer
        .split("metrics http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("the answer names its metrics: {answer}"))
        .to_string();
    let restarted = std::time::Instant::now();
    // Bounded: 30 s of looking, every 50 ms.
    let caught_up = (0..600).find_map(|_| {
        let (_, page) = support::http_get(&metrics, "/metrics");
        if support::sample(&page, "aic_ledger_block_height", "") >= chain_height as f64 {
            return Some(restarted.elapsed());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        None
    });
    let caught_up = caught_up
        .unwrap_or_else(|| panic!("scheduler-1 did not reach block {chain_height} after its restart"));
    eprintln!("scheduler-1 restarted and reached block {chain_height} {caught_up:?} after it listened");
}

/// `aic model show --spec` checks a description offline: the summary table for a good one, the
/// layer and the numbers for a bad one, and nothing minted either way.
#[test]
fn model_show_checks_a_description_and_names_the_layer_that_does_not_fit() {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/models/digits-cnn.toml");
    let out = aic(&["model", "show", "--spec", spec]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let total = table.lines().last().unwrap();
    assert!(
        total.starts_with("total") && total.trim_end().ends_with("14698"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("conv1") && l.contains("32×8×8")),
        "{table}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"bad\"\ninput = { image = [1, 8, 8] }\nloss = \"softmax_cross_entropy\"\n\
         [[layer]]\nname = \"head\"\nkind = \"dense\"\nunits = 10\n",
    )
    .unwrap();
    let out = aic(&["model", "show", "--spec", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("layer 1 (head, dense) takes a vector (add a flatten layer); its input is 1×8×8"),
        "{}",
        stderr(&out)
    );
}
