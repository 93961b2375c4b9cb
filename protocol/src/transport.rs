//! QUIC endpoints with deliberate limits, and connecting to a peer by address and expected role.
//!
//! Every AIC process owns one endpoint that both serves (mutual TLS, see [`crate::tls`]) and
//! dials out. The limits below are set on purpose rather than inherited:
//! concurrency caps what one peer can make us hold, receive windows bound the memory a peer can
//! fill, and the idle timeout with keep-alives notices dead peers within seconds.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::certs::{Identity, PeerIdentity};
use crate::error::{Error, Result};
use crate::ids::Role;
use crate::tls;

/// The transport limits of an endpoint.
#[derive(Clone, Debug)]
pub struct TransportTuning {
    /// Requests a peer may have in flight at once (one request = one bidirectional stream).
    pub max_concurrent_bidi_streams: u32,
    /// Unidirectional streams are not used by the protocol; a few are allowed for QUIC itself.
    pub max_concurrent_uni_streams: u32,
    /// Bytes a single stream may have unacknowledged towards us.
    pub stream_receive_window: u32,
    /// Bytes all streams of a connection together may have unacknowledged towards us.
    pub connection_receive_window: u32,
    /// Bytes we keep in flight towards a peer.
    pub send_window: u64,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive pings, well inside the idle timeout.
    pub keep_alive: Duration,
    /// Largest UDP payload we probe for (path MTU discovery still finds the real path's limit).
    pub max_udp_payload: u16,
    /// Kernel socket buffers; bulk transfers stall on the defaults' drops.
    pub socket_buffer_bytes: usize,
    /// Let the kernel split large sends into datagrams (GSO) where it can.
    pub segmentation_offload: bool,
}

impl Default for TransportTuning {
    /// Tuned on a 2-core machine over loopback (see `benches/transport.rs`): larger windows and
    /// socket buffers with a larger MTU ceiling roughly doubled a bulk stream's throughput.
    /// MTU ceilings of 8000 and more stalled transfers there, so the ceiling stays below.
    fn default() -> Self {
        TransportTuning {
            max_concurrent_bidi_streams: 256,
            max_concurrent_uni_streams: 8,
            stream_receive_window: 16 * 1024 * 1024,
            connection_receive_window: 64 * 1024 * 1024,
            send_window: 64 * 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            max_udp_payload: 6000,
            socket_buffer_bytes: 4 * 1024 * 1024,
            segmentation_offload: true,
        }
    }
}

impl TransportTuning {
    /// quinn's own defaults (with our concurrency and timeouts), the baseline the bench compares.
    pub fn quinn_defaults() -> Self {
        TransportTuning {
            stream_receive_window: 1_250_000,
            connection_receive_window: 15_000_000,
            send_window: 10_000_000,
            max_udp_payload: 1452,
            socket_buffer_bytes: 0,
            ..TransportTuning::default()
        }
    }

    fn transport_config(&self) -> TransportConfig {
        let mut config = TransportConfig::default();
        config
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(self.max_concurrent_uni_streams))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .receive_window(VarInt::from_u32(self.connection_receive_window))
            .send_window(self.send_window)
            .max_idle_timeout(Some(
                IdleTimeout::try_from(self.idle_timeout).expect("idle timeout fits a QUIC varint"),
            ))
            .keep_alive_interval(Some(self.keep_alive))
            .enable_segmentation_offload(self.segmentation_offload);
        let mut mtu = MtuDiscoveryConfig::default();
        mtu.upper_bound(self.max_udp_payload);
        config.mtu_discovery_config(Some(mtu));
        config
    }

    /// The endpoint's settings, with the stateless-reset key of `identity` (see
    /// [`StatelessResetKey`]).
    fn endpoint_config(&self, identity: &Identity) -> Result<quinn::EndpointConfig> {
        let mut config = quinn::EndpointConfig::new(Arc::new(StatelessResetKey::of(identity)));
        config
            .max_udp_payload_size(self.max_udp_payload.max(1200))
            .map_err(|e| Error::Transport(format!("endpoint config: {e}")))?;
        // Every short packet for a connection this endpoint does not know is answered with a
        // stateless reset, so the connection IDs need not be recognisable to it.
        config.cid_generator(|| Box::new(RandomConnectionIds));
        Ok(config)
    }
}

/// Binds the UDP socket of an endpoint. Kept apart from [`endpoint`] so a binary can report a
/// port in use before anything starts, and tests and the devnet can bind port 0.
pub fn bind_udp(addr: SocketAddr, tuning: &TransportTuning) -> Result<UdpSocket> {
    let bind_error = |cause| Error::Bind {
        what: "QUIC endpoint",
        addr,
        cause,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(bind_error)?;
    if tuning.socket_buffer_bytes > 0 {
        // The kernel caps these at net.core.{r,w}mem_max; a smaller buffer is not an error.
        let _ = socket.set_recv_buffer_size(tuning.socket_buffer_bytes);
        let _ = socket.set_send_buffer_size(tuning.socket_buffer_bytes);
    }
    socket.bind(&addr.into()).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    Ok(socket.into())
}

/// A client-only endpoint on an ephemeral port (all interfaces) with `identity`'s certificate:
/// what a service uses to dial other services.
pub fn outbound_endpoint(identity: &Identity) -> Result<quinn::Endpoint> {
    let tuning = TransportTuning::default();
    endpoint(
        bind_udp(SocketAddr::from(([0, 0, 0, 0], 0)), &tuning)?,
        identity,
        &tuning,
    )
}

/// Makes an endpoint on a bound socket that serves with mutual TLS and dials out with the same
/// identity. Must be called inside a tokio runtime.
pub fn endpoint(socket: UdpSocket, identity: &Identity, tuning: &TransportTuning) -> Result<quinn::Endpoint> {
    let socket = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)?;
    endpoint_on(socket, identity, tuning)
}

