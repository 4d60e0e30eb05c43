//! Length-prefixed postcard messages and one-stream-per-frame transfer.
//!
//! Wire format of a message: `u32` little-endian length, then that many bytes of postcard.
//! Wire format of a frame stream: a length-prefixed postcard [`FrameHeader`], then exactly
//! `header.len` raw image bytes, then the end of the stream.

use crate::error::TransportError;
use crate::messages::FrameHeader;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// Size of the length prefix in front of every message.
pub const PREFIX_LEN: usize = 4;
/// Largest frame header accepted (a header is ~40 bytes plus the session id).
pub const MAX_FRAME_HEADER_BYTES: usize = 4096;

/// Stream error code sent (STOP_SENDING) when a frame stream is refused.
pub const STOP_FRAME_REJECTED: quinn::VarInt = quinn::VarInt::from_u32(1);

/// Limits applied while reading one frame stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest image accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Largest header accepted, in bytes.
    pub max_header_bytes: usize,
    /// Time allowed from accepting the stream to its end; `None` = no limit.
    pub read_timeout: Option<Duration>,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_frame_bytes: 8 << 20,
            max_header_bytes: MAX_FRAME_HEADER_BYTES,
            read_timeout: None,
        }
    }
}

/// Encodes `msg` as a length-prefixed postcard message.
pub fn encode_msg<T: Serialize>(msg: &T) -> Result<Vec<u8>, TransportError> {
    let mut out = vec![0u8; PREFIX_LEN];
    out = postcard::to_extend(msg, out).map_err(|e| TransportError::Malformed {
        what: "outgoing message",
        detail: e.to_string(),
    })?;
    let body = out.len() - PREFIX_LEN;
    let len = u32::try_from(body).map_err(|_| TransportError::TooLarge {
        what: "outgoing message",
        len: body as u64,
        max: u32::MAX as u64,
    })?;
    out[..PREFIX_LEN].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

/// Decodes one length-prefixed message from the start of `bytes`.
///
/// Returns the message and the number of bytes consumed. Errors are `Truncated` (not enough
/// bytes yet), `TooLarge` (prefix above `max_len`) or `Malformed`; never panics.
pub fn decode_msg<T: DeserializeOwned>(
    bytes: &[u8],
    max_len: usize,
) -> Result<(T, usize), TransportError> {
    let Some(prefix) = bytes.get(..PREFIX_LEN) else {
        return Err(TransportError::Truncated {
            what: "message length prefix",
            expected: PREFIX_LEN as u64,
            got: bytes.len() as u64,
        });
    };
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    check_len("message", len, max_len)?;
    let body = bytes
        .get(PREFIX_LEN..PREFIX_LEN + len)
        .ok_or(TransportError::Truncated {
            what: "message",
            expected: len as u64,
            got: (bytes.len() - PREFIX_LEN) as u64,
        })?;
    Ok((decode_body("message", body)?, PREFIX_LEN + len))
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), TransportError> {
    if len > max {
        return Err(TransportError::TooLarge {
            what,
            len: len as u64,
            max: max as u64,
        });
    }
    Ok(())
}

fn decode_body<T: DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, TransportError> {
    let (msg, rest) = postcard::take_from_bytes(body).map_err(|e| TransportError::Malformed {
        what,
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(TransportError::Malformed {
            what,
            detail: format!("{} unexpected bytes after the message", rest.len()),
        });
    }
    Ok(msg)
}

/// Writes one length-prefixed message.
pub async fn write_msg<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), TransportError> {
    let bytes = encode_msg(msg)?;
    send.write_all(&bytes).await?;
    Ok(())
}

/// Reads a length prefix; `Ok(None)` when the stream ends cleanly before its first byte.
async fn read_prefix(
    recv: &mut quinn::RecvStream,
    what: &'static str,
) -> Result<Option<usize>, TransportError> {
    let mut buf = [0u8; PREFIX_LEN];
    let mut got = 0;
    while got < PREFIX_LEN {
        match recv.read(&mut buf[got..]).await? {
            Some(n) => got += n,
            None if got == 0 => return Ok(None),
            None => {
                return Err(TransportError::Truncated {
                    what,
                    expected: PREFIX_LEN as u64,
                    got: got as u64,
                })
            }
        }
    }
    Ok(Some(u32::from_le_bytes(buf) as usize))
}

async fn read_exact(
    recv: &mut quinn::RecvStream,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), TransportError> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(got)) => Err(TransportError::Truncated {
            what,
            expected: buf.len() as u64,
            got: got as u64,
        }),
        Err(quinn::ReadExactError::ReadError(e)) => Err(e.into()),
    }
}

/// Reads one length-prefixed message; `Ok(None)` when the peer finished the stream cleanly
/// between messages. A prefix above `max_len` is refused before any allocation.
pub async fn read_msg<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max_len: usize,
) -> Result<Option<T>, TransportError> {
    read_msg_inner(recv, max_len, None).await
}

/// [`read_msg`] for a peer that must not hold a half-sent message: waiting for the next
/// message has no limit, but once its length prefix began to arrive the rest must follow
/// within `body_timeout` (else [`TransportError::Timeout`]; the stream is then unusable).
pub async fn read_msg_within<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max_len: usize,
    body_timeout: Duration,
) -> Result<Option<T>, TransportError> {
    read_msg_inner(recv, max_len, Some(body_timeout)).await
}

