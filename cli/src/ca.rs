//! `aic ca init|issue|request`: the cluster CA on disk, the certificates it issues, and the
//! requests a node makes so that its key never leaves it.

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
        #[arg(long, conflicts_with = "csr")]
        renew: bool,
        /// Sign this request (from `aic ca request` on the node) instead of making a key here:
        /// only DIR/NAME.pem is written, and the key stays on the node. Role and names come
        /// from these flags, not from the request.
        #[arg(long)]
        csr: Option<PathBuf>,
    },
    /// On the node: make its key (NAME.key, mode 0600) and a request (NAME.csr) for the CA's
    /// operator to sign with `aic ca issue --csr NAME.csr`; the key never leaves this host.
    Request {
        /// Directory for the key and the request (the CA's ca.pem goes here too, later).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// Request a new certificate for the key already in DIR/NAME.key (a rotation that
        /// keeps the node id); only NAME.csr is written.
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
            csr,
        } => {
            anyhow::ensure!(days > 0, "--days must be at least 1");
            anyhow::ensure!(
                !name.is_empty() && !name.contains(['/', '\\']) && name != "ca",
                "--name must be a plain name (no slashes, not \"ca\")"
            );
            let ca = CertificateAuthority::load(&dir).context("loading the CA (run `aic ca init` first)")?;
            let validity = Validity::Days(days);
            if let Some(csr) = csr {
                let request =
                    std::fs::read_to_string(&csr).with_context(|| format!("reading {}", csr.display()))?;
                let (node_id, cert_pem) = ca
                    .sign_request(&request, role, &name, &extra_names, validity)
                    .with_context(|| format!("signing {}", csr.display()))?;
                // A certificate is public and a renewal replaces it: no refusal to overwrite.
                let cert = dir.join(format!("{name}.pem"));
                std::fs::write(&cert, cert_pem).with_context(|| format!("writing {}", cert.display()))?;
                println!(
                    "signed {role} certificate for {name} from {}\n  node id {node_id}\n  cert    {}\n\
                     send it and {} to the node; its key never came here",
                    csr.display(),
                    cert.display(),
                    dir.join("ca.pem").display()
                );
                return Ok(());
            }
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
        CaCommand::Request { dir, name, renew } => {
            anyhow::ensure!(
                !name.is_empty() && !name.contains(['/', '\\']) && name != "ca",
                "--name must be a plain name (no slashes, not \"ca\")"
            );
            let key = dir.join(format!("{name}.key"));
            let request = dir.join(format!("{name}.csr"));
            let request_pem = if renew {
                let key_pem = std::fs::read_to_string(&key)
                    .with_context(|| format!("reading {} to renew its certificate", key.display()))?;
                let _ = std::fs::remove_file(&request);
                aic_protocol::certs::renewal_request(&key_pem, &name)?
            } else {
                for path in [&key, &request] {
                    if path.exists() {
                        anyhow::bail!(
                            "{} exists; a key is never overwritten (renew with --renew)",
                            path.display()
                        );
                    }
                }
                let (key_pem, request_pem) = aic_protocol::certs::new_request(&name)?;
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                write_secret(&key, &key_pem)?;
                request_pem
            };
            std::fs::write(&request, request_pem)
                .with_context(|| format!("writing {}", request.display()))?;
            println!(
                "key     {} (stays here)\nrequest {} (send it to the CA's operator: aic ca issue --csr)",
                key.display(),
                request.display()
            );
        }
    }
    Ok(())
}

/// Writes a private key readable by its owner only, created so from the start.
fn write_secret(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