/// An endpoint on a socket of the caller's making: a test's fault-injecting one
/// ([`crate::fault_net::FaultySocket`]).
pub fn endpoint_on(
    socket: Arc<dyn quinn::AsyncUdpSocket>,
    identity: &Identity,
    tuning: &TransportTuning,
) -> Result<quinn::Endpoint> {
    let (server, client) = endpoint_configs(identity, tuning)?;
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        tuning.endpoint_config(identity)?,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// The server and client halves of an endpoint: mutual TLS with `identity`, `tuning`'s transport.
fn endpoint_configs(
    identity: &Identity,
    tuning: &TransportTuning,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let transport = Arc::new(tuning.transport_config());

    let server_crypto = QuicServerConfig::try_from(tls::server_config(identity)?)
        .map_err(|e| Error::Transport(format!("QUIC server crypto: {e}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());

    let client_crypto = QuicClientConfig::try_from(tls::client_config(identity)?)
        .map_err(|e| Error::Transport(format!("QUIC client crypto: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    Ok((server, client))
}

/// Reads the verified peer's identity from an established connection.
pub fn peer_identity(connection: &quinn::Connection) -> Result<PeerIdentity> {
    let chain = connection
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| Error::Certificate("peer presented no certificate".into()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| Error::Certificate("peer presented an empty chain".into()))?;
    PeerIdentity::from_certificate(leaf)
}

/// Dials `addr` (`host:port`) and checks the server's certificate names `expected` as its role.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: &str,
    expected: Option<Role>,
) -> Result<(quinn::Connection, PeerIdentity)> {
    let (socket_addr, server_name) = resolve(addr).await?;
    let connect_error = |reason: String| Error::Connect {
        addr: addr.to_string(),
        reason,
    };
    let connecting = endpoint
        .connect(socket_addr, &server_name)
        .map_err(|e| connect_error(e.to_string()))?;
    // A dead peer never answers the handshake: give up well before the idle timeout would.
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| connect_error(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| connect_error(e.to_string()))?;
    let peer = peer_identity(&connection)?;
    if let Some(expected) = expected {
        if peer.role != expected {
            connection.close(VarInt::from_u32(1), b"wrong role");
            return Err(Error::WrongPeerRole {
                got: peer.role,
                expected,
            });
        }
    }
    Ok((connection, peer))
}

/// How long a QUIC handshake may take before the peer counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves `host:port` to a socket address and the name the server's certificate must carry.
async fn resolve(addr: &str) -> Result<(SocketAddr, String)> {
    if let Ok(socket_addr) = addr.parse::<SocketAddr>() {
        return Ok((socket_addr, socket_addr.ip().to_string()));
    }
    let resolve_error = |reason: String| Error::Resolve {
        addr: addr.to_string(),
        reason,
    };
    let (host, _) = addr
        .rsplit_once(':')
        .ok_or_else(|| resolve_error("expected host:port".into()))?;
    let socket_addr = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| resolve_error(e.to_string()))?
        .next()
        .ok_or_else(|| resolve_error("no address found".into()))?;
    Ok((socket_addr, host.trim_matches(['[', ']']).to_string()))
}

/// The key an endpoint signs its stateless resets with, derived from its identity's private key,
/// so the same node keeps it across restarts. A process that restarts at its address answers
/// its peers' packets for the connections its previous run had with a reset they accept: each
/// peer drops the dead connection at its next packet and connects again, instead of waiting for
/// calls on it to go unanswered (seconds) or for the idle timeout. The key is as secret as the
/// private key it comes from; without it nobody can forge a reset.
pub struct StatelessResetKey([u8; 32]);

impl StatelessResetKey {
    pub fn of(identity: &Identity) -> Self {
        StatelessResetKey(blake3::derive_key(
            "aic 2026 QUIC stateless reset key",
            identity.key.secret_der(),
        ))
    }
}

impl quinn::crypto::HmacKey for StatelessResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        signature_out.copy_from_slice(&mac.as_bytes()[..signature_out.len()]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> std::result::Result<(), quinn::crypto::CryptoError> {
        let signature: [u8; 32] = signature.try_into().map_err(|_| quinn::crypto::CryptoError)?;
        // `blake3::Hash` compares in constant time.
        if blake3::keyed_hash(&self.0, data) == blake3::Hash::from_bytes(signature) {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

/// Random 8-byte connection IDs, as quinn makes them, without a per-process key to recognise
/// them by (a restarted process must treat its previous run's IDs like its own: see
/// [`StatelessResetKey`]).
struct RandomConnectionIds;

impl quinn::ConnectionIdGenerator for RandomConnectionIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let bytes: [u8; 8] = rand::random();
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}
