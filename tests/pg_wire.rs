//! The PostgreSQL wire session against a real throwaway server (one cluster per test; skipped
//! when PostgreSQL is not installed, unless `LIVEPOOL_REQUIRE_ALL=1`), plus a fake server
//! that answers the startup message with garbage. Every wait is bounded.
#![cfg(feature = "postgres")]

mod support;

use livepool::postgres::{IdleOutcome, PgConfig, PgError, PgSession};
use support::pg::PgCluster;
use support::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Session = PgSession<TcpStream>;

fn config(c: &PgCluster) -> PgConfig {
    PgConfig::new(c.user())
        .password(c.password())
        .database("postgres")
        .application_name("livepool-test")
}

async fn try_connect(c: &PgCluster, cfg: &PgConfig) -> Result<Session, PgError> {
    let stream = within(10, "TCP connect", TcpStream::connect(c.addr()))
        .await
        .expect("TCP connect");
    within(10, "startup", PgSession::startup(stream, cfg)).await
}

async fn connect(c: &PgCluster) -> Session {
    try_connect(c, &config(c)).await.expect("startup")
}

async fn query(s: &mut Session, sql: &str) -> Vec<Vec<Option<String>>> {
    within(10, sql, s.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn text(v: &str) -> Option<String> {
    Some(v.to_string())
}

/// Waits (bounded) for bytes on idle session `s` and classifies them, repeating while they are
/// benign and `until` does not hold yet.
async fn idle_until(
    s: &mut Session,
    what: &str,
    mut until: impl FnMut(&mut Session) -> bool,
) -> IdleOutcome {
    within(10, what, async {
        loop {
            s.get_ref().readable().await.expect("readable");
            let outcome = within(10, "idle_bytes", s.idle_bytes()).await;
            if outcome != IdleOutcome::Benign || until(s) {
                return outcome;
            }
        }
    })
    .await
}

#[tokio::test]
async fn scram_startup_and_simple_queries() {
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let mut s = connect(&cluster).await;
    assert!(s.is_idle(), "{s:?}");
    assert!(s.backend_pid() > 0);
    assert!(s.parameter("server_version").is_some());
    assert_eq!(s.parameter("application_name"), Some("livepool-test"));

    assert_eq!(query(&mut s, "SELECT 1").await, vec![vec![text("1")]]);
    assert_eq!(
        query(&mut s, "SELECT 1, NULL::text; SELECT 'é', 'two words'").await,
        vec![vec![text("1"), None], vec![text("é"), text("two words")]]
    );
    assert_eq!(
        query(&mut s, "SELECT pg_backend_pid()").await,
        vec![vec![text(&s.backend_pid().to_string())]]
    );
    assert!(query(&mut s, "").await.is_empty());
    assert!(
        query(&mut s, "CREATE TEMP TABLE t (x int)")
            .await
            .is_empty()
    );
    assert!(s.is_idle());
    // COPY out is drained, COPY in is refused with CopyFail; the session stays usable.
    assert!(query(&mut s, "COPY (SELECT 1) TO STDOUT").await.is_empty());
    let e = within(10, "COPY FROM STDIN", s.simple_query("COPY t FROM STDIN"))
        .await
        .expect_err("COPY FROM STDIN refused");
    assert!(e.is_server(), "{e:?}");
    assert!(s.is_idle(), "{s:?}");
    assert_eq!(query(&mut s, "SELECT 7").await, vec![vec![text("7")]]);
}

#[tokio::test]
async fn wrong_password_reports_the_server_words_not_the_password() {
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let wrong = "definitely-not-the-password-7f3a";
    let cfg = PgConfig::new(cluster.user()).password(wrong);
    let e = try_connect(&cluster, &cfg)
        .await
        .expect_err("wrong password accepted");
    let shown = e.to_string();
    assert!(shown.contains("password authentication failed"), "{shown}");
    assert!(shown.starts_with("FATAL 28P01 "), "{shown}");
    assert!(e.is_server() && !e.is_io(), "{e:?}");
    assert_eq!(e.code(), Some("28P01"));
    assert_eq!(e.severity(), Some("FATAL"));
    for leak in [shown, format!("{e:?}"), format!("{cfg:?}")] {
        assert!(!leak.contains(wrong), "password leaked: {leak}");
    }
    // The right password still works afterwards.
    let mut s = connect(&cluster).await;
    assert_eq!(query(&mut s, "SELECT 1").await, vec![vec![text("1")]]);
}

#[tokio::test]
async fn ping_leaves_the_session_idle() {
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let mut s = connect(&cluster).await;
    for _ in 0..3 {
        within(10, "ping", s.ping()).await.expect("ping");
        assert!(s.is_idle(), "{s:?}");
    }
    // Inside a transaction block a ping works but the session is not idle.
    query(&mut s, "BEGIN").await;
    within(10, "ping in transaction", s.ping())
        .await
        .expect("ping");
    assert_eq!(s.transaction_status(), b'T');
    assert!(!s.is_idle());
    query(&mut s, "COMMIT").await;
    assert!(s.is_idle());
}

#[tokio::test]
async fn transaction_status_and_errors_keep_the_session_usable() {
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let mut s = connect(&cluster).await;
    query(&mut s, "BEGIN").await;
    assert!(!s.is_idle());
    assert_eq!(s.transaction_status(), b'T');
    assert_eq!(query(&mut s, "SELECT 2").await, vec![vec![text("2")]]);
    assert!(!s.is_idle());
    query(&mut s, "COMMIT").await;
    assert!(s.is_idle());

    // An error outside a transaction: reported, session still idle and usable.
    let e = within(10, "bad query", s.simple_query("SELECT 1/0"))
        .await
        .expect_err("division by zero");
    assert!(e.is_server(), "{e:?}");
    assert_eq!(e.code(), Some("22012"));
    assert_eq!(e.severity(), Some("ERROR"));
    assert_eq!(e.to_string(), "ERROR 22012 division by zero");
    assert!(s.is_idle(), "{s:?}");
    assert_eq!(query(&mut s, "SELECT 3").await, vec![vec![text("3")]]);

    // An error inside a transaction block: status E until ROLLBACK.
    query(&mut s, "BEGIN").await;
    let e = within(10, "syntax error", s.simple_query("SELEC 1"))
        .await
        .expect_err("syntax error");
    assert_eq!(e.code(), Some("42601"));
    assert_eq!(s.transaction_status(), b'E');
    assert!(!s.is_idle());
    query(&mut s, "ROLLBACK").await;
    assert!(s.is_idle());
}

#[tokio::test]
async fn a_dropped_query_is_caught_up_by_the_next_one() {
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let mut s = connect(&cluster).await;
    let cancelled = tokio::time::timeout(
        std::time::Duration::from_millis(20),
        s.simple_query("SELECT pg_sleep(0.3)"),
    )
    .await;
    assert!(cancelled.is_err(), "pg_sleep(0.3) finished within 20 ms");
    assert!(!s.is_idle(), "a reply is still owed: {s:?}");
    assert_eq!(query(&mut s, "SELECT 4").await, vec![vec![text("4")]]);
    assert!(s.is_idle(), "{s:?}");
}

#[tokio::test]
async fn notification_on_an_idle_session_is_benign_and_queued() {
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let mut a = connect(&cluster).await;
    let mut b = connect(&cluster).await;
    query(&mut a, "LISTEN livepool_chan").await;
    assert!(a.is_idle());
    query(&mut b, "NOTIFY livepool_chan, 'hello'").await;

    let mut got = Vec::new();
    let outcome = idle_until(&mut a, "notification on A", |s| {
        got.extend(s.take_notifications());
        !got.is_empty()
    })
    .await;
    assert_eq!(outcome, IdleOutcome::Benign);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].channel, "livepool_chan");
    assert_eq!(got[0].payload, "hello");
    assert_eq!(got[0].pid, b.backend_pid());
    assert!(a.take_notifications().is_empty());
    assert!(a.is_idle(), "{a:?}");
    assert_eq!(query(&mut a, "SELECT 5").await, vec![vec![text("5")]]);
}

