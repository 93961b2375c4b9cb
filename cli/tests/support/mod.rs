//! What the CLI's integration tests share: reading a `/metrics` page or the Prometheus API the
//! way a scraper does.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::time::Duration;

/// A tiny HTTP/1.0 GET (the Prometheus API and `/metrics` answer it without chunking).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// The value of the sample `name{labels}` on a `/metrics` page (0 when absent), where `labels`
/// is the exact label text, e.g. `kind="checkpoint_job"`.
pub fn sample(page: &str, name: &str, labels: &str) -> f64 {
    // An unlabelled series is written without braces.
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    page.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}
