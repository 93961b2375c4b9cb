//! The operations files against the real thing: the metrics inventory (`ops/metrics.md`) against
//! what a devnet's processes expose, the Prometheus configuration, rules and alert unit tests
//! under `promtool`, a real Prometheus scraping a devnet, the Grafana dashboards' queries, and the
//! sample configs. `prometheus` and `promtool` come from Debian (`ops/install-test-deps.sh`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::http_get;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// A system tool the suite needs; missing is a failure, never a skip.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: run ops/install-test-deps.sh"))
}

fn run_ok(command: &mut Command) -> String {
    let output = command.output().expect("the tool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

// ---------------------------------------------------------------------------------------------
// The inventory and the exposition format

/// One metric family: its type, label names and help text.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
    help: String,
}

/// `ops/metrics.md`: (role, metric) → family.
fn inventory() -> BTreeMap<(String, String), Family> {
    let text = std::fs::read_to_string(repo().join("ops/metrics.md")).expect("ops/metrics.md");
    let mut role = None;
    let mut families = BTreeMap::new();
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            role = Some(heading.trim().to_string());
            continue;
        }
        if !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 6, "a table row has four cells: {line}");
        let name = cells[1].trim_matches('`').to_string();
        let labels = if cells[3] == "—" {
            BTreeSet::new()
        } else {
            cells[3]
                .split(',')
                .map(|l| l.trim().trim_matches('`').to_string())
                .collect()
        };
        let role = role
            .clone()
            .unwrap_or_else(|| panic!("{name} is under no role heading"));
        let previous = families.insert(
            (role, name.clone()),
            Family {
                kind: cells[2].to_string(),
                labels,
                help: cells[4].to_string(),
            },
        );
        assert!(previous.is_none(), "{name} is listed twice");
    }
    families
}

/// Families in a Prometheus text exposition, with every label value seen.
fn parse_exposition(text: &str) -> BTreeMap<String, (Family, BTreeSet<String>)> {
    let mut families: BTreeMap<String, (Family, BTreeSet<String>)> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("# HELP name text");
            current = name.to_string();
            families.entry(current.clone()).or_insert_with(|| {
                (
                    Family {
                        kind: String::new(),
                        labels: BTreeSet::new(),
                        help: help.to_string(),
                    },
                    BTreeSet::new(),
                )
            });
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert_eq!(name, current, "TYPE follows its HELP");
            families.get_mut(name).expect("HELP came first").0.kind = kind.to_string();
        } else if !line.is_empty() && !line.starts_with('#') {
            let sample = line.split_whitespace().next().expect("a sample");
            assert!(
                sample.starts_with(&current),
                "sample {sample} outside its family {current}"
            );
            if let Some((_, labels)) = sample.split_once('{') {
                let entry = families.get_mut(&current).expect("a family");
                for pair in labels.trim_end_matches('}').split("\",") {
                    let (key, value) = pair.split_once("=\"").expect("key=\"value\"");
                    if key != "le" {
                        entry.0.labels.insert(key.to_string());
                        entry.1.insert(value.trim_end_matches('"').to_string());
                    }
                }
            }
        }
    }
    families
}

/// `aic_*` metric names and `aic:*` recording-rule names a PromQL expression reads.
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("aic") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
        {
            end += 1;
        }
        let word = &expr[start..end];
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        // `aic_(scheduler|storage)_…` inside a __name__ regex leaves a bare prefix: not a name.
        if boundary && (word.starts_with("aic_") || word.starts_with("aic:")) && !word.ends_with('_') {
            names.insert(word.to_string());
        }
        i = end.max(start + 3);
    }
    names
}

/// The family a sample name belongs to (histograms expose `_bucket`, `_sum`, `_count`).
fn family_of(name: &str, known: &BTreeSet<String>) -> Option<String> {
    if known.contains(name) {
        return Some(name.to_string());
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| known.contains(*base))
        .map(str::to_string)
}

fn recording_rule_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("ops/prometheus/rules/recording.yml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(|n| n.trim().to_string())
        .collect()
}

/// Every PromQL expression of the rule files (`expr:` values, block scalars included).
fn rule_expressions() -> Vec<String> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut exprs = Vec::new();
    for file in ["recording.yml", "alerts.yml"] {
        let text = std::fs::read_to_string(repo().join("ops/prometheus/rules").join(file)).unwrap();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            let Some(rest) = line.trim().strip_prefix("expr:") else {
                continue;
            };
            if rest.trim() != "|" {
                exprs.push(rest.trim().to_string());
                continue;
            }
            // A block scalar: the lines indented deeper than `expr:`.
            let mut block = Vec::new();
            while let Some(next) =
                lines.next_if(|next| indent(next) > indent(line) && !next.trim().is_empty())
            {
                block.push(next.trim());
            }
            exprs.push(block.join(" "));
        }
    }
    exprs
}