#[tokio::test]
async fn terminated_backend_is_reported_with_57p01() {
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let mut a = connect(&cluster).await;
    let mut b = connect(&cluster).await;
    let sql = format!("SELECT pg_terminate_backend({})", a.backend_pid());
    assert_eq!(query(&mut b, &sql).await, vec![vec![text("t")]]);

    let outcome = idle_until(&mut a, "termination of A", |_| false).await;
    match outcome {
        IdleOutcome::Terminated { code, message } => {
            assert_eq!(code, "57P01", "{message}");
            assert!(message.contains("administrator command"), "{message}");
        }
        other => panic!("expected Terminated, got {other:?}"),
    }
    assert!(!a.is_idle());
    let e = within(10, "ping after termination", a.ping())
        .await
        .expect_err("ping on a terminated session");
    assert!(e.is_broken(), "{e:?}");
    // B is unaffected.
    within(10, "ping B", b.ping()).await.expect("ping B");
}

#[tokio::test]
async fn server_restart_terminates_idle_sessions() {
    let Some(mut cluster) = PgCluster::start().await else {
        return;
    };
    let mut a = connect(&cluster).await;
    cluster.restart();
    let outcome = idle_until(&mut a, "A after restart", |_| false).await;
    assert!(
        matches!(&outcome, IdleOutcome::Terminated { code, .. } if code == "57P01")
            || outcome == IdleOutcome::Closed,
        "{outcome:?}"
    );
    let mut fresh = connect(&cluster).await;
    assert_eq!(query(&mut fresh, "SELECT 6").await, vec![vec![text("6")]]);
}

