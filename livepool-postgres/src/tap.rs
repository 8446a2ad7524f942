//! A wire tap under tokio-postgres: it follows the message framing in both directions to
//! know, on return, whether the session is idle — every request answered and no transaction
//! open — without asking the server and without touching the client.
//!
//! Every simple `Query` and every `Sync` (the end of an extended-protocol request) elicits
//! exactly one `ReadyForQuery`, which carries the transaction status (`I` idle, `T` in a
//! transaction, `E` in a failed one). So `owed` = requests sent − `ReadyForQuery` received,
//! starting at one for the startup's own; the session is clean when nothing is owed and the
//! last status was `I`. The startup packet is the one frontend message without a type byte.
//!
//! Both directions run in the driver task (tokio-postgres's `Connection` reads and writes),
//! and a reply reaches the caller only after the driver read it through here: by the time
//! a caller returns the connection, the tap has seen every reply that caller awaited.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the tap knows, shared between the driver (which updates it) and the pool (which
/// reads it on return).
#[derive(Debug)]
pub(crate) struct Session {
    /// `ReadyForQuery` messages owed by the server.
    owed: AtomicU64,
    /// The status byte of the last `ReadyForQuery` (`0` before the first).
    status: AtomicU8,
    /// Woken at every `ReadyForQuery`.
    answered: tokio::sync::Notify,
}

impl Session {
    fn new() -> Self {
        Session {
            owed: AtomicU64::new(1),
            status: AtomicU8::new(0),
            answered: tokio::sync::Notify::new(),
        }
    }

    /// Every request answered and no transaction open.
    pub(crate) fn is_idle(&self) -> bool {
        self.owed.load(Ordering::Acquire) == 0 && self.status.load(Ordering::Acquire) == b'I'
    }

    /// The last transaction status: `I`, `T` or `E` (`0` before the first).
    pub(crate) fn status(&self) -> u8 {
        self.status.load(Ordering::Acquire)
    }

    /// Waits (at most `limit`) until every request sent has been answered; true if it was.
    pub(crate) async fn answered(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.answered.notified();
            tokio::pin!(notified);
            // Registered before the count is read: `notify_waiters` stores nothing.
            notified.as_mut().enable();
            if self.owed.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.owed.load(Ordering::Acquire) == 0;
            }
        }
    }
}

/// Follows one direction's message framing: a type byte (except for an untyped first
/// message), then a big-endian length that counts itself.
#[derive(Debug)]
struct Framing {
    /// The next message has no type byte (the frontend's startup packet).
    untyped_next: bool,
    /// Bytes of the current message's header seen so far, and how many it has.
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message's body still to skip.
    body_left: u64,
    /// The current message's type.
    kind: u8,
}

impl Framing {
    fn new(untyped_first: bool) -> Self {
        Framing {
            untyped_next: untyped_first,
            header: [0; 5],
            header_len: 0,
            body_left: 0,
            kind: 0,
        }
    }

    /// Feeds bytes; calls `on_message(kind, first_body_byte)` when a message's header is
    /// complete (with its first body byte, if it has one, once that is seen).
    fn feed(&mut self, mut bytes: &[u8], mut on_message: impl FnMut(u8, Option<u8>)) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                if self.kind == b'Z' && self.body_left == 1 {
                    // ReadyForQuery's one body byte: the status.
                    on_message(b'Z', Some(bytes[0]));
                    self.kind = 0;
                }
                let skip = self.body_left.min(bytes.len() as u64);
                self.body_left -= skip;
                bytes = &bytes[skip as usize..];
                continue;
            }
            let want = if self.untyped_next { 4 } else { 5 };
            let take = (want - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len < want {
                return;
            }
            let (kind, len) = if self.untyped_next {
                self.untyped_next = false;
                (0, &self.header[0..4])
            } else {
                (self.header[0], &self.header[1..5])
            };
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            self.header_len = 0;
            self.kind = kind;
            // The length counts itself; a length under 4 is a protocol violation that the
            // client will report: treat it as an empty body.
            self.body_left = u64::from(len.saturating_sub(4));
            if kind != b'Z' || self.body_left != 1 {
                on_message(kind, None);
                if kind == b'Z' {
                    self.kind = 0;
                }
            }
        }
    }
}

