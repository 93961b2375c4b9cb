//! Layered configuration: defaults → TOML file → `AIC_*` environment → command-line flags, then
//! `validate()`. Every error names where the bad value came from, the key, and what was wrong.
//!
//! Nested keys use `__` in the environment: `AIC_ENDPOINT__LISTEN=0.0.0.0:7400` sets
//! `endpoint.listen`. Environment variables whose first segment is not a key of the config (such
//! as `AIC_LOG`) are left to their owners, not reported as unknown keys.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A configuration's own consistency checks, run after all layers are merged.
pub trait Validate {
    /// Returns the first problem as (key, what is wrong).
    fn validate(&self) -> Result<(), Invalid>;
}

/// What a configuration names outside itself (files, directories, ports), checked before the
/// service starts; see [`crate::preflight`] for the checks.
pub trait Preflight {
    /// Every problem found, one per key and reason; none when the service can start. `ports`:
    /// also check that its listen addresses are free (not when the caller is about to bind them).
    fn preflight(&self, ports: bool) -> Vec<Invalid>;
}

/// One invalid value: the dotted key and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("config file {path}: cannot read it: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{0}")]
    Layers(String),
    #[error("{source_name}: key `{key}`: {reason}")]
    Invalid {
        source_name: String,
        key: String,
        reason: String,
    },
}

/// Merges the layers into a `T` and validates it.
pub fn load<T>(file: Option<&Path>, flags: &impl Serialize) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        // figment treats a missing file as empty; a named file that is missing is an error here.
        std::fs::metadata(path).map_err(|e| ConfigError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        figment = figment.merge(Toml::file_exact(path));
    }
    let known = top_level_keys(&T::default());
    let env = Env::prefixed("AIC_").split("__").filter(move |key| {
        let first = key.as_str().split('.').next().unwrap_or_default();
        known.iter().any(|k| k.eq_ignore_ascii_case(first))
    });
    figment = figment.merge(env).merge(Serialized::defaults(flags));

    let config: T = figment.extract().map_err(describe_errors)?;
    config.validate().map_err(|invalid| {
        let source_name = figment
            .find_metadata(&invalid.key)
            .map(describe_source)
            .unwrap_or_else(|| "config".to_string());
        ConfigError::Invalid {
            source_name,
            key: invalid.key,
            reason: invalid.reason,
        }
    })?;
    Ok(config)
}

/// The default configuration as commented TOML, for `--print-sample-config`.
pub fn sample<T: Serialize + Default>(title: &str) -> String {
    let body = toml::to_string_pretty(&T::default()).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
    format!("# {title}\n# Every key may also be set as AIC_<KEY> (nested keys joined by __) or by a flag.\n\n{body}\n")
}

fn top_level_keys<T: Serialize>(defaults: &T) -> Vec<String> {
    match toml::Value::try_from(defaults) {
        Ok(toml::Value::Table(table)) => table.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn describe_source(metadata: &figment::Metadata) -> String {
    match &metadata.source {
        Some(figment::Source::File(path)) => format!("config file {}", path.display()),
        Some(other) => format!("{} ({other})", metadata.name),
        None => metadata.name.to_string(),
    }
}

fn describe_errors(errors: figment::Error) -> ConfigError {
    let lines: Vec<String> = errors
        .into_iter()
        .map(|error| {
            let source_name = error
                .metadata
                .as_ref()
                .map(describe_source)
                .unwrap_or_else(|| "config".to_string());
            let key = if error.path.is_empty() {
                "(top level)".to_string()
            } else {
                error.path.join(".")
            };
            format!("{source_name}: key `{key}`: {}", error.kind)
        })
        .collect();
    ConfigError::Layers(lines.join("\n"))
}

/// A node's payout address: empty (unpaid), or a ledger address in 64 hex digits.
pub fn check_payout_address(key: &str, address: &str) -> Result<(), Invalid> {
    if address.is_empty() || (address.len() == 64 && address.chars().all(|c| c.is_ascii_hexdigit())) {
        Ok(())
    } else {
        Err(Invalid::new(
            key,
            "must be a 64-digit hex ledger address (or empty)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::io::Write;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        port: u16,
        name: String,
        nested: Nested,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Nested {
        interval_ms: u64,
    }

    impl Default for Sample {
        fn default() -> Self {
            Sample {
                port: 7400,
                name: "default".into(),
                nested: Nested { interval_ms: 1000 },
            }
        }
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), Invalid> {
            if self.nested.interval_ms == 0 {
                return Err(Invalid::new("nested.interval_ms", "must be at least 1"));
            }
            Ok(())
        }
    }

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    }

    fn file_with(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        file
    }

    #[test]
    fn layers_apply_in_order_and_flags_win() {
        let file = file_with("port = 7500\nname = \"from-file\"\n[nested]\ninterval_ms = 5\n");
        let loaded: Sample = load(Some(file.path()), &Flags::default()).unwrap();
        assert_eq!(loaded.port, 7500);
        assert_eq!(loaded.name, "from-file");
        assert_eq!(loaded.nested.interval_ms, 5);
        let flags = Flags {
            name: Some("from-flag".into()),
        };
        let loaded: Sample = load(Some(file.path()), &flags).unwrap();
        assert_eq!(loaded.name, "from-flag");
        assert_eq!(loaded.port, 7500, "a flag left unset keeps the file's value");
    }

    #[test]
    fn a_wrong_type_names_the_file_and_the_key() {
        let file = file_with("port = \"seventy\"\n");
        let err = load::<Sample>(Some(file.path()), &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&file.path().display().to_string()), "{err}");
        assert!(err.contains("`port`"), "{err}");
        assert!(err.contains("string"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_an_error_not_ignored() {
        let file = file_with("prot = 1\n");
        let err = load::<Sample>(Some(file.path()), &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn a_failed_validation_names_the_file_the_value_came_from() {
        let file = file_with("[nested]\ninterval_ms = 0\n");
        let err = load::<Sample>(Some(file.path()), &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&file.path().display().to_string()), "{err}");
        assert!(
            err.contains("nested.interval_ms") && err.contains("at least 1"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = load::<Sample>(Some(Path::new("/nonexistent/aic.toml")), &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/aic.toml"), "{err}");
    }

    #[test]
    fn the_sample_config_parses_back_to_the_defaults() {
        let sample = sample::<Sample>("test");
        let parsed: Sample = toml::from_str(&sample).unwrap();
        assert_eq!(parsed, Sample::default());
    }
}
