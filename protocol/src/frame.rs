//! The length-prefixed frame codec every AIC conversation uses.
//!
//! ```text
//! +----------------+-----------------+-----------+--------------------------+
//! | length: u32 BE | version: u16 BE | kind: u8  | payload (length bytes)   |
//! +----------------+-----------------+-----------+--------------------------+
//! ```
//!
//! The length counts the payload only. It is checked against the reader's limit before a byte
//! of payload is read or allocated, so a length field of 2^32−1 costs the receiver seven bytes.
//! Payloads are postcard-encoded message enums (see [`crate::messages`]).

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

/// The protocol version this build writes. Version 2: imports are attested and minted by the
/// storage nodes (`CommitImport` names the owner), uploads can be aborted, and nodes ask the
/// scheduler to mint attested imports. Version 6: the gateway role, inference on compute nodes
/// and published models' weights.
pub const PROTOCOL_VERSION: u16 = 6;
/// The oldest protocol version this build still reads.
pub const MIN_PROTOCOL_VERSION: u16 = 6;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 7;
/// The default hard limit on a frame's payload. Control messages are far smaller; bulk data
/// travels as a sequence of bounded chunks, never as one frame.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 4 * 1024 * 1024;

/// What a frame carries, which also names the conversation a request belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A storage or compute node talking to the scheduler.
    NodeRequest = 0x01,
    /// A user tool talking to the scheduler.
    ClientRequest = 0x02,
    /// A node talking to another node.
    PeerRequest = 0x03,
    /// A scheduler replica talking to another (Raft traffic, forwarded writes).
    ReplicaRequest = 0x04,
    /// A successful answer to the request on the same stream.
    Response = 0x80,
    /// An [`crate::RpcError`] answering the request on the same stream.
    Error = 0x81,
}

impl FrameKind {
    pub fn from_byte(byte: u8) -> Result<Self> {
        Ok(match byte {
            0x01 => FrameKind::NodeRequest,
            0x02 => FrameKind::ClientRequest,
            0x03 => FrameKind::PeerRequest,
            0x04 => FrameKind::ReplicaRequest,
            0x80 => FrameKind::Response,
            0x81 => FrameKind::Error,
            other => return Err(Error::UnknownFrameKind(other)),
        })
    }
}

/// A decoded frame header, already checked against the limit and the supported versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub version: u16,
    pub kind: FrameKind,
}

impl FrameHeader {
    /// Parses and checks a header. The length is checked first: an oversized frame is refused
    /// whatever else its header says.
    pub fn parse(bytes: &[u8; HEADER_LEN], max_len: u32) -> Result<Self> {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if len > max_len {
            return Err(Error::FrameTooLarge {
                len: u64::from(len),
                max: max_len,
            });
        }
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            return Err(Error::UnsupportedVersion {
                got: version,
                min: MIN_PROTOCOL_VERSION,
                max: PROTOCOL_VERSION,
            });
        }
        let kind = FrameKind::from_byte(bytes[6])?;
        Ok(FrameHeader { len, version, kind })
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&self.len.to_be_bytes());
        out[4..6].copy_from_slice(&self.version.to_be_bytes());
        out[6] = self.kind as u8;
        out
    }
}

/// One whole frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub payload: Vec<u8>,
}

impl Frame {
    /// Encodes a message as the payload of a frame of `kind`.
    pub fn encode<T: Serialize>(kind: FrameKind, message: &T) -> Result<Self> {
        let payload = postcard::to_stdvec(message).map_err(|cause| Error::Encode {
            what: std::any::type_name::<T>(),
            cause,
        })?;
        Ok(Frame { kind, payload })
    }