/// The stream tokio-postgres runs on: the pool's `Io`, with the tap.
pub(crate) struct Tap<S> {
    inner: S,
    sent: Framing,
    received: Framing,
    session: Arc<Session>,
}

impl<S> Tap<S> {
    pub(crate) fn new(inner: S) -> (Self, Arc<Session>) {
        let session = Arc::new(Session::new());
        (
            Tap {
                inner,
                sent: Framing::new(true),
                received: Framing::new(false),
                session: session.clone(),
            },
            session,
        )
    }

    fn on_sent(&mut self, bytes: &[u8]) {
        let session = &self.session;
        self.sent.feed(bytes, |kind, _| {
            // Query and Sync each elicit one ReadyForQuery.
            if kind == b'Q' || kind == b'S' {
                session.owed.fetch_add(1, Ordering::AcqRel);
            }
        });
    }

    fn on_received(&mut self, bytes: &[u8]) {
        let session = &self.session;
        self.received.feed(bytes, |kind, status| {
            if kind == b'Z' {
                if let Some(s) = status {
                    session.status.store(s, Ordering::Release);
                }
                // Saturating: a server that sends more than it owes is the client's to
                // report; the tap must not wrap around.
                let _ = session
                    .owed
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
                session.answered.notify_waiters();
            }
        });
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res
            && buf.filled().len() > before
        {
            this.on_received(&buf.filled()[before..]);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = res {
            this.on_sent(&data[..n]);
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn startup() -> Vec<u8> {
        let body = b"\x00\x03\x00\x00user\x00app\x00\x00";
        let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn counts_requests_and_ready_for_query_across_any_split() {
        let sent: Vec<u8> = [
            startup(),
            msg(b'p', b"password\x00"),
            msg(b'Q', b"BEGIN\x00"),
            msg(b'P', b"\x00SELECT 1\x00\x00\x00"),
            msg(b'B', b"\x00\x00\x00\x00\x00\x00\x00"),
            msg(b'E', b"\x00\x00\x00\x00\x00"),
            msg(b'S', b""),
        ]
        .concat();
        let received: Vec<u8> = [
            msg(b'R', &[0, 0, 0, 0]),
            msg(b'Z', b"I"),
            msg(b'C', b"BEGIN\x00"),
            msg(b'Z', b"T"),
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'D', b"\x00\x01\x00\x00\x00\x01Z"),
            msg(b'Z', b"T"),
        ]
        .concat();
        // Every chunk size, so that headers and bodies split everywhere.
        let mut runs = 0;
        for chunk in 1..=sent.len().max(received.len()) {
            let (mut tap, session) = Tap::new(());
            for part in sent.chunks(chunk) {
                tap.on_sent(part);
            }
            // Startup's Z + BEGIN's + the Sync's.
            assert_eq!(session.owed.load(Ordering::Relaxed), 3, "chunk {chunk}");
            for part in received.chunks(chunk) {
                tap.on_received(part);
            }
            assert_eq!(session.owed.load(Ordering::Relaxed), 0, "chunk {chunk}");
            assert_eq!(session.status(), b'T', "chunk {chunk}");
            assert!(!session.is_idle());
            tap.on_sent(&msg(b'Q', b"COMMIT\x00"));
            assert!(!session.is_idle());
            tap.on_received(&msg(b'Z', b"I"));
            assert!(session.is_idle(), "chunk {chunk}");
            runs += 1;
        }
        assert!(runs > 10);
    }

    #[test]
    fn a_reply_still_owed_is_not_idle() {
        let (mut tap, session) = Tap::new(());
        tap.on_sent(&startup());
        tap.on_received(&msg(b'Z', b"I"));
        assert!(session.is_idle());
        tap.on_sent(&msg(b'Q', b"SELECT pg_sleep(5)\x00"));
        assert!(!session.is_idle());
        // A data row whose body happens to hold a 'Z' is not a ReadyForQuery.
        tap.on_received(&msg(b'D', b"Z\x00\x00\x00\x05I"));
        assert!(!session.is_idle());
        tap.on_received(&msg(b'Z', b"I"));
        assert!(session.is_idle());
        // More than owed never wraps.
        tap.on_received(&msg(b'Z', b"I"));
        assert!(session.is_idle());
    }
}
