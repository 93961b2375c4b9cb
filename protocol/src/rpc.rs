//! Request/response over QUIC: one request is one bidirectional stream carrying one request
//! frame and its answer: one frame, or — for a [`Reply::Stream`] — a sequence of answer frames,
//! each within the frame size limit, ended by the stream's clean finish.
//!
//! The server side enforces, in this order and before any handler runs: a completed mutual-TLS
//! handshake, an AIC identity in the peer certificate, a well-formed frame within the size limit,
//! read whole within a deadline and within the connection's budget of request bytes in flight,
//! and a certificate role the authorization table ([`crate::authz`]) allows to send that request.
//! Every refusal is counted by reason. A bad frame ends only its own stream with an error answer;
//! the connection keeps serving the others.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::certs::PeerIdentity;
use crate::error::{Error, ErrorCode, Result, RpcError};
use crate::frame::{read_frame, read_header, read_payload, Frame, FrameKind, DEFAULT_MAX_FRAME_LEN};
use crate::messages::{
    ClientRequest, ClientResponse, NodeRequest, NodeResponse, PeerRequest, PeerResponse, ReplicaRequest,
    ReplicaResponse, Request,
};
use crate::metrics::TransportMetrics;
use crate::transport;

/// How long a client waits for an answer by default.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a server grants one connection before a handler runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// A request frame must arrive whole within this time of its stream opening; a stalled
    /// sender is cut off and its bytes freed.
    pub request_deadline: Duration,
    /// Request bytes one connection may have announced and not yet had answered. A header
    /// whose length would exceed it waits (up to the deadline) for room, then is refused.
    pub request_bytes_per_connection: u32,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            request_deadline: Duration::from_secs(30),
            request_bytes_per_connection: 4 * DEFAULT_MAX_FRAME_LEN,
        }
    }
}

fn unsupported<T>(conversation: &str) -> std::result::Result<T, RpcError> {
    Err(RpcError::new(
        ErrorCode::Unsupported,
        format!("this endpoint does not serve {conversation} requests"),
    ))
}

/// A handler's answer: one response, or a stream of them (a shard as a sequence of bounded
/// record-batch frames). An error item ends the stream with an error frame.
pub enum Reply<T> {
    One(T),
    Stream(BoxStream<'static, std::result::Result<T, RpcError>>),
}

impl<T> From<T> for Reply<T> {
    fn from(response: T) -> Self {
        Reply::One(response)
    }
}

/// What a service answers, one method per conversation. A conversation a service does not serve
/// keeps the default, which answers `Unsupported`. Services that stream some answers implement
/// `client_reply`/`peer_reply` instead of `client`/`peer`; the server always calls those.
pub trait RpcHandler: Send + Sync + 'static {
    fn node(
        &self,
        _peer: &PeerIdentity,
        _request: NodeRequest,
    ) -> impl Future<Output = std::result::Result<NodeResponse, RpcError>> + Send {
        async { unsupported("node") }
    }

    fn client(
        &self,
        _peer: &PeerIdentity,
        _request: ClientRequest,
    ) -> impl Future<Output = std::result::Result<ClientResponse, RpcError>> + Send {
        async { unsupported("client") }
    }

    fn peer(
        &self,
        _peer: &PeerIdentity,
        _request: PeerRequest,
    ) -> impl Future<Output = std::result::Result<PeerResponse, RpcError>> + Send {
        async { unsupported("peer") }
    }

    fn client_reply(
        &self,
        peer: &PeerIdentity,
        request: ClientRequest,
    ) -> impl Future<Output = std::result::Result<Reply<ClientResponse>, RpcError>> + Send {
        async move { self.client(peer, request).await.map(Reply::One) }
    }

    fn peer_reply(
        &self,
        peer: &PeerIdentity,
        request: PeerRequest,
    ) -> impl Future<Output = std::result::Result<Reply<PeerResponse>, RpcError>> + Send {
        async move { self.peer(peer, request).await.map(Reply::One) }
    }

    fn replica(
        &self,
        _peer: &PeerIdentity,
        _request: ReplicaRequest,
    ) -> impl Future<Output = std::result::Result<ReplicaResponse, RpcError>> + Send {
        async { unsupported("replica") }
    }
}

