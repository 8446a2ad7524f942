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
    /// `CHANGED`/`PREPARED` bits of the statements sent since the last reset.
    changes: AtomicU8,
}

impl Session {
    fn new() -> Self {
        Session {
            owed: AtomicU64::new(1),
            status: AtomicU8::new(0),
            answered: tokio::sync::Notify::new(),
            changes: AtomicU8::new(0),
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

    /// What the statements sent since the last [`Session::clear_changes`] may have done to
    /// the session (`CHANGED`/`PREPARED` bits).
    pub(crate) fn changes(&self) -> u8 {
        self.changes.load(Ordering::Acquire)
    }

    /// The session was reset.
    pub(crate) fn clear_changes(&self) {
        self.changes.store(0, Ordering::Release);
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

/// What one direction's framing reports.
#[derive(Debug, PartialEq, Eq)]
enum Event<'a> {
    /// A message of this type begins (its header is complete).
    Start(u8),
    /// Some bytes of the current message's body.
    Body(u8, &'a [u8]),
    /// The message of this type is complete.
    End(u8),
}

/// Follows one direction's message framing: a type byte (except for an untyped first
/// message), then a big-endian length that counts itself.
#[derive(Debug)]
struct Framing {
    /// The next message has no type byte (the frontend's startup packet).
    untyped_next: bool,
    /// Bytes of the current message's header seen so far.
    header: [u8; 5],
    header_len: usize,
    /// Inside a body, with this much of it still to come.
    in_body: bool,
    body_left: u64,
    /// The current message's type (0 for the untyped one).
    kind: u8,
}

impl Framing {
    fn new(untyped_first: bool) -> Self {
        Framing {
            untyped_next: untyped_first,
            header: [0; 5],
            header_len: 0,
            in_body: false,
            body_left: 0,
            kind: 0,
        }
    }

    /// Feeds bytes, reporting each message's start, body bytes and end.
    fn feed(&mut self, mut bytes: &[u8], mut on: impl FnMut(Event<'_>)) {
        while !bytes.is_empty() {
            if self.in_body {
                let take = self.body_left.min(bytes.len() as u64) as usize;
                on(Event::Body(self.kind, &bytes[..take]));
                self.body_left -= take as u64;
                bytes = &bytes[take..];
                if self.body_left == 0 {
                    self.in_body = false;
                    on(Event::End(self.kind));
                }
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
            on(Event::Start(kind));
            if self.body_left == 0 {
                on(Event::End(kind));
            } else {
                self.in_body = true;
            }
        }
    }
}

/// The statement may have changed session state (`SET`, `LISTEN`, a temporary table, an
/// advisory lock, …): see [`effects`].
pub(crate) const CHANGED: u8 = 1;
/// The statement prepared or deallocated a statement at the SQL level (`PREPARE`): only
/// `DISCARD ALL` undoes that.
pub(crate) const PREPARED: u8 = 2;

/// The longest statement text the tap keeps to look at; a longer one is taken to change the
/// session (a needless reset, never a missed one).
const MAX_STATEMENT: usize = 64 * 1024;

/// What a statement text (a simple query, or a Parse message's body) may do to the session,
/// as `CHANGED`/`PREPARED` bits. Conservative: a false alarm costs a reset, a miss leaks
/// state to the next caller. It sees the text, not what functions do when they run: a
/// function that runs `SET` itself is not seen (use `Reset::Always` for that).
pub(crate) fn effects(sql: &[u8]) -> u8 {
    let sql = sql.to_ascii_lowercase();
    let text = String::from_utf8_lossy(&sql);
    let mut found = 0;
    for needle in ["set_config", "advisory_lock", "pg_temp", "session_user"] {
        if text.contains(needle) {
            found |= CHANGED;
        }
    }
    for statement in text.split(';') {
        let mut words = words(statement);
        match words.next() {
            Some("set" | "reset" | "listen" | "declare" | "discard" | "load") => found |= CHANGED,
            Some("prepare" | "deallocate") => found |= CHANGED | PREPARED,
            Some("create") if words.take(3).any(|w| w == "temp" || w == "temporary") => {
                found |= CHANGED
            }
            _ => {}
        }
    }
    found
}

/// How many statement texts a tap remembers the effects of.
const REMEMBERED: usize = 16;

/// [`effects`] of `text`, from `seen` if it was looked at lately (moved to the front), else
/// scanned and remembered (the least recent forgotten).
fn remembered(seen: &mut Vec<(Vec<u8>, u8)>, text: &[u8]) -> u8 {
    if let Some(i) = seen.iter().position(|(t, _)| t.as_slice() == text) {
        let hit = seen.remove(i);
        let found = hit.1;
        seen.insert(0, hit);
        return found;
    }
    let found = effects(text);
    if seen.len() == REMEMBERED {
        seen.pop();
    }
    seen.insert(0, (text.to_vec(), found));
    found
}

/// The words of a statement, comments skipped.
fn words(statement: &str) -> impl Iterator<Item = &str> {
    statement
        .lines()
        .map(|line| line.split("--").next().unwrap_or(""))
        .flat_map(|line| line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| !w.is_empty())
        .skip_while(|w| *w == "*")
}

/// The stream tokio-postgres runs on: the pool's `Io`, with the tap.
pub(crate) struct Tap<S> {
    inner: S,
    sent: Framing,
    received: Framing,
    session: Arc<Session>,
    /// The text of the simple query or Parse message being sent (up to `MAX_STATEMENT`).
    statement: Vec<u8>,
    /// The statement outgrew `MAX_STATEMENT`.
    statement_too_long: bool,
    /// The last statement texts looked at and what they do (an application sends the same
    /// few statements over and over: comparing bytes is cheaper than scanning them).
    seen: Vec<(Vec<u8>, u8)>,
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
                statement: Vec::new(),
                statement_too_long: false,
                seen: Vec::new(),
            },
            session,
        )
    }

    fn on_sent(&mut self, bytes: &[u8]) {
        let session = &self.session;
        let statement = &mut self.statement;
        let too_long = &mut self.statement_too_long;
        let seen = &mut self.seen;
        self.sent.feed(bytes, |ev| match ev {
            // Query and Sync each elicit one ReadyForQuery.
            Event::Start(b'Q' | b'S') => {
                session.owed.fetch_add(1, Ordering::AcqRel);
            }
            // The text of a simple query or of a statement being prepared.
            Event::Body(b'Q' | b'P', part) => {
                if statement.len() + part.len() <= MAX_STATEMENT {
                    statement.extend_from_slice(part);
                } else {
                    *too_long = true;
                }
            }
            Event::End(kind @ (b'Q' | b'P')) => {
                // Query: the text, then a NUL. Parse: the statement's name, a NUL, the text.
                let skip = usize::from(kind == b'P');
                let text = statement.split(|&b| b == 0).nth(skip).unwrap_or_default();
                let found = if *too_long {
                    CHANGED
                } else {
                    remembered(seen, text)
                };
                if found != 0 {
                    session.changes.fetch_or(found, Ordering::AcqRel);
                }
                statement.clear();
                *too_long = false;
            }
            _ => {}
        });
    }

    fn on_received(&mut self, bytes: &[u8]) {
        let session = &self.session;
        self.received.feed(bytes, |ev| match ev {
            // ReadyForQuery's one body byte: the transaction status.
            Event::Body(b'Z', status) => {
                if let Some(&s) = status.first() {
                    session.status.store(s, Ordering::Release);
                }
            }
            Event::End(b'Z') => {
                // Saturating: a server that sends more than it owes is the client's to
                // report; the tap must not wrap around.
                let _ = session
                    .owed
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
                session.answered.notify_waiters();
            }
            _ => {}
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
    fn statements_that_change_the_session_are_seen() {
        for sql in [
            "SET search_path TO other",
            "set role app_admin",
            "  SET SESSION AUTHORIZATION other",
            "BEGIN; SET LOCAL statement_timeout = 5; COMMIT",
            "RESET ALL",
            "LISTEN jobs",
            "CREATE TEMP TABLE t (x int)",
            "create temporary table t (x int)",
            "CREATE GLOBAL TEMPORARY TABLE t (x int)",
            "SELECT set_config('search_path', 'x', false)",
            "SELECT pg_advisory_lock(42)",
            "SELECT pg_try_advisory_lock(1)",
            "CREATE TABLE pg_temp.t (x int)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "-- a comment\nSET x.y = 1",
            "DISCARD TEMP",
        ] {
            assert_eq!(effects(sql.as_bytes()) & CHANGED, CHANGED, "{sql}");
        }
        for sql in ["PREPARE q AS SELECT 1", "DEALLOCATE q"] {
            assert_eq!(effects(sql.as_bytes()), CHANGED | PREPARED, "{sql}");
        }
        for sql in [
            "SELECT $1::int8",
            "UPDATE t SET x = 1 WHERE id = $1",
            "INSERT INTO settings (name) VALUES ('set role')",
            "BEGIN",
            "COMMIT",
            "SELECT pg_advisory_xact_lock(42)",
            "CREATE TABLE t (x int)",
            "COPY t FROM STDIN",
        ] {
            assert_eq!(effects(sql.as_bytes()), 0, "{sql}");
        }
    }

    #[test]
    fn the_tap_flags_a_changing_statement_split_anywhere() {
        let set = msg(b'Q', b"SET search_path TO other\x00");
        let parse = msg(b'P', b"s1\x00PREPARE q AS SELECT 1\x00\x00\x00");
        let plain = msg(b'P', b"s2\x00SELECT $1\x00\x00\x00");
        for chunk in 1..=set.len() {
            let (mut tap, session) = Tap::new(());
            tap.on_sent(&startup());
            for part in plain.chunks(chunk) {
                tap.on_sent(part);
            }
            assert_eq!(session.changes(), 0, "chunk {chunk}");
            for part in set.chunks(chunk) {
                tap.on_sent(part);
            }
            assert_eq!(session.changes(), CHANGED, "chunk {chunk}");
            for part in parse.chunks(chunk) {
                tap.on_sent(part);
            }
            assert_eq!(session.changes(), CHANGED | PREPARED, "chunk {chunk}");
            session.clear_changes();
            assert_eq!(session.changes(), 0);
        }
    }

    #[test]
    fn remembered_effects_match_a_fresh_scan() {
        let mut seen = Vec::new();
        let texts: Vec<String> = (0..40)
            .map(|i| {
                if i % 3 == 0 {
                    format!("SET x.y = {i}")
                } else {
                    format!("SELECT {i}")
                }
            })
            .collect();
        for round in 0..3 {
            for t in texts.iter().chain(texts.iter().take(5)) {
                assert_eq!(
                    remembered(&mut seen, t.as_bytes()),
                    effects(t.as_bytes()),
                    "{t} ({round})"
                );
                assert!(seen.len() <= REMEMBERED);
                assert_eq!(seen[0].0, t.as_bytes(), "the latest is first");
            }
        }
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
