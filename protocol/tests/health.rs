//! The health endpoints beside `/metrics`, as a supervisor or load balancer asks them over
//! HTTP: `/healthz` answers while the process serves; `/readyz` answers 503 with the reason
//! while the process cannot do its work, and 200 once it can.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aic_protocol::metrics_http;
use tokio_util::sync::CancellationToken;

/// The status code and body of an HTTP/1.1 response.
fn status_and_body(response: &str) -> (u16, &str) {
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn readiness_follows_what_the_process_says_and_health_only_that_it_serves() {
    let listener = metrics_http::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = prometheus::Registry::new();
    let counter = prometheus::IntCounter::new("aic_test_total", "a counter").unwrap();
    registry.register(Box::new(counter.clone())).unwrap();
    let ready = Arc::new(AtomicBool::new(false));
    let readiness: metrics_http::Readiness = {
        let ready = ready.clone();
        Arc::new(move || {
            if ready.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("no ledger leader known".into())
            }
        })
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(metrics_http::serve_with_readiness(
        listener,
        registry,
        readiness,
        shutdown.clone(),
    ));
    let get = |path: &'static str| metrics_http::get(addr, path);

    let response = get("/healthz").await.unwrap();
    assert_eq!(status_and_body(&response), (200, "ok\n"));
    let response = get("/readyz").await.unwrap();
    assert_eq!(
        status_and_body(&response),
        (503, "not ready: no ledger leader known\n")
    );
    ready.store(true, Ordering::SeqCst);
    let response = get("/readyz").await.unwrap();
    assert_eq!(status_and_body(&response), (200, "ready\n"));
    // Metrics as before; anything else is not there.
    let response = get("/metrics").await.unwrap();
    assert_eq!(status_and_body(&response).0, 200);
    assert!(response.contains("aic_test_total 0"), "{response}");
    let response = get("/config").await.unwrap();
    assert_eq!(status_and_body(&response).0, 404);
    shutdown.cancel();
}
