//! Transport benchmark: QUIC (quinn, mutual TLS) beside TCP + rustls in the same process.
//!
//! ```text
//! cargo bench -p aic-protocol --bench transport            # full run
//! AIC_BENCH_BULK_MIB=256 cargo bench -p aic-protocol --bench transport
//! ```
//!
//! 1. Small RPCs: a Ping request/answer, one at a time on one connection; round trips per
//!    second and p50/p99 latency. QUIC opens a stream per request (as the RPC layer does); TCP
//!    writes both frames on its one TLS stream.
//! 2. Bulk: one stream carries `AIC_BENCH_BULK_MIB` MiB to a sink that counts it; MiB/s with our
//!    tuned transport, with quinn's defaults, and over TCP + rustls. Best of three runs each.
//!
//! Every figure is printed with its ratio to the TCP baseline measured in this same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aic_protocol::certs::{CertificateAuthority, Identity, PeerIdentity, Validity};
use aic_protocol::frame::{read_frame, write_frame, Frame, FrameKind};
use aic_protocol::messages::{PeerRequest, PeerResponse};
use aic_protocol::metrics::TransportMetrics;
use aic_protocol::rpc::{self, RpcClient, RpcHandler};
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::{Role, RpcError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const SMALL_RPC_COUNT: usize = 5_000;
const SMALL_RPC_TIME_LIMIT: Duration = Duration::from_secs(10);
const CHUNK: usize = 256 * 1024;
const RUNS: usize = 3;

struct Pong;

impl RpcHandler for Pong {
    async fn peer(&self, _peer: &PeerIdentity, request: PeerRequest) -> Result<PeerResponse, RpcError> {
        aic_protocol::node_agent::answer_peer(request)
    }
}

struct Identities {
    server: Identity,
    client: Identity,
}

fn identities() -> Identities {
    let ca = CertificateAuthority::generate("bench").unwrap();
    let issue = |role, name| {
        Identity::from_issued(&ca, &ca.issue(role, name, &[], Validity::default()).unwrap()).unwrap()
    };
    Identities {
        server: issue(Role::Storage, "server"),
        client: issue(Role::Compute, "client"),
    }
}

fn quic_endpoint(identity: &Identity, tuning: &TransportTuning) -> quinn::Endpoint {
    let socket = transport::bind_udp("127.0.0.1:0".parse().unwrap(), tuning).unwrap();
    transport::endpoint(socket, identity, tuning).unwrap()
}

struct Latencies {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    count: usize,
}

fn summarise(mut samples: Vec<Duration>, total: Duration) -> Latencies {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Latencies {
        per_second: samples.len() as f64 / total.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        count: samples.len(),
    }
}

async fn small_rpc_quic(ids: &Identities) -> Latencies {
    let tuning = TransportTuning::default();
    let server = quic_endpoint(&ids.server, &tuning);
    let addr = server.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let metrics = TransportMetrics::register(&prometheus::Registry::new(), "bench").unwrap();
    tokio::spawn(rpc::serve(server, Arc::new(Pong), metrics, shutdown.clone()));
    let client_endpoint = quic_endpoint(&ids.client, &tuning);
    let client = RpcClient::connect(&client_endpoint, &addr, Role::Storage)
        .await
        .unwrap();
    for nonce in 0..100 {
        client.call(&PeerRequest::Ping { nonce }).await.unwrap();
    }
    let mut samples = Vec::with_capacity(SMALL_RPC_COUNT);
    let started = Instant::now();
    for nonce in 0..SMALL_RPC_COUNT as u64 {
        let t = Instant::now();
        client.call(&PeerRequest::Ping { nonce }).await.unwrap();
        samples.push(t.elapsed());
        if started.elapsed() > SMALL_RPC_TIME_LIMIT {
            break;
        }
    }
    let total = started.elapsed();
    shutdown.cancel();
    summarise(samples, total)
}

fn tls_pair(ids: &Identities) -> (tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector) {
    let server = aic_protocol::tls::server_config(&ids.server).unwrap();
    let client = aic_protocol::tls::client_config(&ids.client).unwrap();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    )
}

async fn tcp_tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

async fn small_rpc_tcp(ids: &Identities) -> Latencies {
    let (acceptor, connector) = tls_pair(ids);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        while let Ok(Some(frame)) = read_frame(&mut tls, 1 << 20).await {
            let request: PeerRequest = frame.decode().unwrap();
            let answer = Frame::encode(
                FrameKind::Response,
                &aic_protocol::node_agent::answer_peer(request).unwrap(),
            )
            .unwrap();
            write_frame(&mut tls, &answer).await.unwrap();
        }
    });
    let mut tls = tcp_tls_connect(&connector, addr).await;
    let mut call = async |nonce: u64| {
        let request = Frame::encode(FrameKind::PeerRequest, &PeerRequest::Ping { nonce }).unwrap();
        write_frame(&mut tls, &request).await.unwrap();
        let answer = read_frame(&mut tls, 1 << 20).await.unwrap().unwrap();
        let _: PeerResponse = answer.decode().unwrap();
    };
    for nonce in 0..100 {
        call(nonce).await;
    }
    let mut samples = Vec::with_capacity(SMALL_RPC_COUNT);
    let started = Instant::now();
    for nonce in 0..SMALL_RPC_COUNT as u64 {
        let t = Instant::now();
        call(nonce).await;
        samples.push(t.elapsed());
        if started.elapsed() > SMALL_RPC_TIME_LIMIT {
            break;
        }
    }
    summarise(samples, started.elapsed())
}

