//! `aic plaza`: the AI PLAZA web console for the grid your profile names, served by this process
//! on loopback with your client certificate; open the address it prints (it carries the login
//! token).

use std::net::SocketAddr;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::nodes::ClientArgs;

#[derive(Args, Clone, Debug)]
pub struct PlazaArgs {
    /// Where the console listens: a loopback address, unless it serves HTTPS (reach a loopback
    /// console from elsewhere through an SSH tunnel).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate (PEM, from the cluster CA, naming this host): what lets
    /// the console listen beyond loopback. The login token is still required.
    #[arg(long, requires = "remote_https_key")]
    pub remote_https_cert: Option<std::path::PathBuf>,
    /// The private key of `--remote-https-cert` (PEM).
    #[arg(long, requires = "remote_https_cert")]
    pub remote_https_key: Option<std::path::PathBuf>,
    /// Your wallet: the Wallet page shows its account (the key stays in this process).
    #[arg(long)]
    pub wallet: Option<std::path::PathBuf>,
    /// Another scheduler replica to read through when the profile's stops answering (repeat
    /// for each).
    #[arg(long)]
    pub replica: Vec<String>,
    /// The inference gateway's address (https://host:port), for the call a published model's
    /// page shows.
    #[arg(long)]
    pub gateway: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: PlazaArgs) -> anyhow::Result<()> {
    let profile = args.client.load()?;
    let wallet = args
        .wallet
        .as_deref()
        .map(crate::ledger_client::load_wallet)
        .transpose()?;
    let shutdown = CancellationToken::new();
    let plaza = aic_plaza::start(
        aic_plaza::PlazaSettings {
            listen: args.listen,
            remote_https: match (&args.remote_https_cert, &args.remote_https_key) {
                (Some(cert), Some(key)) => Some(aic_protocol::certs::IdentityFiles {
                    ca: profile.tls.ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            schedulers: std::iter::once(profile.scheduler.clone())
                .chain(args.replica.iter().cloned())
                .collect(),
            identity: profile.tls.clone(),
            wallet,
            gateway: args.gateway.clone().map(|url| aic_plaza::GatewayLink {
                url,
                ca: profile.tls.ca.display().to_string(),
            }),
            form_lifetime: aic_plaza::forms::DEFAULT_FORM_LIFETIME,
        },
        shutdown.clone(),
    )
    .await?;
    println!("AI PLAZA: {}", plaza.url);
    println!("Ctrl-C stops it.");
    crate::roles::shutdown_signal().await?;
    shutdown.cancel();
    let _ = plaza.stopped.await;
    Ok(())
}
