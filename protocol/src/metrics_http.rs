//! The `/metrics` HTTP endpoint each process serves for Prometheus.
//!
//! It serves only the registry it is given (text exposition format) and nothing else: no
//! configuration, keys or paths ever appear there. It binds to loopback unless configured.

use std::convert::Infallible;
use std::net::SocketAddr;

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

/// Serves `registry` at `/metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: std::net::TcpListener,
    registry: Registry,
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
        let registry = registry.clone();
        let service = hyper::service::service_fn(move |request| {
            let registry = registry.clone();
            async move { Ok::<_, Infallible>(respond(&registry, &request)) }
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

fn respond(registry: &Registry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    if request.method() != Method::GET || request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            b"only GET /metrics is served\n".to_vec(),
        );
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}