/// Serves `handler` on `endpoint` until `shutdown` is cancelled, then closes the endpoint.
pub async fn serve<H: RpcHandler>(
    endpoint: quinn::Endpoint,
    handler: Arc<H>,
    metrics: TransportMetrics,
    shutdown: CancellationToken,
) {
    serve_with_limits(endpoint, handler, metrics, ServeLimits::default(), shutdown).await
}

/// [`serve`] with explicit per-connection limits.
pub async fn serve_with_limits<H: RpcHandler>(
    endpoint: quinn::Endpoint,
    handler: Arc<H>,
    metrics: TransportMetrics,
    limits: ServeLimits,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        let connection = ConnectionContext {
            handler: handler.clone(),
            metrics: metrics.clone(),
            limits,
            shutdown: shutdown.clone(),
        };
        tokio::spawn(connection.run(incoming));
    }
    endpoint.close(VarInt::from_u32(0), b"shutting down");
    // Give peers a moment to learn of the close; never hang shutdown on a silent peer.
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

struct ConnectionContext<H> {
    handler: Arc<H>,
    metrics: TransportMetrics,
    limits: ServeLimits,
    shutdown: CancellationToken,
}

impl<H: RpcHandler> ConnectionContext<H> {
    async fn run(self, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let connection = match incoming.await {
            Ok(connection) => connection,
            Err(error) => {
                let reason = crate::tls::handshake_rejection_reason(&error);
                self.metrics
                    .handshakes_rejected
                    .with_label_values(&[reason])
                    .inc();
                debug!(%remote, reason, %error, "handshake refused");
                return;
            }
        };
        let peer = match transport::peer_identity(&connection) {
            Ok(peer) => Arc::new(peer),
            Err(error) => {
                self.metrics
                    .handshakes_rejected
                    .with_label_values(&["no_identity"])
                    .inc();
                debug!(%remote, %error, "certificate without an AIC identity");
                connection.close(
                    VarInt::from_u32(ErrorCode::PermissionDenied as u32),
                    b"no AIC identity",
                );
                return;
            }
        };
        self.metrics.connections_accepted.inc();
        self.metrics.connections_open.inc();
        debug!(%remote, role = %peer.role, node = %peer.node_id.short(), "connection up");
        let budget = Arc::new(Semaphore::new(self.limits.request_bytes_per_connection as usize));
        loop {
            let stream = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                stream = connection.accept_bi() => stream,
            };
            match stream {
                Ok((send, recv)) => {
                    let handler = self.handler.clone();
                    let metrics = self.metrics.clone();
                    let peer = peer.clone();
                    let request = RequestBudget {
                        bytes: budget.clone(),
                        limits: self.limits,
                    };
                    // A request still running at shutdown is dropped with the server: nothing
                    // of the server (its handler, its endpoint) outlives it in a request task.
                    let shutdown = self.shutdown.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            () = shutdown.cancelled() => {}
                            () = serve_stream(&*handler, &peer, &metrics, request, send, recv) => {}
                        }
                    });
                }
                Err(error) => {
                    debug!(%remote, %error, "connection closed");
                    break;
                }
            }
        }
        self.metrics.connections_open.dec();
    }
}

/// A connection's budget of request bytes in flight, and its limits.
struct RequestBudget {
    bytes: Arc<Semaphore>,
    limits: ServeLimits,
}

/// Why a request frame was not read.
enum ReadRefusal {
    Frame(Error),
    Deadline,
    OverBudget(u32),
}

impl ReadRefusal {
    fn reason(&self) -> &'static str {
        match self {
            ReadRefusal::Frame(error) => frame_rejection_reason(error),
            ReadRefusal::Deadline => "deadline",
            ReadRefusal::OverBudget(_) => "over_budget",
        }
    }

    fn to_rpc_error(&self, limits: &ServeLimits) -> RpcError {
        match self {
            ReadRefusal::Frame(error) => RpcError::new(error.code(), error.to_string()),
            ReadRefusal::Deadline => RpcError::new(
                ErrorCode::DeadlineExceeded,
                format!(
                    "the request did not arrive whole within {} ms",
                    limits.request_deadline.as_millis()
                ),
            ),
            ReadRefusal::OverBudget(len) => RpcError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "a {len}-byte request does not fit this connection's {} bytes of requests in flight",
                    limits.request_bytes_per_connection
                ),
            ),
        }
    }
}