/// MiB/s of one QUIC stream carrying `bytes` to a counting sink.
async fn bulk_quic(ids: &Identities, tuning: &TransportTuning, bytes: u64) -> f64 {
    let server = quic_endpoint(&ids.server, tuning);
    let addr = server.local_addr().unwrap().to_string();
    let sink = tokio::spawn(async move {
        let connection = server.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = connection.accept_bi().await.unwrap();
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        while let Some(n) = recv.read(&mut buf).await.unwrap() {
            total += n as u64;
        }
        send.write_all(&total.to_be_bytes()).await.unwrap();
        send.finish().unwrap();
        let _ = connection.closed().await;
        server.wait_idle().await;
    });
    let client = quic_endpoint(&ids.client, tuning);
    let (connection, _) = transport::connect(&client, &addr, Some(Role::Storage))
        .await
        .unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let chunk = vec![0x5au8; CHUNK];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        send.write_all(&chunk).await.unwrap();
        sent += CHUNK as u64;
    }
    send.finish().unwrap();
    let mut count = [0u8; 8];
    recv.read_exact(&mut count).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(u64::from_be_bytes(count), sent, "the sink received every byte");
    connection.close(0u32.into(), b"done");
    sink.await.unwrap();
    mib_per_second(sent, elapsed)
}

async fn bulk_tcp(ids: &Identities, bytes: u64) -> f64 {
    let (acceptor, connector) = tls_pair(ids);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = tls.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        tls.write_all(&total.to_be_bytes()).await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let mut tls = tcp_tls_connect(&connector, addr).await;
    let chunk = vec![0x5au8; CHUNK];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        tls.write_all(&chunk).await.unwrap();
        sent += CHUNK as u64;
    }
    // close_notify ends the server's read loop; the count comes back on the same connection.
    tls.get_mut().1.send_close_notify();
    tls.flush().await.unwrap();
    let mut count = [0u8; 8];
    tls.read_exact(&mut count).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(u64::from_be_bytes(count), sent, "the sink received every byte");
    sink.await.unwrap();
    mib_per_second(sent, elapsed)
}

fn mib_per_second(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

async fn best_of<F: std::future::Future<Output = f64>>(mut run: impl FnMut() -> F) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..RUNS {
        best = best.max(run().await);
    }
    best
}

fn main() {
    aic_protocol::install_crypto_provider();
    let bulk_mib: u64 = std::env::var("AIC_BENCH_BULK_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let bytes = bulk_mib * 1024 * 1024;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ids = identities();
        println!(
            "AIC transport benchmark (loopback, one process, {} worker threads)\n",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );

        let quic = small_rpc_quic(&ids).await;
        let tcp = small_rpc_tcp(&ids).await;
        println!("small RPC round trips (Ping, sequential, one connection)");
        println!(
            "  {:<22} {:>10} {:>10} {:>10} {:>8}",
            "", "rt/s", "p50 µs", "p99 µs", "n"
        );
        for (name, l) in [("QUIC + mTLS", &quic), ("TCP + rustls (base)", &tcp)] {
            println!(
                "  {:<22} {:>10.0} {:>10.1} {:>10.1} {:>8}",
                name,
                l.per_second,
                l.p50.as_secs_f64() * 1e6,
                l.p99.as_secs_f64() * 1e6,
                l.count
            );
        }
        println!(
            "  ratio QUIC/TCP: round trips {:.2}×, p50 latency {:.2}×, p99 latency {:.2}×\n",
            quic.per_second / tcp.per_second,
            quic.p50.as_secs_f64() / tcp.p50.as_secs_f64(),
            quic.p99.as_secs_f64() / tcp.p99.as_secs_f64()
        );

        let (tuned_config, default_config) = (TransportTuning::default(), TransportTuning::quinn_defaults());
        let tuned = best_of(|| bulk_quic(&ids, &tuned_config, bytes)).await;
        let defaults = best_of(|| bulk_quic(&ids, &default_config, bytes)).await;
        let tcp_bulk = best_of(|| bulk_tcp(&ids, bytes)).await;
        println!("bulk stream, {bulk_mib} MiB, best of {RUNS}");
        println!(
            "  QUIC tuned            {tuned:>8.0} MiB/s   {:.2}× TCP",
            tuned / tcp_bulk
        );
        println!(
            "  QUIC quinn defaults   {defaults:>8.0} MiB/s   {:.2}× TCP",
            defaults / tcp_bulk
        );
        println!("  TCP + rustls (base)   {tcp_bulk:>8.0} MiB/s");
        println!("  tuning gain: {:.2}× over quinn's defaults", tuned / defaults);
        let ratio = tuned / tcp_bulk;
        println!(
            "  goal: tuned QUIC ≥ 0.60× TCP + rustls: {} ({ratio:.2}×)",
            if ratio >= 0.6 { "met" } else { "NOT met" }
        );
    });
}
