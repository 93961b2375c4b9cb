//! The Prometheus set-up `aic devnet` writes beside its data: the operations configuration
//! (`ops/prometheus`, embedded in the binary so it is the very same file) with the devnet's own
//! scrape targets, and the command that starts Prometheus against it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Map, Value};

/// The files of `ops/prometheus` a running Prometheus needs, by their path under it.
const OPS_FILES: [(&str, &str); 3] = [
    (
        "prometheus.yml",
        include_str!("../../ops/prometheus/prometheus.yml"),
    ),
    (
        "rules/recording.yml",
        include_str!("../../ops/prometheus/rules/recording.yml"),
    ),
    (
        "rules/alerts.yml",
        include_str!("../../ops/prometheus/rules/alerts.yml"),
    ),
];

/// Where Prometheus serves its UI and API for a devnet: loopback only.
pub const LISTEN: &str = "127.0.0.1:9090";

/// Writes `dir/prometheus/` (configuration, rules, and one file of targets per role, from the
/// services' metrics URLs keyed by service name) and answers the command that starts Prometheus.
pub fn write(dir: &Path, metrics_urls: &Map<String, Value>) -> anyhow::Result<String> {
    let root = dir.join("prometheus");
    for (path, text) in OPS_FILES {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("under the root"))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    std::fs::create_dir_all(root.join("targets"))?;
    for role in ["scheduler", "storage", "compute", "gateway"] {
        let groups: Vec<Value> = metrics_urls
            .iter()
            .filter(|(name, _)| name.starts_with(&format!("{role}-")))
            .filter_map(|(name, url)| {
                let target = url.as_str()?.strip_prefix("http://")?.strip_suffix("/metrics")?;
                Some(json!({"targets": [target], "labels": {"node": name}}))
            })
            .collect();
        let path = root.join("targets").join(format!("{role}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&groups)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(command(&root))
}

fn command(root: &Path) -> String {
    let data: PathBuf = root.join("data");
    format!(
        "prometheus --config.file={} --storage.tsdb.path={} --web.listen-address={LISTEN}",
        root.join("prometheus.yml").display(),
        data.display()
    )
}
