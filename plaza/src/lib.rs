//! AI PLAZA: the grid's web console. The user runs it (`aic plaza`, or `aic devnet` starts one)
//! with their own client certificate, like the CLI: keys never leave this process and no
//! browser wallet exists. It reads the ledger and the scheduler — no indexer of its own — and
//! renders pages on the server (askama templates, every asset embedded in the binary: no CDN,
//! no build step).
//!
//! ```text
//!  browser ──HTTP, loopback, login token──► plaza (actix-web) ──QUIC + mTLS, the user's cert──► scheduler
//!                          pages: network · datasets · models · market · chain · wallet · asset
//! ```
//!
//! It listens on loopback, or beyond it only when it serves HTTPS with a certificate from the
//! cluster CA; either way a page needs the login token the URL printed at start carries (kept in
//! a same-site, HTTP-only cookie after the first visit, Secure over HTTPS), so another user's
//! browser or a web page the user visits cannot read it.

pub mod actions;
pub mod auth;
pub mod builder;
pub mod forms;
pub mod grid;
pub mod import;
pub mod jobs;
pub mod pages;
pub mod plots;

use std::net::SocketAddr;

use aic_protocol::certs::IdentityFiles;
use tokio_util::sync::CancellationToken;

/// How a console starts.
#[derive(Clone, Debug)]
pub struct PlazaSettings {
    /// Where to listen (port 0: any free port): loopback, unless `remote_https` is set.
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate (issued by the cluster CA for the console's host name),
    /// which is what allows listening beyond loopback: the login token and the cookie then never
    /// cross the network in the clear.
    pub remote_https: Option<IdentityFiles>,
    /// The scheduler replicas the console reads the grid through, the preferred first; it
    /// moves to the next when one stops answering.
    pub schedulers: Vec<String>,
    /// The user's client certificate.
    pub identity: IdentityFiles,
    /// The user's wallet, whose account the Wallet page shows; its key stays in this process.
    pub wallet: Option<aic_ledger::Keypair>,
    /// The inference gateway users call, for the snippet a published model's page shows.
    pub gateway: Option<GatewayLink>,
    /// How long a rendered form may be sent.
    pub form_lifetime: std::time::Duration,
}

/// Where the grid's inference gateway is, as a user's client reaches it.
#[derive(Clone, Debug)]
pub struct GatewayLink {
    /// `https://host:port`.
    pub url: String,
    /// The CA certificate file that verifies it.
    pub ca: String,
}

/// Why a console could not start.
#[derive(Debug, thiserror::Error)]
pub enum PlazaError {
    #[error(
        "the console listens on loopback unless it serves HTTPS (asked for {0}): pass --remote-https-cert and \
         --remote-https-key (a certificate from the cluster CA for this host), or reach it through an SSH tunnel"
    )]
    NotLoopback(SocketAddr),
    #[error("the listener: {0}")]
    Listen(std::io::Error),
    #[error(transparent)]
    Protocol(#[from] aic_protocol::Error),
}

/// A running console.
pub struct Plaza {
    pub addr: SocketAddr,
    /// The address to open: it carries the login token.
    pub url: String,
    pub stopped: tokio::task::JoinHandle<()>,
}

/// Starts a console; it stops when `shutdown` is cancelled.
pub async fn start(settings: PlazaSettings, shutdown: CancellationToken) -> Result<Plaza, PlazaError> {
    let https = match (&settings.remote_https, settings.listen.ip().is_loopback()) {
        (None, false) => return Err(PlazaError::NotLoopback(settings.listen)),
        (None, true) => None,
        (Some(files), _) => Some(aic_protocol::tls::https_server_config(&files.load()?)?),
    };
    let grid = grid::Grid::new(&settings.identity, settings.schedulers.clone())?;
    let listener = std::net::TcpListener::bind(settings.listen).map_err(PlazaError::Listen)?;
    let addr = listener.local_addr().map_err(PlazaError::Listen)?;
    let token = auth::LoginToken::generate(addr.port(), https.is_some());
    let scheme = if https.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{addr}/?token={}", token.text());
    let state = actix_web::web::Data::new(pages::State {
        grid,
        token,
        wallet: settings.wallet,
        forms: forms::Forms::new(settings.form_lifetime),
        gateway: settings.gateway,
    });
    // The first replica is dialled now: the first page finds its connection ready, and a
    // replica lost later is noticed on that connection as a user's page would notice it.
    let warm = state.clone();
    tokio::spawn(async move {
        if let Err(why) = warm.grid.ledger(&aic_ledger::api::LedgerRequest::Status).await {
            tracing::info!(%why, "the console could not reach the grid yet");
        }
    });
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(state.clone())
            .wrap(actix_web::middleware::from_fn(auth::require_token))
            .configure(pages::routes)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2);
    let server = match https {
        Some(tls) => server.listen_rustls_0_23(listener, tls),
        None => server.listen(listener),
    }
    .map_err(PlazaError::Listen)?
    .run();
    let handle = server.handle();
    let stopped = tokio::spawn(async move {
        tokio::select! {
            result = server => {
                if let Err(error) = result {
                    tracing::warn!(%error, "the console's server stopped");
                }
            }
            _ = shutdown.cancelled() => handle.stop(true).await,
        }
    });
    tracing::info!(%addr, "AI PLAZA console serving");
    Ok(Plaza { addr, url, stopped })
}