/// Every dashboard JSON, by file name.
fn dashboards() -> Vec<(String, Value)> {
    let dir = repo().join("ops/grafana/dashboards");
    let mut boards: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let board: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path.file_name().unwrap().to_string_lossy().into_owned(), board)
        })
        .collect();
    boards.sort_by(|a, b| a.0.cmp(&b.0));
    boards
}

fn dashboard_expressions(board: &Value) -> Vec<String> {
    board["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Static checks

#[test]
fn promtool_accepts_the_configuration_and_every_alert_passes_its_unit_test() {
    let promtool = tool("promtool");
    let prometheus = repo().join("ops/prometheus");
    run_ok(
        Command::new(&promtool)
            .arg("check")
            .arg("config")
            .arg(prometheus.join("prometheus.yml")),
    );
    let checked = run_ok(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(prometheus.join("rules/recording.yml"))
            .arg(prometheus.join("rules/alerts.yml")),
    );
    assert!(checked.contains("SUCCESS: 10 rules found"), "{checked}");
    let tested = run_ok(
        Command::new(&promtool)
            .args(["test", "rules"])
            .arg(prometheus.join("tests/alerts_test.yml")),
    );
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Each alert the issue asks for exists, and each alert has a unit test that names it.
    let alerts = std::fs::read_to_string(prometheus.join("rules/alerts.yml")).unwrap();
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(names.len(), 14, "{names:?}");
    let unit_tests = std::fs::read_to_string(prometheus.join("tests/alerts_test.yml")).unwrap();
    for name in &names {
        assert!(
            unit_tests.contains(&format!(
                "alertname: {name}\n        exp_alerts:\n          - exp_labels"
            )),
            "{name} has no unit test that expects it to fire"
        );
    }
}

#[test]
fn rules_and_dashboards_read_only_metrics_the_inventory_lists() {
    let inventory = inventory();
    let metrics: BTreeSet<String> = inventory.keys().map(|(_, name)| name.clone()).collect();
    let recorded = recording_rule_names();
    assert_eq!(recorded.len(), 10);
    let known = |name: &str| family_of(name, &metrics).is_some() || recorded.contains(name);

    let rules = rule_expressions();
    assert_eq!(
        rules.len(),
        24,
        "ten recording rules and fourteen alerts: {rules:#?}"
    );
    for expr in &rules {
        for name in names_in(expr) {
            assert!(
                known(&name),
                "rule `{expr}` reads {name}, which no process exports"
            );
        }
    }

    let boards = dashboards();
    let titles: Vec<&str> = boards.iter().map(|(_, b)| b["title"].as_str().unwrap()).collect();
    assert_eq!(
        titles,
        [
            "AIC / Compute and kernels",
            "AIC / Economy",
            "AIC / Inference gateway",
            "AIC / Allocator and jobs",
            "AIC / Ledger and Raft",
            "AIC / Cluster overview",
            "AIC / Storage",
        ]
    );
    let provisioned =
        std::fs::read_to_string(repo().join("ops/grafana/provisioning/datasources/aic.yml")).unwrap();
    let mut uids = BTreeSet::new();
    let mut all_exprs = Vec::new();
    for (file, board) in &boards {
        assert!(
            uids.insert(board["uid"].as_str().unwrap().to_string()),
            "{file}: uid reused"
        );
        let panels = board["panels"].as_array().unwrap();
        assert!(panels.len() >= 10, "{file}: {} panels", panels.len());
        for panel in panels {
            let uid = panel["datasource"]["uid"].as_str().unwrap();
            assert!(
                provisioned.contains(&format!("uid: {uid}")),
                "{file}: panel {} uses datasource {uid}, which is not provisioned",
                panel["title"]
            );
        }
        for expr in dashboard_expressions(board) {
            let names = names_in(&expr);
            assert!(
                !names.is_empty() || expr.contains("up{") || expr.contains("ALERTS"),
                "{file}: `{expr}` reads no metric"
            );
            for name in names {
                assert!(
                    known(&name),
                    "{file}: `{expr}` reads {name}, which no process exports"
                );
            }
            all_exprs.push(expr);
        }
    }

    // promtool parses each dashboard query (as a recording rule) so a typo fails here, not in
    // front of an operator.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    for (i, expr) in all_exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let path = dir.path().join("dashboards.yml");
    std::fs::write(&path, rules).unwrap();
    let checked = run_ok(Command::new(tool("promtool")).args(["check", "rules"]).arg(&path));
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", all_exprs.len())),
        "{checked}"
    );
}

#[test]
fn the_sample_config_of_every_role_loads_and_keeps_metrics_on_loopback() {
    for (role, file) in [
        ("scheduler", "scheduler.toml"),
        ("storage-node", "storage.toml"),
        ("compute-node", "compute.toml"),
        ("gateway", "gateway.toml"),
    ] {
        let path = repo().join("ops/config").join(file);
        let output = aic(&[role, "--check-config", "--config", path.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&output.stdout);
        let loaded: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{role}: {e}\n{text}"));
        let metrics = loaded["endpoint"]["metrics_listen"].as_str().unwrap();
        assert!(metrics.starts_with("127.0.0.1:"), "{role}: {metrics}");
        assert!(
            loaded["endpoint"]["tls"]["key"]
                .as_str()
                .unwrap()
                .starts_with("/etc/aic/tls/"),
            "{role}"
        );
        // This machine has no /etc/aic: the check opens what the sample names and says so.
        assert!(!output.status.success(), "{role}");
        assert!(
            problem_keys(&output, role).contains(&"endpoint.tls.cert".to_string()),
            "{role}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // A bad value in a sample-derived file is named, with the file.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("scheduler.toml");
    let text = std::fs::read_to_string(repo().join("ops/config/scheduler.toml"))
        .unwrap()
        .replace(
            "metrics_listen = \"127.0.0.1:9400\"",
            "metrics_listen = \"nowhere\"",
        );
    std::fs::write(&bad, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(["scheduler", "--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("metrics_listen"), "{stderr}");
}

fn aic(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("aic runs")
}

/// The config keys of the one-line problems `aic <role> --check-config` printed.
fn problem_keys(output: &std::process::Output, role: &str) -> Vec<String> {
    let prefix = format!("aic {role}: ");
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter_map(|l| {
            l.strip_prefix(&prefix)?
                .split_once(": ")
                .map(|(key, _)| key.to_string())
        })
        .collect()
}

/// A scheduler's files as the operator guide makes them, in `dir`, and its config naming them.
fn scheduler_files(dir: &Path) -> PathBuf {
    let path = |p: &str| dir.join(p).to_str().unwrap().to_string();
    run_ok(Command::new(env!("CARGO_BIN_EXE_aic")).args(["ca", "init", "--dir", &path("certs")]));
    for (role, name) in [
        ("scheduler", "sched-0"),
        ("scheduler", "sched-1"),
        ("storage", "storage-0"),
    ] {
        run_ok(Command::new(env!("CARGO_BIN_EXE_aic")).args([
            "ca",
            "issue",
            "--dir",
            &path("certs"),
            "--role",
            role,
            "--name",
            name,
        ]));
    }
    let mut addresses = Vec::new();
    for who in [
        "fundraiser",
        "advisors",
        "company",
        "team",
        "operations",
        "system",
        "stranger",
    ] {
        let wallet = path(&format!("wallets/{who}.key"));
        run_ok(Command::new(env!("CARGO_BIN_EXE_aic")).args(["wallet", "new", "--wallet", &wallet]));
        let address =
            run_ok(Command::new(env!("CARGO_BIN_EXE_aic")).args(["wallet", "address", "--wallet", &wallet]));
        addresses.push(address.trim().to_string());
    }
    run_ok(Command::new(env!("CARGO_BIN_EXE_aic")).args([
        "ledger",
        "genesis",
        "--chain-id",
        "aic-check",
        "--fundraiser",
        &addresses[0],
        "--advisors",
        &addresses[1],
        "--company",
        &addresses[2],
        "--team",
        &addresses[3],
        "--operations",
        &addresses[4],
        "--system-key",
        &addresses[5],
        "--out",
        &path("genesis.toml"),
    ]));
    let config = format!(
        "[endpoint]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [endpoint.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
         [ledger]\ndata_dir = \"{}\"\ngenesis = \"{}\"\n[jobs]\nsystem_key = \"{}\"\n",
        path("certs/ca.pem"),
        path("certs/sched-0.pem"),
        path("certs/sched-0.key"),
        path("ledger"),
        path("genesis.toml"),
        path("wallets/system.key"),
    );
    std::fs::write(dir.join("scheduler.toml"), config).unwrap();
    dir.join("scheduler.toml")
}

#[test]
fn check_config_opens_every_file_the_config_names_and_reports_each_problem_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = scheduler_files(dir.path());
    let config = config.to_str().unwrap();
    let check = |config: &str| aic(&["scheduler", "--check-config", "--config", config]);
    let good = check(config);
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    assert_eq!(problem_keys(&good, "scheduler"), Vec::<String>::new());

    // Another node's key, a storage certificate, no genesis, a system key genesis does not name,
    // a data dir under a file, and a metrics port in use: one line each, and non-zero.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("sched-0.key", "sched-1.key")
        .replace("genesis.toml", "absent-genesis.toml")
        .replace("wallets/system.key", "wallets/stranger.key")
        .replace("ledger\"", "genesis.toml/ledger\"")
        .replace(
            "metrics_listen = \"127.0.0.1:0\"",
            &format!("metrics_listen = \"{}\"", held.local_addr().unwrap()),
        );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, &text).unwrap();
    let output = check(bad.to_str().unwrap());
    assert!(!output.status.success());
    let mut keys = problem_keys(&output, "scheduler");
    keys.sort();
    assert_eq!(
        keys,
        [
            "endpoint.metrics_listen",
            "endpoint.tls.key",
            "ledger.data_dir",
            "ledger.genesis",
        ],
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // With genesis back, the system key that is not genesis's is found too.
    std::fs::write(&bad, text.replace("absent-genesis.toml", "genesis.toml")).unwrap();
    let output = check(bad.to_str().unwrap());
    assert!(problem_keys(&output, "scheduler").contains(&"jobs.system_key".to_string()));

    // A storage certificate in a scheduler's config.
    std::fs::write(
        &bad,
        std::fs::read_to_string(config)
            .unwrap()
            .replace("sched-0.", "storage-0."),
    )
    .unwrap();
    assert_eq!(
        problem_keys(&check(bad.to_str().unwrap()), "scheduler"),
        ["endpoint.tls.cert"]
    );

    // Started for real with a missing genesis: the same one line, no panic, non-zero.
    std::fs::write(
        &bad,
        std::fs::read_to_string(config)
            .unwrap()
            .replace("genesis.toml", "absent.toml"),
    )
    .unwrap();
    let started = aic(&["scheduler", "--config", bad.to_str().unwrap()]);
    assert!(!started.status.success());
    let stderr = String::from_utf8_lossy(&started.stderr);
    // An error exits 1; a panic would exit 101.
    assert_eq!(started.status.code(), Some(1), "{stderr}");
    assert_eq!(
        problem_keys(&started, "scheduler"),
        ["ledger.genesis"],
        "{stderr}"
    );
}

#[test]
fn every_role_has_a_systemd_unit_and_kubernetes_manifests_that_start_it() {
    for (unit, command) in [
        (
            "aic-scheduler.service",
            "aic scheduler --config /etc/aic/scheduler.toml",
        ),
        (
            "aic-storage-node.service",
            "aic storage-node --config /etc/aic/storage.toml",
        ),
        (
            "aic-compute-node.service",
            "aic compute-node --config /etc/aic/compute.toml",
        ),
        (
            "aic-gateway.service",
            "aic gateway --config /etc/aic/gateway.toml",
        ),
    ] {
        let text = std::fs::read_to_string(repo().join("ops/systemd").join(unit)).unwrap();
        assert!(
            text.contains(&format!("ExecStart=/usr/local/bin/{command}")),
            "{unit}"
        );
        assert!(text.contains("Restart=on-failure"), "{unit}");
        // `systemctl enable` needs an [Install] section.
        assert!(text.contains("\n[Install]\nWantedBy=multi-user.target"), "{unit}");
    }
    let k8s = repo().join("ops/kubernetes");
    let read = |f: &str| std::fs::read_to_string(k8s.join(f)).unwrap();
    let scheduler = read("scheduler.yaml");
    assert!(scheduler.contains("kind: StatefulSet") && scheduler.contains("replicas: 3"));
    assert!(scheduler.contains("volumeClaimTemplates"));
    assert!(read("storage-node.yaml").contains("kind: StatefulSet"));
    let compute = read("compute-node.yaml");
    assert!(compute.contains("kind: DaemonSet") && compute.contains("nvidia.com/gpu"));
    let gateway = read("gateway.yaml");
    assert!(gateway.contains("kind: Deployment") && gateway.contains("kind: Service"));
    assert!(
        gateway.contains("path: /v2/health/ready"),
        "ready when a compute node is known"
    );
    for file in [
        "scheduler.yaml",
        "storage-node.yaml",
        "compute-node.yaml",
        "gateway.yaml",
    ] {
        let text = read(file);
        assert!(
            text.contains("secretName: aic-tls-"),
            "{file}: certificates come from Secrets"
        );
        assert!(
            text.contains("AIC_ENDPOINT__METRICS_LISTEN"),
            "{file}: metrics leave loopback only where configured"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A devnet and a real Prometheus

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query; answers the result vector (panics on an API error).
fn query(prometheus: &str, expr: &str) -> Vec<Value> {
    let (status, body) = http_get(prometheus, &format!("/api/v1/query?query={}", url_encode(expr)));
    let answer: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{expr}: {e}: {body}"));
    assert_eq!(status, 200, "{expr}: {body}");
    assert_eq!(answer["status"], "success", "{expr}: {body}");
    match &answer["data"]["result"] {
        Value::Array(vector) => vector.clone(),
        scalar => vec![scalar.clone()],
    }
}

fn value_of(sample: &Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

/// Polls `check` every half second until it answers `Some`, for at most `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Stops a child process when dropped, so a failing assertion leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_real_prometheus_scrapes_a_devnet_that_matches_the_inventory() {
    let promtool = tool("promtool");
    let prometheus_bin = tool("prometheus");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("devnet");
    let mut devnet = Running(
        Command::new(env!("CARGO_BIN_EXE_aic"))
            .args(["devnet", "--json", "--timeout-secs", "60", "--data-dir"])
            .arg(&data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut status_line = String::new();
    BufReader::new(devnet.0.stdout.take().unwrap())
        .read_line(&mut status_line)
        .unwrap();
    let status: Value = serde_json::from_str(&status_line).expect("the devnet's status line");

    // 1. What each process exposes is what the inventory says, role by role.
    let inventory = inventory();
    let mut exposed: BTreeMap<(String, String), (Family, BTreeSet<String>)> = BTreeMap::new();
    let secrets = secrets_of(&data_dir);
    let mut scrapes = Vec::new();
    for (name, url) in status["metrics"].as_object().unwrap() {
        let role = name.split('-').next().unwrap().to_string();
        let addr = url
            .as_str()
            .unwrap()
            .trim_start_matches("http://")
            .trim_end_matches("/metrics");
        assert!(addr.starts_with("127.0.0.1:"), "metrics stay on loopback: {addr}");
        let (code, text) = http_get(addr, "/metrics");
        assert_eq!(code, 200, "{name}");
        // Beside the metrics: alive, and (a scheduler: its ledger replica leads or follows a
        // leader and has applied what it holds) ready.
        assert_eq!(http_get(addr, "/healthz"), (200, "ok\n".to_string()), "{name}");
        assert_eq!(http_get(addr, "/readyz"), (200, "ready\n".to_string()), "{name}");
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{name}'s metrics expose a secret"
            );
        }
        assert!(!text.contains("PRIVATE KEY"), "{name}");
        assert!(
            !text.contains(data_dir.to_str().unwrap()),
            "{name}'s metrics expose a path"
        );
        for (family, (found, values)) in parse_exposition(&text) {
            let entry = exposed
                .entry((role.clone(), family))
                .or_insert_with(|| (found.clone(), BTreeSet::new()));
            entry.0.labels.extend(found.labels);
            entry.1.extend(values);
        }
        scrapes.push((name.clone(), text));
    }
    for ((role, name), (family, values)) in &exposed {
        let listed = inventory
            .get(&(role.clone(), name.clone()))
            .unwrap_or_else(|| panic!("{role} exposes {name}, which ops/metrics.md does not list"));
        assert_eq!(&family.kind, &listed.kind, "{role} {name}: type");
        assert_eq!(&family.labels, &listed.labels, "{role} {name}: labels");
        assert_eq!(&family.help, &listed.help, "{role} {name}: meaning");
        for value in values {
            let id_like = value.len() >= 16 && value.chars().all(|c| c.is_ascii_hexdigit());
            assert!(
                !id_like && value.len() <= 40,
                "{role} {name}: label value {value:?} looks unbounded (an id?)"
            );
        }
    }
    for key in inventory.keys() {
        assert!(
            exposed.contains_key(key),
            "ops/metrics.md lists {key:?}, which no process exposes"
        );
    }

    // 2. promtool lints each role's exposition and the devnet's copy of the configuration.
    for (name, text) in &scrapes {
        let mut lint = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        lint.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let output = lint.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && said.trim().is_empty(),
            "{name}: {said}"
        );
    }
    let config = PathBuf::from(status["prometheus"]["dir"].as_str().unwrap()).join("prometheus.yml");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        std::fs::read_to_string(repo().join("ops/prometheus/prometheus.yml")).unwrap(),
        "the devnet runs the ops configuration itself"
    );
    run_ok(Command::new(&promtool).arg("check").arg("config").arg(&config));

    // 3. Prometheus itself, as the devnet says to start it, on a free loopback port.
    let command = status["prometheus"]["command"].as_str().unwrap();
    assert!(command.starts_with("prometheus --config.file="), "{command}");
    let port = free_loopback_port();
    let listen = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let args: Vec<String> = command
        .split_whitespace()
        .skip(1)
        .map(|a| {
            if a.starts_with("--web.listen-address=") {
                format!("--web.listen-address={listen}")
            } else {
                a.to_string()
            }
        })
        .collect();
    let _prometheus = Running(
        Command::new(&prometheus_bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log_tail = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    wait_for("Prometheus to answer", Duration::from_secs(60), || {
        std::net::TcpStream::connect(&listen).ok().map(|_| ())
    });
    let targets = wait_for("every target up", Duration::from_secs(90), || {
        let (_, body) = http_get(&listen, "/api/v1/targets");
        let answer: Value = serde_json::from_str(&body).ok()?;
        let active = answer["data"]["activeTargets"].as_array()?.clone();
        (active.len() == 9 && active.iter().all(|t| t["health"] == "up")).then_some(active)
    });
    let jobs: BTreeMap<String, usize> = targets.iter().fold(BTreeMap::new(), |mut jobs, t| {
        *jobs
            .entry(t["labels"]["job"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
        jobs
    });
    assert_eq!(
        jobs,
        BTreeMap::from([
            ("compute".to_string(), 3),
            ("gateway".to_string(), 1),
            ("scheduler".to_string(), 3),
            ("storage".to_string(), 2)
        ]),
        "{}",
        log_tail()
    );

    // The key series, as an operator's first queries would ask for them.
    let one = |expr: &str| -> f64 {
        let result = query(&listen, expr);
        assert_eq!(result.len(), 1, "{expr}: {result:?}");
        value_of(&result[0])
    };
    assert_eq!(one("sum(aic_ledger_is_leader)"), 1.0, "exactly one Raft leader");
    assert!(one("max(aic_ledger_block_height)") >= 1.0);
    assert_eq!(
        one(r#"max(aic_scheduler_nodes{role="compute", state="up"})"#),
        3.0
    );
    assert_eq!(
        one(r#"max(aic_scheduler_nodes{role="storage", state="up"})"#),
        2.0
    );
    assert!(one(r#"sum(aic_scheduler_jobs_finished_total{state="done"})"#) >= 1.0);
    assert!(one(r#"sum(aic_compute_tasks_total{result="ok"})"#) >= 1.0);
    assert!(one(r#"sum(aic_storage_shards{state="healthy"})"#) >= 1.0);
    assert!(one("max(aic_ledger_supply_aic)") > 7.9e9);
    assert!(one(r#"sum(aic_scheduler_payments_aic_total{role="compute"})"#) > 0.0);
    assert_eq!(one("max(aic_scheduler_missing_shard_copies)"), 0.0);
    assert_eq!(query(&listen, "aic_compute_device_mflops").len(), 3);

    // Rules load and evaluate cleanly; the recording rules produce their series; a healthy
    // devnet fires no alert.
    wait_for("every rule evaluated", Duration::from_secs(60), || {
        let (_, body) = http_get(&listen, "/api/v1/rules");
        let answer: Value = serde_json::from_str(&body).ok()?;
        let rules: Vec<Value> = answer["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        assert_eq!(rules.len(), 24, "{body}");
        for rule in &rules {
            assert_ne!(rule["health"], "err", "{rule}");
        }
        rules.iter().all(|r| r["health"] == "ok").then_some(())
    });
    wait_for("the leader count recorded", Duration::from_secs(30), || {
        let result = query(&listen, "aic:ledger_leaders:count");
        (result.len() == 1 && value_of(&result[0]) == 1.0).then_some(())
    });
    // (Before its first scrape Prometheus sees no leader, so that alert may be pending at
    // first; it must clear, and nothing may ever fire.)
    wait_for("no alert pending or firing", Duration::from_secs(30), || {
        let (_, body) = http_get(&listen, "/api/v1/alerts");
        let answer: Value = serde_json::from_str(&body).ok()?;
        let alerts = answer["data"]["alerts"].as_array()?.clone();
        assert!(
            alerts.iter().all(|a| a["state"] != "firing"),
            "a healthy devnet fires an alert: {alerts:?}"
        );
        alerts.is_empty().then_some(())
    });

    // Every dashboard query runs against the live series.
    for (_, board) in dashboards() {
        for expr in dashboard_expressions(&board) {
            query(&listen, &expr);
        }
    }
}

/// The private material a devnet holds: certificate keys (their PEM bodies) and wallet secrets.
fn secrets_of(data_dir: &Path) -> Vec<String> {
    let mut secrets = Vec::new();
    for sub in ["certs", "wallets"] {
        for entry in std::fs::read_dir(data_dir.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "key") {
                let text = std::fs::read_to_string(&path).unwrap();
                secrets.extend(
                    text.lines()
                        .filter(|l| !l.starts_with("-----") && l.trim().len() >= 32)
                        .map(|l| l.trim().to_string()),
                );
            }
        }
    }
    assert!(
        secrets.len() >= 10,
        "certificate and wallet keys found: {}",
        secrets.len()
    );
    secrets
}

#[test]
fn a_renewed_certificate_keeps_its_node_id_and_a_missing_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs = certs.to_str().unwrap();
    let aic = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_aic"))
            .args(args)
            .output()
            .unwrap()
    };
    let node_id = |output: &std::process::Output| -> String {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.lines()
            .find_map(|l| l.trim().strip_prefix("node id "))
            .unwrap_or_else(|| panic!("no node id in {text}"))
            .trim()
            .to_string()
    };
    assert!(aic(&["ca", "init", "--dir", certs]).status.success());
    let issue = [
        "ca",
        "issue",
        "--dir",
        certs,
        "--role",
        "scheduler",
        "--name",
        "sched-0",
    ];
    let first = node_id(&aic(&issue));
    let old_cert = std::fs::read_to_string(Path::new(certs).join("sched-0.pem")).unwrap();
    let renewed = node_id(&aic(&[&issue[..], &["--renew", "--days", "30"]].concat()));
    assert_eq!(renewed, first, "renewal keeps the key, so the node id");
    let new_cert = std::fs::read_to_string(Path::new(certs).join("sched-0.pem")).unwrap();
    assert_ne!(new_cert, old_cert);
    let reissued = node_id(&aic(&issue));
    assert_ne!(reissued, first, "a plain issue makes a new key");
    let missing = aic(&[
        "ca", "issue", "--dir", certs, "--role", "storage", "--name", "nobody", "--renew",
    ]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("nobody.key"), "{stderr}");
}

#[test]
fn a_node_key_signed_from_a_request_never_leaves_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_dir, node_dir) = (dir.path().join("ca"), dir.path().join("node"));
    let (ca, node) = (ca_dir.to_str().unwrap(), node_dir.to_str().unwrap());
    run_ok(Command::new(env!("CARGO_BIN_EXE_aic")).args(["ca", "init", "--dir", ca]));
    run_ok(Command::new(env!("CARGO_BIN_EXE_aic")).args([
        "ca",
        "request",
        "--dir",
        node,
        "--name",
        "storage-9",
    ]));
    let key = node_dir.join("storage-9.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let csr = node_dir.join("storage-9.csr");
    run_ok(Command::new(env!("CARGO_BIN_EXE_aic")).args([
        "ca",
        "issue",
        "--dir",
        ca,
        "--role",
        "storage",
        "--name",
        "storage-9",
        "--csr",
        csr.to_str().unwrap(),
    ]));
    assert!(
        !ca_dir.join("storage-9.key").exists(),
        "no key was made on the CA host"
    );
    std::fs::copy(ca_dir.join("storage-9.pem"), node_dir.join("storage-9.pem")).unwrap();
    std::fs::copy(ca_dir.join("ca.pem"), node_dir.join("ca.pem")).unwrap();
    // The node's own key and the signed certificate make a storage node's identity.
    let config = dir.path().join("storage.toml");
    std::fs::write(
        &config,
        format!(
            "[endpoint]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             [endpoint.tls]\nca = \"{node}/ca.pem\"\ncert = \"{node}/storage-9.pem\"\nkey = \"{node}/storage-9.key\"\n\
             [storage]\ndata_dir = \"{node}/data\"\n"
        ),
    )
    .unwrap();
    let checked = aic(&[
        "storage-node",
        "--check-config",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );

    // A rotation: a new request for the same key, signed, still matches the node's key.
    let key_before = std::fs::read(&key).unwrap();
    run_ok(Command::new(env!("CARGO_BIN_EXE_aic")).args([
        "ca",
        "request",
        "--dir",
        node,
        "--name",
        "storage-9",
        "--renew",
    ]));
    assert_eq!(std::fs::read(&key).unwrap(), key_before);
    run_ok(Command::new(env!("CARGO_BIN_EXE_aic")).args([
        "ca",
        "issue",
        "--dir",
        ca,
        "--role",
        "storage",
        "--name",
        "storage-9",
        "--days",
        "30",
        "--csr",
        csr.to_str().unwrap(),
    ]));
    std::fs::copy(ca_dir.join("storage-9.pem"), node_dir.join("storage-9.pem")).unwrap();
    let rechecked = aic(&[
        "storage-node",
        "--check-config",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(
        rechecked.status.success(),
        "{}",
        String::from_utf8_lossy(&rechecked.stderr)
    );

    // A request altered on its way (one character of its signature) is refused, and nothing is
    // written.
    let pem = std::fs::read_to_string(&csr).unwrap();
    let mut lines: Vec<String> = pem.lines().map(str::to_string).collect();
    let signature_line = lines.len() - 2;
    let mut chars: Vec<char> = lines[signature_line].chars().collect();
    chars[2] = if chars[2] == 'A' { 'B' } else { 'A' };
    lines[signature_line] = chars.into_iter().collect();
    let forged = dir.path().join("forged.csr");
    std::fs::write(&forged, lines.join("\n") + "\n").unwrap();
    let refused = aic(&[
        "ca",
        "issue",
        "--dir",
        ca,
        "--role",
        "storage",
        "--name",
        "forged",
        "--csr",
        forged.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(!ca_dir.join("forged.pem").exists());
}

#[test]
fn a_profile_written_by_profile_init_works_from_any_directory_and_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let c = certs.to_str().unwrap();
    run_ok(Command::new(env!("CARGO_BIN_EXE_aic")).args(["ca", "init", "--dir", c]));
    for (role, name) in [("client", "ops"), ("storage", "storage-0")] {
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_aic"))
                .args(["ca", "issue", "--dir", c, "--role", role, "--name", name]),
        );
    }
    let out = dir.path().join("client.toml");
    let init = |name: &str, out: &Path| {
        aic(&[
            "profile",
            "init",
            "--out",
            out.to_str().unwrap(),
            "--scheduler",
            "127.0.0.1:7400",
            "--replica",
            "127.0.0.1:7401",
            "--ca",
            &format!("{c}/ca.pem"),
            "--cert",
            &format!("{c}/{name}.pem"),
            "--key",
            &format!("{c}/{name}.key"),
        ])
    };
    let made = init("ops", &out);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert!(
        !init("ops", &out).status.success(),
        "a profile is never overwritten"
    );
    let wrong_role = init("storage-0", &dir.path().join("storage.toml"));
    assert!(!wrong_role.status.success());
    assert!(!dir.path().join("storage.toml").exists());

    // Relative paths count from the profile's directory, whatever the working directory.
    let relative = dir.path().join("relative.toml");
    std::fs::write(
        &relative,
        "scheduler = \"127.0.0.1:7400\"\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/ops.pem\"\nkey = \"certs/ops.key\"\n",
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    for profile in [&out, &relative] {
        let checked = Command::new(env!("CARGO_BIN_EXE_aic"))
            .args(["profile", "check", "--profile"])
            .arg(profile)
            .current_dir(elsewhere.path())
            .output()
            .unwrap();
        assert!(
            checked.status.success(),
            "{}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }
}

/// Every `aic` command the guides show (`ops/README.md`, `README.md`): its subcommands exist and
/// every flag it uses is one that subcommand takes, so a renamed command or flag fails here
/// before an operator meets it.
#[test]
fn every_aic_command_in_the_guides_names_real_subcommands_and_flags() {
    let mut checked = 0;
    for guide in ["ops/README.md", "README.md"] {
        let text = std::fs::read_to_string(repo().join(guide)).unwrap();
        for command in aic_commands(&text) {
            check_command(guide, &command);
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} aic commands found in the guides");
    // The check itself catches a renamed flag and a renamed command.
    for wrong in [
        &["ledger", "backup", "--output", "x"][..],
        &["ledger", "snapshot", "--out", "x"][..],
    ] {
        let words: Vec<String> = wrong.iter().map(|w| w.to_string()).collect();
        assert!(
            std::panic::catch_unwind(|| check_command("test", &words)).is_err(),
            "{wrong:?} passed"
        );
    }
}

/// The `aic …` invocations in the guides' shell blocks, continuation lines joined.
fn aic_commands(markdown: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut in_shell = false;
    let mut joined = String::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_shell = line.trim() == "```sh";
            continue;
        }
        if !in_shell {
            continue;
        }
        if line.trim_start().starts_with('#') {
            continue;
        }
        let line = line.split(" #").next().unwrap_or_default();
        if let Some(head) = line.strip_suffix('\\') {
            joined.push_str(head);
            continue;
        }
        joined.push_str(line);
        let full = std::mem::take(&mut joined).replace("cargo run -p aic-cli -- ", "aic ");
        for segment in full.split(['&', ';', '|', '(', ')', '{', '}', '$']) {
            let words: Vec<String> = segment.split_whitespace().map(str::to_string).collect();
            // A command starts the segment (after a shell keyword); `kubectl -n aic …` is not one.
            let start = usize::from(words.first().is_some_and(|w| w == "do" || w == "then"));
            if words.get(start).is_some_and(|w| w == "aic") {
                commands.push(words[start + 1..].to_vec());
            }
        }
    }
    commands
}

fn check_command(guide: &str, words: &[String]) {
    let help = |path: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_aic"))
            .args(path)
            .arg("--help")
            .output()
            .unwrap();
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let mut path: Vec<&str> = Vec::new();
    for word in words {
        if word.starts_with('-') {
            break;
        }
        let mut longer = path.clone();
        longer.push(word);
        match help(&longer) {
            Some(text) if text.contains(&format!("Usage: aic {}", longer.join(" "))) => path = longer,
            _ => break,
        }
    }
    assert!(
        !path.is_empty(),
        "{guide}: `aic {}` names no subcommand",
        words.join(" ")
    );
    let usage = help(&path).unwrap();
    for flag in words.iter().filter(|w| w.starts_with("--")) {
        let flag = flag.split('=').next().unwrap();
        let known = usage.match_indices(flag).any(|(at, _)| {
            usage[at + flag.len()..]
                .chars()
                .next()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'))
        });
        assert!(known, "{guide}: `aic {}` does not take {flag}", words.join(" "));
    }
}
