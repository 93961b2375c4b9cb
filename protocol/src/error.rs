//! Errors of the protocol crate, and the stable error codes an RPC carries back to its caller.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ids::Role;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stable, numbered reason an RPC failed. The numbers are part of the wire protocol: never
/// renumber, only append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame or its payload could not be decoded.
    MalformedFrame = 1,
    /// The frame's length field exceeded the maximum frame size.
    FrameTooLarge = 2,
    /// The frame carried a protocol version this peer does not speak.
    UnsupportedVersion = 3,
    /// The caller's certificate role may not call this RPC.
    PermissionDenied = 4,
    /// The message kind is not served on this endpoint.
    Unsupported = 5,
    /// The request names a node the receiver does not know (a node re-registers on this).
    UnknownNode = 6,
    /// The request was well-formed but its content is invalid.
    InvalidArgument = 7,
    /// The receiver is shutting down or overloaded; retry elsewhere or later.
    Unavailable = 8,
    /// A fault on the receiver's side.
    Internal = 9,
    /// The named thing (dataset, shard) is not held here.
    NotFound = 10,
    /// The thing to create exists already.
    AlreadyExists = 11,
    /// The caller used up a budget it has on the receiver (upload slots, in-flight request
    /// bytes); retry once some of it is free.
    ResourceExhausted = 12,
    /// The caller did not finish sending its request in time.
    DeadlineExceeded = 13,
}

impl ErrorCode {
    /// A short snake_case name, used as a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::UnknownNode => "unknown_node",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
        }
    }
}

/// The error half of an RPC answer, as it travels on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?} ({}): {message}", *code as u16)]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: u32 },
    #[error("frame speaks protocol version {got}; this build speaks {min}..={max}")]
    UnsupportedVersion { got: u16, min: u16, max: u16 },
    #[error("unknown frame kind {0:#04x}")]
    UnknownFrameKind(u8),
    #[error("stream ended after {got} of {expected} bytes of a frame")]
    TruncatedFrame { got: usize, expected: usize },
    #[error("cannot decode {what}: {cause}")]
    Decode {
        what: &'static str,
        cause: postcard::Error,
    },
    #[error("cannot encode {what}: {cause}")]
    Encode {
        what: &'static str,
        cause: postcard::Error,
    },
    #[error("unexpected frame: {0}")]
    UnexpectedFrame(&'static str),
    /// The peer refused the request (its code and reason).
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("invalid {kind}: {value:?}")]
    InvalidId { kind: &'static str, value: String },
    #[error("certificate error: {0}")]
    Certificate(String),
    #[error("peer certificate names role {got}, expected {expected}")]
    WrongPeerRole { got: Role, expected: Role },
    #[error("transport configuration: {0}")]
    Transport(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot read {path}: {cause}")]
    ReadFile { path: PathBuf, cause: std::io::Error },
    #[error("cannot write {path}: {cause}")]
    WriteFile { path: PathBuf, cause: std::io::Error },
    #[error("cannot bind {what} on {addr}: {cause}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("cannot resolve address {addr:?}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed: {0}")]
    StreamClosed(#[from] quinn::ClosedStream),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Error {
    /// The code to send back when this error ends a request on the server side.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Error::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Error::UnknownFrameKind(_)
            | Error::TruncatedFrame { .. }
            | Error::Decode { .. }
            | Error::UnexpectedFrame(_) => ErrorCode::MalformedFrame,
            Error::Rpc(rpc) => rpc.code,
            Error::InvalidId { .. } => ErrorCode::InvalidArgument,
            _ => ErrorCode::Internal,
        }
    }
}
