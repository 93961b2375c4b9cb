//! A key over its rate, as a flooding client meets it over HTTPS: a gateway configured for one
//! request a minute with a burst of two answers the third call 429 with the protocol's error
//! body and a `Retry-After`, before it parses the body or reads the ledger; another key keeps its
//! own allowance. The gateway's scheduler link leads nowhere: nothing here may need the grid.

use std::time::Duration;

use aic_gateway::GatewayConfig;
use aic_protocol::certs::{CertificateAuthority, Validity};
use aic_protocol::Role;
use serde_json::Value;

pub fn check_a_key_over_its_rate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("limits").unwrap();
    ca.save(dir.path()).unwrap();
    let tls = ca
        .issue(Role::Gateway, "gateway-limits", &[], Validity::default())
        .unwrap()
        .save(dir.path(), "gateway-limits")
        .unwrap();
    let settler = dir.path().join("settler.key");
    std::fs::write(&settler, "11".repeat(32)).unwrap();
    let mut config = GatewayConfig::default();
    config.endpoint.https_listen = "127.0.0.1:0".parse().unwrap();
    config.endpoint.metrics_listen = "127.0.0.1:0".parse().unwrap();
    config.endpoint.tls = tls.clone();
    // A scheduler that is not there: a call that got past the limiter would need it.
    config.scheduler.addr = "127.0.0.1:9".into();
    config.settlement.key = settler;
    config.limits.requests_per_minute = 1;
    config.limits.burst = 2;

    aic_protocol::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = runtime
        .block_on(aic_gateway::start(config, shutdown.clone()))
        .unwrap();
    let url = format!("https://{}", handle.quic_addr);
    let ca_pem = std::fs::read(&tls.ca).unwrap();
    let client = reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca_pem).unwrap()])
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // Not JSON: a call the limiter admits is refused 400 at the body, before the ledger.
    let call = |key: &str| {
        let response = client
            .post(format!("{url}/v2/models/digits/infer"))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body: Value = serde_json::from_slice(&response.bytes().unwrap()).unwrap();
        (status, retry_after, body)
    };

    let flooder = format!("aic_{}", "ab".repeat(32));
    for attempt in 0..2 {
        let (status, retry_after, body) = call(&flooder);
        assert_eq!(status, 400, "call {attempt} is within the burst: {body}");
        assert_eq!(retry_after, None);
    }
    let (status, retry_after, body) = call(&flooder);
    assert_eq!(status, 429, "{body}");
    let message = body["error"].as_str().expect("the protocol's error body");
    assert!(message.contains("too many requests"), "{message}");
    let wait: u64 = retry_after.expect("a Retry-After header").parse().unwrap();
    assert!((1..=60).contains(&wait), "one token a minute: {wait} s");

    let other = format!("aic_{}", "cd".repeat(32));
    assert_eq!(call(&other).0, 400, "another key has its own bucket");

    shutdown.cancel();
    runtime.block_on(handle.stopped());
}