/// Reads one request frame within the deadline, holding its length in the connection's budget
/// from the header on (the permit is released when the request has been answered).
async fn read_request(
    recv: &mut RecvStream,
    budget: &RequestBudget,
) -> std::result::Result<Option<(Frame, OwnedSemaphorePermit)>, ReadRefusal> {
    let read = async {
        let Some(header) = read_header(recv, DEFAULT_MAX_FRAME_LEN)
            .await
            .map_err(ReadRefusal::Frame)?
        else {
            return Ok(None);
        };
        if header.len > budget.limits.request_bytes_per_connection {
            return Err(ReadRefusal::OverBudget(header.len));
        }
        let permit = budget
            .bytes
            .clone()
            .acquire_many_owned(header.len)
            .await
            .map_err(|_| ReadRefusal::OverBudget(header.len))?;
        let frame = read_payload(recv, header).await.map_err(ReadRefusal::Frame)?;
        Ok(Some((frame, permit)))
    };
    match tokio::time::timeout(budget.limits.request_deadline, read).await {
        Ok(result) => result,
        Err(_) => Err(ReadRefusal::Deadline),
    }
}

/// Serves one request stream: read, check, dispatch, answer.
async fn serve_stream<H: RpcHandler>(
    handler: &H,
    peer: &PeerIdentity,
    metrics: &TransportMetrics,
    budget: RequestBudget,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let (frame, _in_flight) = match read_request(&mut recv, &budget).await {
        Ok(Some(read)) => read,
        Ok(None) => return,
        Err(refusal) => {
            metrics
                .frames_rejected
                .with_label_values(&[refusal.reason()])
                .inc();
            let error = refusal.to_rpc_error(&budget.limits);
            // Stop the peer's sending: the rest of a refused frame is never read.
            let _ = recv.stop(VarInt::from_u32(error.code as u32));
            answer(&mut send, Err(error)).await;
            return;
        }
    };
    let started = Instant::now();
    let (rpc, result) = match frame.kind {
        FrameKind::NodeRequest => {
            dispatch(&frame, peer, metrics, |r| async {
                handler.node(peer, r).await.map(Reply::One)
            })
            .await
        }
        FrameKind::ClientRequest => dispatch(&frame, peer, metrics, |r| handler.client_reply(peer, r)).await,
        FrameKind::PeerRequest => dispatch(&frame, peer, metrics, |r| handler.peer_reply(peer, r)).await,
        FrameKind::ReplicaRequest => {
            dispatch(&frame, peer, metrics, |r| async {
                handler.replica(peer, r).await.map(Reply::One)
            })
            .await
        }
        FrameKind::Response | FrameKind::Error => {
            metrics
                .frames_rejected
                .with_label_values(&["not_a_request"])
                .inc();
            let error = RpcError::new(ErrorCode::MalformedFrame, "expected a request frame");
            ("invalid", Err(error))
        }
    };
    let result_label = match &result {
        Ok(_) => "ok",
        Err(error) => error.code.as_str(),
    };
    metrics.rpcs.with_label_values(&[rpc, result_label]).inc();
    match result {
        Ok(Reply::Stream(frames)) => answer_stream(&mut send, frames).await,
        Ok(Reply::One(frame)) => answer(&mut send, Ok(frame)).await,
        Err(error) => answer(&mut send, Err(error)).await,
    }
    // For a streamed answer this is the time until its last frame was written.
    metrics
        .rpc_duration
        .with_label_values(&[rpc])
        .observe(started.elapsed().as_secs_f64());
}