/// Serves one connection: reads the whole startup message, writes `reply`, then either closes
/// (`close`) or waits for the client to go away.
async fn fake_server(reply: Vec<u8>, close: bool) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let mut len = [0u8; 4];
        if sock.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut rest = vec![
            0u8;
            (u32::from_be_bytes(len) as usize)
                .saturating_sub(4)
                .min(1 << 16)
        ];
        if sock.read_exact(&mut rest).await.is_err() {
            return;
        }
        let _ = sock.write_all(&reply).await;
        if !close {
            let mut sink = [0u8; 1024];
            while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    });
    addr
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A fake-server case: name, reply bytes, close after replying, expected error kind.
type Case = (&'static str, Vec<u8>, bool, fn(&PgError) -> bool);

#[tokio::test]
async fn garbage_from_the_server_is_a_clean_error() {
    let secret = "garbage-test-secret-91c2";
    let cfg = PgConfig::new("u").password(secret);
    let auth_ok = msg(b'R', &0i32.to_be_bytes());
    let sasl = msg(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0");
    let mut cases: Vec<Case> = vec![
        (
            "http reply",
            b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
            false,
            PgError::is_protocol,
        ),
        (
            "length below 4",
            vec![b'E', 0, 0, 0, 2],
            false,
            PgError::is_protocol,
        ),
        (
            "length above cap",
            vec![b'D', 0x7f, 0xff, 0xff, 0xff],
            false,
            PgError::is_protocol,
        ),
        ("unknown tag", msg(b'!', b""), false, PgError::is_protocol),
        (
            "unknown auth method",
            msg(b'R', &99i32.to_be_bytes()),
            false,
            PgError::is_protocol,
        ),
        (
            "gssapi",
            msg(b'R', &7i32.to_be_bytes()),
            false,
            PgError::is_auth,
        ),
        (
            "sasl final without sasl",
            msg(b'R', b"\0\0\0\x0cv=abc"),
            false,
            PgError::is_protocol,
        ),
        (
            "sasl without scram",
            msg(b'R', b"\0\0\0\x0aOTHER\0\0"),
            false,
            PgError::is_auth,
        ),
        (
            "bad ready status",
            [auth_ok.clone(), msg(b'Z', b"Q")].concat(),
            false,
            PgError::is_protocol,
        ),
        (
            "query reply at startup",
            [auth_ok.clone(), msg(b'D', b"\0\0")].concat(),
            false,
            PgError::is_protocol,
        ),
        (
            "bad scram server-first",
            [sasl.clone(), msg(b'R', b"\0\0\0\x0bnot scram")].concat(),
            false,
            PgError::is_auth,
        ),
        (
            "server error",
            msg(
                b'E',
                b"SFATAL\0VFATAL\0C28000\0Mrole \"u\" does not exist\0\0",
            ),
            false,
            PgError::is_server,
        ),
        (
            "error missing terminator",
            msg(b'E', b"SFATAL"),
            false,
            PgError::is_protocol,
        ),
        (
            "truncated message",
            vec![b'R', 0, 0, 0, 0x7f, 0, 0],
            true,
            PgError::is_io,
        ),
        ("eof", Vec::new(), true, PgError::is_io),
    ];
    // Deterministic pseudo-random junk, closed afterwards: any error is fine, no panic/hang.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..16 {
        let junk: Vec<u8> = (0..64)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        cases.push(("random junk", junk, true, |_| true));
    }
    for (what, reply, close, kind) in cases {
        let addr = fake_server(reply, close).await;
        let stream = within(10, "connect to fake server", TcpStream::connect(addr))
            .await
            .expect("connect");
        let res = within(10, what, PgSession::startup(stream, &cfg)).await;
        let e = res.expect_err(what);
        assert!(kind(&e), "{what}: unexpected error kind: {e:?}");
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(secret), "{what}: password leaked: {shown}");
        assert!(!e.to_string().ends_with('.'), "{what}: {e}");
    }
}
