//! `aic ca init|issue`: the cluster CA on disk and the certificates it issues.

use std::path::PathBuf;

use aic_protocol::certs::{CertificateAuthority, Validity};
use aic_protocol::Role;
use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create a new cluster CA (ca.pem, ca.key) in DIR.
    Init {
        /// Directory for the CA files; must not already hold a CA.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// A name for the cluster, written into the CA certificate.
        #[arg(long, default_value = "aic")]
        cluster: String,
    },
    /// Issue a certificate whose role and node id peers can read.
    Issue {
        /// Directory holding the CA; the certificate and key are written here too.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long)]
        role: Role,
        /// The holder's name; also the files' stem (NAME.pem, NAME.key) and a DNS name.
        #[arg(long)]
        name: String,
        /// Extra DNS names or IP addresses the holder serves on (repeatable).
        #[arg(long = "san")]
        extra_names: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = aic_protocol::certs::DEFAULT_VALIDITY_DAYS)]
        days: i64,
        /// Renew: sign a new certificate for the key already in DIR/NAME.key, so the holder
        /// keeps its node id (certificate rotation).
        #[arg(long)]
        renew: bool,
    },
}

pub fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { dir, cluster } => {
            let ca = CertificateAuthority::generate(&cluster)?;
            ca.save(&dir)?;
            println!("created cluster CA in {}", dir.display());
        }
        CaCommand::Issue {
            dir,
            role,
            name,
            extra_names,
            days,
            renew,
        } => {
            anyhow::ensure!(days > 0, "--days must be at least 1");
            anyhow::ensure!(
                !name.is_empty() && !name.contains(['/', '\\']) && name != "ca",
                "--name must be a plain name (no slashes, not \"ca\")"
            );
            let ca = CertificateAuthority::load(&dir).context("loading the CA (run `aic ca init` first)")?;
            let validity = Validity::Days(days);
            let issued = if renew {
                let key_path = dir.join(format!("{name}.key"));
                let key_pem = std::fs::read_to_string(&key_path)
                    .with_context(|| format!("reading {} to renew its certificate", key_path.display()))?;
                ca.renew(&key_pem, role, &name, &extra_names, validity)
                    .with_context(|| format!("renewing with {}", key_path.display()))?
            } else {
                ca.issue(role, &name, &extra_names, validity)?
            };
            let files = issued.save(&dir, &name)?;
            println!(
                "{} {role} certificate for {name}\n  node id {}\n  cert    {}\n  key     {}",
                if renew { "renewed" } else { "issued" },
                issued.node_id,
                files.cert.display(),
                files.key.display()
            );
        }
    }
    Ok(())
}