async fn read_msg_inner<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max_len: usize,
    body_timeout: Option<Duration>,
) -> Result<Option<T>, TransportError> {
    // The first byte may take as long as the peer likes; the clock starts with it.
    let mut first = [0u8; 1];
    // quinn's read fills at least one byte of a non-empty buffer, or reports the end.
    if recv.read(&mut first).await?.is_none() {
        return Ok(None);
    }
    let rest = async {
        let mut prefix = [first[0], 0, 0, 0];
        read_exact(recv, &mut prefix[1..], "message length prefix")
            .await
            .map_err(|e| match e {
                TransportError::Truncated { what, got, .. } => TransportError::Truncated {
                    what,
                    expected: PREFIX_LEN as u64,
                    got: got + 1,
                },
                other => other,
            })?;
        let len = u32::from_le_bytes(prefix) as usize;
        check_len("message", len, max_len)?;
        let mut body = vec![0u8; len];
        read_exact(recv, &mut body, "message").await?;
        decode_body("message", &body)
    };
    let result = match body_timeout {
        None => rest.await,
        Some(after) => match tokio::time::timeout(after, rest).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout {
                what: "reading the rest of a control message",
                after,
            }),
        },
    };
    if let Err(e) = &result {
        metrics::counter!("referee_transport_message_errors_total", "reason" => e.kind())
            .increment(1);
    }
    result.map(Some)
}

/// Sends one frame on its own unidirectional stream: header, image bytes, finish.
///
/// `header.len` must equal `bytes.len()`.
pub async fn send_frame(
    conn: &quinn::Connection,
    header: &FrameHeader,
    bytes: &[u8],
) -> Result<(), TransportError> {
    check_frame_len(header, bytes)?;
    write_frame(conn.open_uni().await?, header, bytes).await
}

/// Writes one frame on a stream the caller opened (a sender that must open its streams in
/// frame order opens them itself): header, image bytes, finish.
pub async fn write_frame(
    mut send: quinn::SendStream,
    header: &FrameHeader,
    bytes: &[u8],
) -> Result<(), TransportError> {
    check_frame_len(header, bytes)?;
    let head = encode_msg(header)?;
    send.write_all(&head).await?;
    send.write_all(bytes).await?;
    send.finish()?;
    Ok(())
}

fn check_frame_len(header: &FrameHeader, bytes: &[u8]) -> Result<(), TransportError> {
    if header.len as usize != bytes.len() || u32::try_from(bytes.len()).is_err() {
        return Err(TransportError::Malformed {
            what: "outgoing frame",
            detail: format!(
                "header.len is {} but {} image bytes were given",
                header.len,
                bytes.len()
            ),
        });
    }
    Ok(())
}

/// Reads one frame stream (as accepted with `accept_uni`): header, then exactly `header.len`
/// bytes, then the end of the stream. Sizes are checked before allocating; on error the
/// stream is stopped so the sender learns of it.
pub async fn read_frame(
    mut recv: quinn::RecvStream,
    limits: &FrameLimits,
) -> Result<(FrameHeader, Vec<u8>), TransportError> {
    let result = match limits.read_timeout {
        None => read_frame_inner(&mut recv, limits).await,
        Some(after) => tokio::time::timeout(after, read_frame_inner(&mut recv, limits))
            .await
            .unwrap_or(Err(TransportError::Timeout {
                what: "reading a frame stream",
                after,
            })),
    };
    match &result {
        Ok((_, bytes)) => {
            metrics::counter!("referee_transport_frames_received_total").increment(1);
            metrics::counter!("referee_transport_frame_bytes_total").increment(bytes.len() as u64);
        }
        Err(e) => {
            metrics::counter!("referee_transport_frame_errors_total", "reason" => e.kind())
                .increment(1);
            // The stream may already be gone; nothing more to report then.
            let _ = recv.stop(STOP_FRAME_REJECTED);
        }
    }
    result
}

async fn read_frame_inner(
    recv: &mut quinn::RecvStream,
    limits: &FrameLimits,
) -> Result<(FrameHeader, Vec<u8>), TransportError> {
    let Some(hlen) = read_prefix(recv, "frame header length").await? else {
        return Err(TransportError::Truncated {
            what: "frame header length",
            expected: PREFIX_LEN as u64,
            got: 0,
        });
    };
    check_len("frame header", hlen, limits.max_header_bytes)?;
    let mut hbuf = vec![0u8; hlen];
    read_exact(recv, &mut hbuf, "frame header").await?;
    let header: FrameHeader = decode_body("frame header", &hbuf)?;
    let len = header.len as usize;
    check_len("frame", len, limits.max_frame_bytes)?;
    let mut bytes = vec![0u8; len];
    read_exact(recv, &mut bytes, "frame").await?;
    let mut extra = [0u8; 1];
    match recv.read(&mut extra).await? {
        None => Ok((header, bytes)),
        Some(_) => Err(TransportError::Malformed {
            what: "frame",
            detail: format!("more bytes than the {len} announced in its header"),
        }),
    }
}