/// Decodes a typed request, checks the caller's role, and runs the handler.
async fn dispatch<R, Fut>(
    frame: &Frame,
    peer: &PeerIdentity,
    metrics: &TransportMetrics,
    handle: impl FnOnce(R) -> Fut,
) -> (&'static str, std::result::Result<Reply<Frame>, RpcError>)
where
    R: Request,
    Fut: Future<Output = std::result::Result<Reply<R::Response>, RpcError>>,
{
    let request: R = match frame.decode() {
        Ok(request) => request,
        Err(error) => {
            metrics.frames_rejected.with_label_values(&["malformed"]).inc();
            return ("invalid", Err(RpcError::new(error.code(), error.to_string())));
        }
    };
    let rpc = request.rpc_name();
    if !crate::authz::allows(R::KIND, rpc, peer.role) {
        return (
            rpc,
            Err(RpcError::new(
                ErrorCode::PermissionDenied,
                format!("role {} may not call {rpc}", peer.role),
            )),
        );
    }
    let encode = |response: &R::Response| {
        Frame::encode(FrameKind::Response, response)
            .map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))
    };
    // Every request runs in a span naming it and its caller: under the job and task spans a
    // node opens, one job's path through the grid reads as job → round → task → rpc.
    let span = tracing::info_span!("rpc", rpc, peer = %peer.node_id.short(), role = %peer.role);
    let answer = match tracing::Instrument::instrument(handle(request), span).await {
        Ok(Reply::One(response)) => encode(&response).map(Reply::One),
        Ok(Reply::Stream(responses)) => Ok(Reply::Stream(Box::pin(
            responses.map(move |item| item.and_then(|response| encode(&response))),
        ))),
        Err(error) => Err(error),
    };
    (rpc, answer)
}

/// Writes a streamed answer frame by frame; an error item is sent as the last frame.
async fn answer_stream(
    send: &mut SendStream,
    mut frames: BoxStream<'static, std::result::Result<Frame, RpcError>>,
) {
    while let Some(item) = frames.next().await {
        let failed = item.is_err();
        let frame = item.unwrap_or_else(|error| {
            Frame::encode(FrameKind::Error, &error).expect("an RpcError always encodes")
        });
        if let Err(error) = send_frame(send, frame).await {
            debug!(%error, "could not stream the answer: peer went away");
            return;
        }
        if failed {
            break;
        }
    }
    let _ = send.finish();
}

async fn answer(send: &mut SendStream, result: std::result::Result<Frame, RpcError>) {
    let frame = result
        .unwrap_or_else(|error| Frame::encode(FrameKind::Error, &error).expect("an RpcError always encodes"));
    if let Err(error) = send_frame(send, frame).await {
        debug!(%error, "could not answer: peer went away");
        return;
    }
    let _ = send.finish();
}

/// Writes one answer frame without copying it: quinn takes the header and the payload as they
/// are (a shard's batch is hundreds of KB).
async fn send_frame(send: &mut SendStream, frame: Frame) -> Result<()> {
    let header = frame.header()?.to_bytes();
    let mut chunks = [Bytes::copy_from_slice(&header), Bytes::from(frame.payload)];
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(|e| Error::Transport(e.to_string()))
}

/// Every reason a request frame is refused, so each series exists from the start.
pub const FRAME_REJECTION_REASONS: &[&str] = &[
    "too_large",
    "unsupported_version",
    "unknown_kind",
    "truncated",
    "malformed",
    "not_a_request",
    "deadline",
    "over_budget",
    "io",
];

fn frame_rejection_reason(error: &Error) -> &'static str {
    match error {
        Error::FrameTooLarge { .. } => "too_large",
        Error::UnsupportedVersion { .. } => "unsupported_version",
        Error::UnknownFrameKind(_) => "unknown_kind",
        Error::TruncatedFrame { .. } => "truncated",
        Error::Decode { .. } => "malformed",
        _ => "io",
    }
}

/// A connection to a server, on which typed requests are made.
#[derive(Clone)]
pub struct RpcClient {
    connection: quinn::Connection,
    peer: PeerIdentity,
    timeout: Duration,
}