    /// Decodes the payload as a `T`; trailing bytes are an error, not silently ignored.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        let what = std::any::type_name::<T>();
        let (message, rest) =
            postcard::take_from_bytes(&self.payload).map_err(|cause| Error::Decode { what, cause })?;
        if !rest.is_empty() {
            return Err(Error::Decode {
                what,
                cause: postcard::Error::DeserializeBadEncoding,
            });
        }
        Ok(message)
    }

    /// The header this frame is sent with. Fails if the payload cannot be described by one.
    pub fn header(&self) -> Result<FrameHeader> {
        let len = u32::try_from(self.payload.len()).map_err(|_| Error::FrameTooLarge {
            len: self.payload.len() as u64,
            max: u32::MAX,
        })?;
        Ok(FrameHeader {
            len,
            version: PROTOCOL_VERSION,
            kind: self.kind,
        })
    }

    /// The frame as bytes on the wire, header and payload in one buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let header = self.header()?;
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }
}

/// Decodes one frame from the front of `buf` without I/O. `Ok(None)` means more bytes are needed;
/// otherwise returns the frame and how many bytes it used.
pub fn decode_frame(buf: &[u8], max_len: u32) -> Result<Option<(Frame, usize)>> {
    let Some(header_bytes) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = FrameHeader::parse(header_bytes, max_len)?;
    let total = HEADER_LEN + header.len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let payload = buf[HEADER_LEN..total].to_vec();
    Ok(Some((
        Frame {
            kind: header.kind,
            payload,
        },
        total,
    )))
}

/// Reads one frame. `Ok(None)` when the stream ended cleanly before a header began.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, max_len: u32) -> Result<Option<Frame>> {
    let Some(header) = read_header(reader, max_len).await? else {
        return Ok(None);
    };
    read_payload(reader, header).await.map(Some)
}

/// Reads and checks a frame header. `Ok(None)` when the stream ended cleanly before it began.
pub async fn read_header<R: AsyncRead + Unpin>(reader: &mut R, max_len: u32) -> Result<Option<FrameHeader>> {
    let mut header_bytes = [0u8; HEADER_LEN];
    let got = read_full(reader, &mut header_bytes).await?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_LEN {
        return Err(Error::TruncatedFrame {
            got,
            expected: HEADER_LEN,
        });
    }
    FrameHeader::parse(&header_bytes, max_len).map(Some)
}

/// Reads the payload a checked header announced.
pub async fn read_payload<R: AsyncRead + Unpin>(reader: &mut R, header: FrameHeader) -> Result<Frame> {
    // Only now, with the length known to be within the limit, is the payload allocated; it is
    // read into the allocation as it is (zeroing a shard's batch first cost serving a few %).
    let expected = header.len as usize;
    let mut payload = Vec::with_capacity(expected);
    let got = (&mut *reader)
        .take(u64::from(header.len))
        .read_to_end(&mut payload)
        .await?;
    if got < expected {
        return Err(Error::TruncatedFrame {
            got: HEADER_LEN + got,
            expected: HEADER_LEN + expected,
        });
    }
    Ok(Frame {
        kind: header.kind,
        payload,
    })
}

/// Writes one frame (header and payload) and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &Frame) -> Result<()> {
    writer.write_all(&frame.to_bytes()?).await?;
    writer.flush().await?;
    Ok(())
}

