//! A minimal RESP2 client codec, shared by `examples/redis.rs` and `tests/redis.rs`
//! (included with `#[path]`; not an example of its own).
#![allow(dead_code)]

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

#[derive(Debug)]
pub enum RespError {
    Io(io::Error),
    /// The server closed the connection before a whole reply arrived.
    Eof,
    /// Bytes that are not a RESP reply (or more than one reply).
    Protocol(String),
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::Io(e) => write!(f, "I/O error: {e}"),
            RespError::Eof => f.write_str("connection closed before a whole reply"),
            RespError::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

impl std::error::Error for RespError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RespError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for RespError {
    fn from(e: io::Error) -> Self {
        RespError::Io(e)
    }
}

/// A command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply at `pos`: `Ok(None)` when more bytes are needed, else the reply and the
/// position just after it.
pub fn parse(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Reply, usize)>, String> {
    if depth > 16 {
        return Err("reply nested too deep".into());
    }
    let Some(rel) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let end = pos + rel;
    if end == pos {
        return Err("empty reply line".into());
    }
    let line = &buf[pos + 1..end];
    let next = end + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    let int = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad integer {:?}", String::from_utf8_lossy(line)))
    };
    match buf[pos] {
        b'+' => Ok(Some((Reply::Simple(text()), next))),
        b'-' => Ok(Some((Reply::Error(text()), next))),
        b':' => Ok(Some((Reply::Int(int()?), next))),
        b'$' => match int()? {
            -1 => Ok(Some((Reply::Bulk(None), next))),
            n if !(0..=512 << 20).contains(&n) => Err(format!("bad bulk length {n}")),
            n => {
                let n = n as usize;
                if buf.len() < next + n + 2 {
                    return Ok(None);
                }
                if &buf[next + n..next + n + 2] != b"\r\n" {
                    return Err("bulk string not followed by CRLF".into());
                }
                Ok(Some((
                    Reply::Bulk(Some(buf[next..next + n].to_vec())),
                    next + n + 2,
                )))
            }
        },
        b'*' => match int()? {
            -1 => Ok(Some((Reply::Array(None), next))),
            n if !(0..=1 << 20).contains(&n) => Err(format!("bad array length {n}")),
            n => {
                let mut items = Vec::with_capacity(n as usize);
                let mut at = next;
                for _ in 0..n {
                    match parse(buf, at, depth + 1)? {
                        Some((item, after)) => {
                            items.push(item);
                            at = after;
                        }
                        None => return Ok(None),
                    }
                }
                Ok(Some((Reply::Array(Some(items)), at)))
            }
        },
        other => Err(format!("unexpected reply type byte {other:#04x}")),
    }
}

/// Reads exactly one reply; anything after it is a protocol error (request/response: the
/// server never sends more than was asked for).
pub async fn read_reply<S: AsyncRead + Unpin>(s: &mut S) -> Result<Reply, RespError> {
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(RespError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse(&buf, 0, 0) {
            Ok(Some((reply, used))) if used == buf.len() => return Ok(reply),
            Ok(Some((_, used))) => {
                return Err(RespError::Protocol(format!(
                    "{} unexpected bytes after a reply",
                    buf.len() - used
                )));
            }
            Ok(None) => {}
            Err(e) => return Err(RespError::Protocol(e)),
        }
    }
}

pub async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    args: &[&[u8]],
) -> Result<Reply, RespError> {
    s.write_all(&encode(args)).await?;
    read_reply(s).await
}