impl RpcClient {
    /// Dials `addr` and checks the server holds a certificate of role `expected`.
    pub async fn connect(endpoint: &quinn::Endpoint, addr: &str, expected: crate::Role) -> Result<Self> {
        let (connection, peer) = transport::connect(endpoint, addr, Some(expected)).await?;
        Ok(RpcClient {
            connection,
            peer,
            timeout: DEFAULT_CALL_TIMEOUT,
        })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Who the server is, from its verified certificate.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }

    /// The underlying connection, for tests that speak raw frames.
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// Whether the connection has closed (the caller should reconnect).
    pub fn is_closed(&self) -> bool {
        self.connection.close_reason().is_some()
    }

    /// Sends one request and waits for its answer.
    pub async fn call<R: Request>(&self, request: &R) -> Result<R::Response> {
        let frame = Frame::encode(R::KIND, request)?;
        let exchange = async {
            let answer = self.exchange(&frame).await?;
            match answer.kind {
                FrameKind::Response => answer.decode(),
                FrameKind::Error => Err(Error::Rpc(answer.decode::<RpcError>()?)),
                _ => Err(Error::UnexpectedFrame("a request where an answer belongs")),
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Error::Timeout(self.timeout))?
    }

    /// Sends raw frame bytes and reads the one answer frame. Used by [`Self::call`] and by tests
    /// that need to send what a well-behaved client never would.
    pub async fn exchange_raw(&self, bytes: &[u8]) -> Result<Frame> {
        let (mut send, mut recv) = self.connection.open_bi().await?;
        if let Err(error) = send.write_all(bytes).await {
            // The server may stop our stream (oversized frame) and still answer; read it.
            debug!(%error, "write cut short by the server");
        }
        let _ = send.finish();
        read_frame(&mut recv, DEFAULT_MAX_FRAME_LEN)
            .await?
            .ok_or(Error::UnexpectedFrame("the stream ended without an answer"))
    }

    /// Sends one request whose answer is streamed; read it with [`ReplyStream::next`].
    pub async fn call_stream<R: Request>(&self, request: &R) -> Result<ReplyStream<R::Response>> {
        let frame = Frame::encode(R::KIND, request)?;
        let open = async {
            let (mut send, recv) = self.connection.open_bi().await?;
            send.write_all(&frame.to_bytes()?)
                .await
                .map_err(|e| Error::Transport(e.to_string()))?;
            let _ = send.finish();
            Ok::<_, Error>(recv)
        };
        let recv = tokio::time::timeout(self.timeout, open)
            .await
            .map_err(|_| Error::Timeout(self.timeout))??;
        Ok(ReplyStream {
            recv,
            timeout: self.timeout,
            ended: false,
            _response: std::marker::PhantomData,
        })
    }

    async fn exchange(&self, frame: &Frame) -> Result<Frame> {
        self.exchange_raw(&frame.to_bytes()?).await
    }
}

/// The answer frames of a streamed request, read one at a time (each waits at most the
/// client's timeout).
pub struct ReplyStream<T> {
    recv: RecvStream,
    timeout: Duration,
    ended: bool,
    _response: std::marker::PhantomData<fn() -> T>,
}

impl<T: serde::de::DeserializeOwned> ReplyStream<T> {
    /// The next answer; `None` once the server finished the stream. An error frame is returned
    /// as `Err(Error::Rpc)` and ends the stream.
    pub async fn next(&mut self) -> Option<Result<T>> {
        if self.ended {
            return None;
        }
        let frame =
            match tokio::time::timeout(self.timeout, read_frame(&mut self.recv, DEFAULT_MAX_FRAME_LEN)).await
            {
                Err(_) => Err(Error::Timeout(self.timeout)),
                Ok(Ok(None)) => {
                    self.ended = true;
                    return None;
                }
                Ok(Ok(Some(frame))) => Ok(frame),
                Ok(Err(error)) => Err(error),
            };
        let item = frame.and_then(|frame| match frame.kind {
            FrameKind::Response => frame.decode(),
            FrameKind::Error => Err(Error::Rpc(frame.decode::<RpcError>()?)),
            _ => Err(Error::UnexpectedFrame("a request where an answer belongs")),
        });
        if item.is_err() {
            self.ended = true;
        }
        Some(item)
    }
}