/// Fills `buf` unless the stream ends first; returns how many bytes were read.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{PeerRequest, PeerResponse};

    fn header(len: u32, version: u16, kind: u8) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&len.to_be_bytes());
        out[4..6].copy_from_slice(&version.to_be_bytes());
        out[6] = kind;
        out
    }

    #[test]
    fn a_message_round_trips_through_bytes() {
        let frame = Frame::encode(FrameKind::PeerRequest, &PeerRequest::Ping { nonce: 42 }).unwrap();
        let bytes = frame.to_bytes().unwrap();
        let (decoded, used) = decode_frame(&bytes, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(decoded, frame);
        assert_eq!(
            decoded.decode::<PeerRequest>().unwrap(),
            PeerRequest::Ping { nonce: 42 }
        );
    }

    #[test]
    fn partial_input_asks_for_more_bytes() {
        let bytes = Frame::encode(FrameKind::Response, &PeerResponse::Pong { nonce: 7 })
            .unwrap()
            .to_bytes()
            .unwrap();
        for cut in 0..bytes.len() {
            assert!(decode_frame(&bytes[..cut], DEFAULT_MAX_FRAME_LEN)
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn a_length_over_the_limit_is_refused_from_the_header_alone() {
        let err = decode_frame(&header(u32::MAX, PROTOCOL_VERSION, 1), DEFAULT_MAX_FRAME_LEN).unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { len, .. } if len == u64::from(u32::MAX)));
        let err = decode_frame(&header(1025, PROTOCOL_VERSION, 1), 1024).unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { len: 1025, max: 1024 }));
        // Exactly at the limit is fine.
        assert!(decode_frame(&header(1024, PROTOCOL_VERSION, 1), 1024)
            .unwrap()
            .is_none());
    }

    #[test]
    fn unknown_versions_and_kinds_are_refused() {
        let err = decode_frame(&header(0, PROTOCOL_VERSION + 1, 1), 1024).unwrap_err();
        assert!(matches!(err, Error::UnsupportedVersion { got, .. } if got == PROTOCOL_VERSION + 1));
        let err = decode_frame(&header(0, 0, 1), 1024).unwrap_err();
        assert!(matches!(err, Error::UnsupportedVersion { got: 0, .. }));
        let err = decode_frame(&header(0, PROTOCOL_VERSION, 0x42), 1024).unwrap_err();
        assert!(matches!(err, Error::UnknownFrameKind(0x42)));
    }

    #[test]
    fn a_payload_that_is_not_the_message_is_a_decode_error() {
        let garbage = Frame {
            kind: FrameKind::PeerRequest,
            payload: vec![0xff; 9],
        };
        assert!(matches!(
            garbage.decode::<PeerRequest>(),
            Err(Error::Decode { .. })
        ));
        let mut trailing = Frame::encode(FrameKind::PeerRequest, &PeerRequest::Ping { nonce: 1 }).unwrap();
        trailing.payload.push(0);
        assert!(matches!(
            trailing.decode::<PeerRequest>(),
            Err(Error::Decode { .. })
        ));
        let empty = Frame {
            kind: FrameKind::PeerRequest,
            payload: Vec::new(),
        };
        assert!(matches!(empty.decode::<PeerRequest>(), Err(Error::Decode { .. })));
    }

    #[tokio::test]
    async fn the_async_reader_refuses_a_huge_length_without_reading_further() {
        // The reader holds only the header: if the codec tried to read (or allocate) the 4 GiB
        // payload it would report truncation, not the size error.
        let bytes = header(u32::MAX, PROTOCOL_VERSION, 1);
        let err = read_frame(&mut &bytes[..], DEFAULT_MAX_FRAME_LEN)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { .. }));
    }

    #[tokio::test]
    async fn the_async_reader_reports_truncation_and_clean_end() {
        let empty: &[u8] = &[];
        assert!(read_frame(&mut &empty[..], 1024).await.unwrap().is_none());
        let short_header = [0u8, 0, 0];
        assert!(matches!(
            read_frame(&mut &short_header[..], 1024).await,
            Err(Error::TruncatedFrame {
                got: 3,
                expected: HEADER_LEN
            })
        ));
        let mut short_payload = header(10, PROTOCOL_VERSION, 1).to_vec();
        short_payload.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            read_frame(&mut &short_payload[..], 1024).await,
            Err(Error::TruncatedFrame {
                got: 10,
                expected: 17
            })
        ));
    }

    #[tokio::test]
    async fn frames_written_by_the_writer_are_read_back_in_order() {
        let mut wire = Vec::new();
        for nonce in 0..3 {
            let frame = Frame::encode(FrameKind::PeerRequest, &PeerRequest::Ping { nonce }).unwrap();
            write_frame(&mut wire, &frame).await.unwrap();
        }
        let mut reader = &wire[..];
        for nonce in 0..3 {
            let frame = read_frame(&mut reader, 1024).await.unwrap().unwrap();
            assert_eq!(
                frame.decode::<PeerRequest>().unwrap(),
                PeerRequest::Ping { nonce }
            );
        }
        assert!(read_frame(&mut reader, 1024).await.unwrap().is_none());
    }
}
