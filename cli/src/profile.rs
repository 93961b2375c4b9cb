//! `aic profile init|check`: the client profile every command reads (`--profile FILE` or
//! `AIC_PROFILE`), written from flags and checked the way `--check-config` checks a service.
//!
//! The format (TOML):
//!
//! ```toml
//! scheduler = "sched-0.example.net:7400"     # the replica asked first
//! replicas = ["sched-1.example.net:7400"]     # asked when it does not answer
//! leader_wait_ms = 15000                      # how long a write waits for a ledger leader
//! [tls]                                       # relative paths: from the profile's directory
//! ca = "certs/ca.pem"
//! cert = "certs/ops.pem"                      # a client certificate, or operator for `aic ledger`
//! key = "certs/ops.key"
//! ```

use std::path::{Path, PathBuf};

use aic_protocol::certs::IdentityFiles;
use aic_protocol::config::{Invalid, Validate};
use aic_protocol::preflight;
use aic_protocol::Role;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::nodes::ClientProfile;

#[derive(Args, Clone, Debug)]
pub struct ProfileArgs {
    #[command(subcommand)]
    pub command: ProfileCommand,
}

#[derive(Subcommand, Clone, Debug)]
pub enum ProfileCommand {
    /// Write a profile (never over an existing file) after checking the files it names.
    Init {
        /// Where to write it.
        #[arg(long, default_value = "client.toml")]
        out: PathBuf,
        /// The scheduler replica asked first (host:port).
        #[arg(long)]
        scheduler: String,
        /// The other replicas (host:port; repeatable).
        #[arg(long = "replica")]
        replicas: Vec<String>,
        /// The cluster CA certificate.
        #[arg(long)]
        ca: PathBuf,
        /// This user's certificate (role client, or operator for membership changes).
        #[arg(long)]
        cert: PathBuf,
        /// Its private key.
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value_t = ClientProfile::default().leader_wait_ms)]
        leader_wait_ms: u64,
    },
    /// Check a profile: it reads, its certificate and key match, are valid now, carry a client
    /// or operator role and chain to its CA. One line per problem, non-zero when any.
    Check {
        #[arg(long, env = "AIC_PROFILE")]
        profile: PathBuf,
    },
}

pub fn run(args: ProfileArgs) -> anyhow::Result<()> {
    match args.command {
        ProfileCommand::Init {
            out,
            scheduler,
            replicas,
            ca,
            cert,
            key,
            leader_wait_ms,
        } => {
            if out.exists() {
                bail!("{} exists; a profile is never overwritten", out.display());
            }
            let absolute =
                |path: PathBuf| std::path::absolute(&path).with_context(|| path.display().to_string());
            let profile = ClientProfile {
                scheduler,
                replicas,
                leader_wait_ms,
                tls: IdentityFiles {
                    ca: absolute(ca)?,
                    cert: absolute(cert)?,
                    key: absolute(key)?,
                },
            };
            if let Err(invalid) = profile.validate() {
                bail!("{}: {}", invalid.key, invalid.reason);
            }
            report(&problems(&profile))?;
            let text = toml::to_string_pretty(&profile)?;
            std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {}", out.display());
            Ok(())
        }
        ProfileCommand::Check { profile } => {
            let loaded = crate::nodes::ClientArgs {
                profile: Some(profile.clone()),
                ..Default::default()
            }
            .load()?;
            report(&problems(&loaded))?;
            println!("{}: ok", profile.display());
            Ok(())
        }
    }
}

/// What is wrong with the files a profile names: a client or an operator certificate will do.
fn problems(profile: &ClientProfile) -> Vec<Invalid> {
    preflight::identity_of_any("tls", &profile.tls, &[Role::Client, Role::Operator])
}

fn report(problems: &[Invalid]) -> anyhow::Result<()> {
    for problem in problems {
        eprintln!("aic profile: {}: {}", problem.key, problem.reason);
    }
    if !problems.is_empty() {
        bail!("the profile names files that will not do (above)");
    }
    Ok(())
}

/// The profile's TLS paths, relative ones taken from the profile's own directory rather than
/// the working directory, so a profile works from wherever a command runs.
pub fn resolve_relative_to(profile: &mut ClientProfile, file: &Path) {
    let Some(base) = file.parent() else { return };
    for path in [&mut profile.tls.ca, &mut profile.tls.cert, &mut profile.tls.key] {
        if path.is_relative() {
            *path = base.join(&*path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_read_from_the_profiles_directory() {
        let mut profile = ClientProfile::default();
        profile.tls.ca = "/etc/aic/ca.pem".into();
        resolve_relative_to(&mut profile, Path::new("/home/ops/aic/client.toml"));
        assert_eq!(profile.tls.ca, Path::new("/etc/aic/ca.pem"));
        assert_eq!(profile.tls.cert, Path::new("/home/ops/aic/certs/client.pem"));
        assert_eq!(profile.tls.key, Path::new("/home/ops/aic/certs/client.key"));
    }
}
