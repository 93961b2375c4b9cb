//! What every AIC service shares at run time: the `[endpoint]` config table, the sockets a binary
//! binds before starting a service, and the handle through which it is stopped.
//!
//! A service's `start(config, bound, shutdown) -> ServiceHandle` takes already-bound sockets so a
//! binary can report a port in use before anything starts, and tests bind port 0.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::certs::IdentityFiles;
use crate::config::Invalid;
use crate::error::Result;
use crate::transport::{self, TransportTuning};

/// The `[endpoint]` table: where a service listens and which identity it presents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointSettings {
    /// Display name; empty means the certificate's name.
    pub name: String,
    /// UDP address of the QUIC endpoint.
    pub listen: SocketAddr,
    /// `host:port` peers use to reach this endpoint; empty means the bound `listen` address.
    pub advertise: String,
    /// TCP address of `/metrics`. Loopback unless set otherwise.
    pub metrics_listen: SocketAddr,
    pub tls: IdentityFiles,
}

impl Default for EndpointSettings {
    fn default() -> Self {
        EndpointSettings::with_ports(7400, 9400)
    }
}

impl EndpointSettings {
    pub fn with_ports(quic_port: u16, metrics_port: u16) -> Self {
        EndpointSettings {
            name: String::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], quic_port)),
            advertise: String::new(),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
            tls: IdentityFiles {
                ca: "certs/ca.pem".into(),
                cert: "certs/node.pem".into(),
                key: "certs/node.key".into(),
            },
        }
    }

    /// Checks the table; `prefix` is the table's key (`endpoint`).
    pub fn validate(&self, prefix: &str) -> Result<(), Invalid> {
        if !self.advertise.is_empty() && !self.advertise.contains(':') {
            return Err(Invalid::new(format!("{prefix}.advertise"), "must be host:port"));
        }
        for (key, path) in [
            ("ca", &self.tls.ca),
            ("cert", &self.tls.cert),
            ("key", &self.tls.key),
        ] {
            if path.as_os_str().is_empty() {
                return Err(Invalid::new(
                    format!("{prefix}.tls.{key}"),
                    "must name a PEM file",
                ));
            }
        }
        Ok(())
    }

    /// Binds both sockets, failing with an error that names the address in use.
    pub fn bind(&self) -> Result<BoundSockets> {
        BoundSockets::bind(self.listen, self.metrics_listen)
    }
}

/// A service's sockets, bound before it starts.
#[derive(Debug)]
pub struct BoundSockets {
    pub quic: std::net::UdpSocket,
    pub metrics: std::net::TcpListener,
}

impl BoundSockets {
    pub fn bind(quic: SocketAddr, metrics: SocketAddr) -> Result<Self> {
        Ok(BoundSockets {
            quic: transport::bind_udp(quic, &TransportTuning::default())?,
            metrics: crate::metrics_http::bind(metrics)?,
        })
    }

    /// Both on an ephemeral loopback port, for tests and the in-process devnet.
    pub fn loopback_ephemeral() -> Result<Self> {
        Self::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
    }

    pub fn quic_addr(&self) -> Result<SocketAddr> {
        Ok(self.quic.local_addr()?)
    }

    pub fn metrics_addr(&self) -> Result<SocketAddr> {
        Ok(self.metrics.local_addr()?)
    }
}

/// A running service: its addresses, and how to stop it and wait until it has.
///
/// Stopping is a protocol: cancelling the token asks every task to finish what it is doing;
/// [`ServiceHandle::stopped`] waits until they all have.
pub struct ServiceHandle {
    pub name: String,
    pub quic_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    failure: Failure,
}

/// A part of a service that stopped for good on its own (a ledger replica whose storage
/// failed): the process must stop and exit non-zero, so its supervisor restarts it, rather
/// than live on looking healthy.
#[derive(Clone, Debug, Default)]
pub struct Failure {
    reason: std::sync::Arc<std::sync::OnceLock<String>>,
    failed: CancellationToken,
}

impl Failure {
    /// Reports why the service cannot go on (the first report stands).
    pub fn report(&self, reason: String) {
        let _ = self.reason.set(reason);
        self.failed.cancel();
    }

    /// Waits for a report and answers its reason.
    pub async fn reported(&self) -> String {
        self.failed.cancelled().await;
        self.reason.get().cloned().unwrap_or_default()
    }
}

impl ServiceHandle {
    pub fn new(
        name: String,
        quic_addr: SocketAddr,
        metrics_addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> Self {
        ServiceHandle {
            name,
            quic_addr,
            metrics_addr,
            shutdown,
            tasks: JoinSet::new(),
            failure: Failure::default(),
        }
    }

    /// Where a part of the service reports that it stopped for good.
    pub fn failure(&self) -> Failure {
        self.failure.clone()
    }

    /// Runs `task` as part of the service; it must return once the shutdown token is cancelled.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr)
    }

    /// Asks the service to stop (it also stops when the token given to `start` is cancelled).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until every task of the service has finished.
    pub async fn stopped(mut self) {
        while let Some(result) = self.tasks.join_next().await {
            if let Err(error) = result {
                warn!(service = %self.name, %error, "a service task failed");
            }
        }
    }

    /// Stops the service and waits for it.
    pub async fn stop(self) {
        self.shutdown();
        self.stopped().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reported_failure_wakes_the_waiter_with_the_first_reason() {
        let failure = Failure::default();
        let waiter = {
            let failure = failure.clone();
            tokio::spawn(async move { failure.reported().await })
        };
        failure.report("the ledger replica stopped: disk full".into());
        failure.report("a later reason".into());
        assert_eq!(waiter.await.unwrap(), "the ledger replica stopped: disk full");
        // A late waiter hears it too.
        assert_eq!(failure.reported().await, "the ledger replica stopped: disk full");
    }
}
