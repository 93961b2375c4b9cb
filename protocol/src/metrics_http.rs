//! The `/metrics` HTTP endpoint each process serves for Prometheus, with `/healthz` (the process
//! serves) and `/readyz` (it can do its work: for a scheduler, its ledger replica runs, knows a
//! leader and has applied what it holds) for supervisors and load balancers.
//!
//! It serves only the registry it is given (text exposition format) and those two answers:
//! no configuration, keys or paths ever appear there. It binds to loopback unless configured.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::error::{Error, Result};

/// Binds the metrics listener; a port in use is an error that names the address.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|cause| Error::Bind {
        what: "metrics endpoint",
        addr,
        cause,
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Whether the process can do its work now; the error says why not (one line, for `/readyz`).
pub type Readiness = Arc<dyn Fn() -> std::result::Result<(), String> + Send + Sync>;

/// Serves `registry` at `/metrics` on `listener` until `shutdown` is cancelled; `/readyz`
/// answers ready whenever the process serves.
pub async fn serve(
    listener: std::net::TcpListener,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<()> {
    serve_with_readiness(listener, registry, Arc::new(|| Ok(())), shutdown).await
}

/// Serves `registry` at `/metrics`, and `/readyz` as `ready` says, until `shutdown` is
/// cancelled.
pub async fn serve_with_readiness(
    listener: std::net::TcpListener,
    registry: Registry,
    ready: Readiness,
    shutdown: CancellationToken,
) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "metrics accept failed");
                    continue;
                }
            },
        };
        let (registry, ready) = (registry.clone(), ready.clone());
        let service = hyper::service::service_fn(move |request| {
            let (registry, ready) = (registry.clone(), ready.clone());
            async move { Ok::<_, Infallible>(respond(&registry, &ready, &request)) }
        });
        tokio::spawn(async move {
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%remote, %error, "metrics connection failed");
            }
        });
    }
}

fn respond(registry: &Registry, ready: &Readiness, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    if request.method() != Method::GET {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            b"only GET /metrics, /healthz and /readyz are served\n".to_vec(),
        );
    }
    match request.uri().path() {
        "/metrics" => {}
        "/healthz" => return reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        "/readyz" => {
            return match ready() {
                Ok(()) => reply(StatusCode::OK, "text/plain", b"ready\n".to_vec()),
                Err(why) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {why}\n").into_bytes(),
                ),
            }
        }
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                b"only GET /metrics, /healthz and /readyz are served\n".to_vec(),
            )
        }
    }
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => reply(StatusCode::OK, encoder.format_type(), body),
        Err(error) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("cannot encode metrics: {error}\n").into_bytes(),
        ),
    }
}

/// Fetches `/metrics` from `addr` (an operator's check, and what the cluster tests read).
pub async fn scrape(addr: SocketAddr) -> Result<String> {
    get(addr, "/metrics").await
}

/// Fetches `path` from `addr`'s endpoint: the whole HTTP/1.1 response, status line first.
pub async fn get(addr: SocketAddr, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}
