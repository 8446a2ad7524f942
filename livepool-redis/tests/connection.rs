//! `livepool_redis::RedisConnection` over a plain `TcpStream` (and a TLS stream) against a
//! real `redis-server` (started by the tests on free loopback ports; skipped visibly when it
//! is not installed, a failure under `LIVEPOOL_REQUIRE_ALL=1`): authentication (password,
//! ACL user, wrong password), database selection, the `is_clean` tracking (SELECT,
//! MULTI/EXEC, replies owed by a call stopped early), RESP3 push frames that arrive while
//! the connection is idle, a killed connection, and TLS. Real time throughout; every wait is
//! bounded.
//!
//! Bytes that arrive on an idle connection are the pool's to inspect (through the crate's
//! protocol; `tests/pool.rs` covers that path); here they are checked through the public
//! API: the next call reads them first, queues a push, and still gets its own reply.

use std::net::SocketAddr;

use livepool_redis::redis::{self, AsyncCommands, ErrorKind, PushKind, RedisError, Value};
use livepool_redis::{RedisConfig, RedisConnection};
use livepool_testkit::redis_admin::{admin_run, bulk, ok, shown, text};
use livepool_testkit::redis_server::{RedisOptions, RedisServer};
use livepool_testkit::{CLOSE_WAIT, kernel_socket, wait_until, within};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

const PASSWORD: &str = "s3cret-Pw_91";
const APP_PASSWORD: &str = "app-Pw-7731";

async fn tcp(redis: &RedisServer) -> TcpStream {
    let s = within(5, "connect", TcpStream::connect(redis.addr()))
        .await
        .expect("connect to redis-server");
    s.set_nodelay(true).unwrap();
    s
}

async fn session(redis: &RedisServer, cfg: &RedisConfig) -> RedisConnection<TcpStream> {
    let stream = tcp(redis).await;
    match within(5, "setup", RedisConnection::setup(stream, cfg)).await {
        Ok(s) => s,
        Err(e) => panic!("setup with {cfg:?}: {e}"),
    }
}

async fn setup_err(redis: &RedisServer, cfg: &RedisConfig) -> RedisError {
    let stream = tcp(redis).await;
    match within(5, "setup", RedisConnection::setup(stream, cfg)).await {
        Ok(s) => panic!("setup with {cfg:?} succeeded: {s:?}"),
        Err(e) => e,
    }
}

/// One command that must succeed: its reply (an error reply fails the test).
async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    s: &mut RedisConnection<S>,
    cmd: &redis::Cmd,
) -> Value {
    let what = format!("reply to {:?}", shown(cmd));
    match within(5, &what, cmd.query_async::<Value>(s)).await {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// One command the server must refuse: its error reply, as the typed API returns it.
async fn refused<S: AsyncRead + AsyncWrite + Unpin + Send>(
    s: &mut RedisConnection<S>,
    cmd: &redis::Cmd,
) -> RedisError {
    let what = format!("reply to {:?}", shown(cmd));
    match within(5, &what, cmd.query_async::<Value>(s)).await {
        Ok(v) => panic!("{what}: expected an error reply, got {v:?}"),
        Err(e) => {
            assert!(e.code().is_some(), "{what}: not an error reply: {e}");
            e
        }
    }
}

/// Redis' id for this connection.
async fn client_id<S: AsyncRead + AsyncWrite + Unpin + Send>(s: &mut RedisConnection<S>) -> i64 {
    match run(s, redis::cmd("CLIENT").arg("ID")).await {
        Value::Int(id) => id,
        other => panic!("CLIENT ID: {other:?}"),
    }
}

/// The socket's addresses (local, peer), to ask the kernel about it.
fn addrs(s: &TcpStream) -> (SocketAddr, SocketAddr) {
    (s.local_addr().unwrap(), s.peer_addr().unwrap())
}

/// Waits (bounded) until the server's close of the socket reached it (the peer's FIN, or a
/// reset that removed the socket), before anything is read.
async fn closed_by_peer(s: &TcpStream, what: &str) {
    let (local, peer) = addrs(s);
    wait_until(10, what, || {
        kernel_socket(local, peer).is_none_or(|k| k.state == CLOSE_WAIT)
    })
    .await;
}

/// Waits (bounded) until bytes sit unread in the socket.
async fn bytes_waiting(s: &TcpStream, what: &str) {
    let (local, peer) = addrs(s);
    wait_until(10, what, || {
        kernel_socket(local, peer).is_some_and(|k| k.rx_queue > 0)
    })
    .await;
}

/// A call on a connection the server closed fails as a dropped connection, and the
/// connection stays broken: the next call fails without touching the stream.
async fn assert_dead<S: AsyncRead + AsyncWrite + Unpin + Send>(s: &mut RedisConnection<S>) {
    let e = within(5, "ping on a closed connection", s.ping())
        .await
        .unwrap_err();
    assert!(e.is_io_error() && e.is_connection_dropped(), "{e}");
    assert!(!s.is_clean());
    let e = within(5, "a command after the failure", async {
        redis::cmd("PING").query_async::<Value>(s).await
    })
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Client, "{e}");
    assert!(!s.is_clean());
}

fn assert_no_secret(e: &RedisError, secret: &str) {
    let shown = format!("{e} / {e:?}");
    assert!(!shown.contains(secret), "error shows the password: {shown}");
}

/// The RESP3 push client tracking sends when `key` changes.
fn invalidation(key: &str) -> Value {
    Value::Push {
        kind: PushKind::Invalidate,
        data: vec![Value::Array(vec![bulk(key)])],
    }
}

/// Polls `fut` once (which writes its commands and waits for the replies) and drops it: a
/// call stopped early. It must not have finished.
async fn stop_early<F: std::future::Future>(fut: F) {
    let mut fut = std::pin::pin!(fut);
    assert!(
        futures_util::poll!(fut.as_mut()).is_pending(),
        "answered before it could be stopped"
    );
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_with_requirepass_resp2_and_resp3() {
    let Some(redis) = RedisServer::start_with(RedisOptions::new().password(PASSWORD)).await else {
        return;
    };
    // Without credentials the server refuses commands, but the connection stays usable.
    let mut anon = session(&redis, &RedisConfig::new()).await;
    let e = refused(&mut anon, redis::cmd("GET").arg("k")).await;
    assert_eq!(e.code(), Some("NOAUTH"), "{e}");
    assert!(anon.is_clean());

    for resp3 in [false, true] {
        let cfg = RedisConfig::new()
            .password(PASSWORD)
            .resp3(resp3)
            .client_name(format!("wire-{resp3}"));
        let mut s = session(&redis, &cfg).await;
        within(5, "ping", s.ping()).await.expect("ping");
        assert_eq!(
            run(&mut s, redis::cmd("SET").arg("k").arg("v\r\n1")).await,
            ok()
        );
        assert_eq!(
            run(&mut s, redis::cmd("GET").arg("k")).await,
            bulk("v\r\n1")
        );
        let typed: String = within(5, "typed GET", s.get("k")).await.expect("GET");
        assert_eq!(typed, "v\r\n1");
        assert_eq!(
            text(&run(&mut s, redis::cmd("CLIENT").arg("GETNAME")).await),
            format!("wire-{resp3}")
        );
        // RESP3 shows itself in the reply types: HGETALL is a map.
        run(&mut s, redis::cmd("HSET").arg("h").arg("f").arg("1")).await;
        let all = run(&mut s, redis::cmd("HGETALL").arg("h")).await;
        if resp3 {
            assert_eq!(all, Value::Map(vec![(bulk("f"), bulk("1"))]));
        } else {
            assert_eq!(all, Value::Array(vec![bulk("f"), bulk("1")]));
        }
        // An error reply is the caller's error, and the connection goes on.
        let e = refused(&mut s, redis::cmd("INCR").arg("k")).await;
        assert_eq!(e.code(), Some("ERR"), "{e}");
        within(5, "ping after an error reply", s.ping())
            .await
            .expect("ping");
        assert!(s.is_clean());
        assert_eq!(s.db(), 0);
    }
}

#[tokio::test]
async fn acl_user_authenticates_in_resp2_and_resp3() {
    let Some(redis) = RedisServer::start_with(
        RedisOptions::new()
            .password(PASSWORD)
            .acl_user("app", APP_PASSWORD),
    )
    .await
    else {
        return;
    };
    for resp3 in [false, true] {
        let cfg = RedisConfig::new()
            .username("app")
            .password(APP_PASSWORD)
            .resp3(resp3);
        let mut s = session(&redis, &cfg).await;
        let whoami: String = within(5, "ACL WHOAMI", s.acl_whoami())
            .await
            .expect("ACL WHOAMI");
        assert_eq!(whoami, "app");
        within(5, "ping", s.ping()).await.expect("ping");
        assert!(s.is_clean());
    }
    // The default user still works with requirepass, through HELLO too.
    let mut s = session(&redis, &RedisConfig::new().password(PASSWORD).resp3(true)).await;
    assert_eq!(
        text(&run(&mut s, redis::cmd("ACL").arg("WHOAMI")).await),
        "default"
    );
}

#[tokio::test]
async fn wrong_password_is_the_servers_error_without_the_password() {
    let Some(redis) = RedisServer::start_with(
        RedisOptions::new()
            .password(PASSWORD)
            .acl_user("app", APP_PASSWORD),
    )
    .await
    else {
        return;
    };
    let wrong = "not-the-Pw-4242";
    for cfg in [
        RedisConfig::new().password(wrong),
        RedisConfig::new().password(wrong).resp3(true),
        RedisConfig::new().username("app").password(wrong),
        RedisConfig::new()
            .username("app")
            .password(wrong)
            .resp3(true),
        RedisConfig::new().username("app").password(wrong).db(3),
    ] {
        let e = setup_err(&redis, &cfg).await;
        // The server's error: its code and its words.
        assert!(!e.is_io_error(), "{cfg:?}: {e}");
        let code = e.code().unwrap_or_else(|| panic!("{cfg:?}: no code: {e}"));
        let detail = e
            .detail()
            .unwrap_or_else(|| panic!("{cfg:?}: no detail: {e}"));
        assert!(
            code == "WRONGPASS" || (code == "ERR" && detail.contains("invalid password")),
            "{cfg:?}: {code} {detail}"
        );
        let shown = e.to_string();
        assert!(shown.contains(code), "{e}");
        assert!(shown.contains(detail.trim_end_matches('.')), "{e}");
        assert_no_secret(&e, wrong);
        assert_no_secret(&e, PASSWORD);
    }
}

#[tokio::test]
async fn select_in_setup_and_user_select_tracking() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    for resp3 in [false, true] {
        let mut s = session(&redis, &RedisConfig::new().db(5).resp3(resp3)).await;
        assert_eq!(s.db(), 5);
        assert!(s.is_clean());
        let info = text(&run(&mut s, redis::cmd("CLIENT").arg("INFO")).await);
        assert!(info.contains(" db=5 "), "{info}");

        assert_eq!(run(&mut s, redis::cmd("SELECT").arg(3)).await, ok());
        assert_eq!(s.db(), 3);
        assert!(!s.is_clean(), "a user SELECT leaves the setup db");
        // A refused SELECT changes nothing.
        refused(&mut s, redis::cmd("SELECT").arg(99999)).await;
        assert_eq!(s.db(), 3);
        assert_eq!(run(&mut s, redis::cmd("SELECT").arg(5)).await, ok());
        assert!(s.is_clean());

        // A SELECT inside MULTI applies at EXEC.
        assert_eq!(run(&mut s, &redis::cmd("MULTI")).await, ok());
        assert_eq!(
            run(&mut s, redis::cmd("SELECT").arg(2)).await,
            Value::SimpleString("QUEUED".into())
        );
        assert_eq!(s.db(), 5);
        assert_eq!(
            run(&mut s, &redis::cmd("EXEC")).await,
            Value::Array(vec![Value::Okay])
        );
        assert_eq!(s.db(), 2);
        assert!(!s.is_clean());
        let info = text(&run(&mut s, redis::cmd("CLIENT").arg("INFO")).await);
        assert!(info.contains(" db=2 "), "{info}");

        // The same through a typed transaction.
        let () = within(
            5,
            "atomic SELECT",
            redis::pipe()
                .atomic()
                .cmd("SELECT")
                .arg(5)
                .ignore()
                .query_async(&mut s),
        )
        .await
        .expect("atomic SELECT");
        assert_eq!(s.db(), 5);
        assert!(s.is_clean());
    }
}

#[tokio::test]
async fn multi_exec_and_discard_tracking() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let mut s = session(&redis, &RedisConfig::new()).await;
    assert_eq!(run(&mut s, &redis::cmd("MULTI")).await, ok());
    assert!(!s.is_clean(), "open MULTI");
    assert_eq!(
        run(&mut s, redis::cmd("INCR").arg("n")).await,
        Value::SimpleString("QUEUED".into())
    );
    assert_eq!(
        run(&mut s, &redis::cmd("EXEC")).await,
        Value::Array(vec![Value::Int(1)])
    );
    assert!(s.is_clean(), "after EXEC");

    assert_eq!(run(&mut s, &redis::cmd("MULTI")).await, ok());
    // A nested MULTI is refused and changes nothing.
    refused(&mut s, &redis::cmd("MULTI")).await;
    assert!(!s.is_clean());
    assert_eq!(run(&mut s, &redis::cmd("DISCARD")).await, ok());
    assert!(s.is_clean(), "after DISCARD");

    // EXEC without MULTI is an error reply; still clean.
    refused(&mut s, &redis::cmd("EXEC")).await;
    assert!(s.is_clean());

    // A typed transaction (MULTI, the commands, EXEC in one write) leaves it clean.
    let (n,): (i64,) = within(
        5,
        "atomic INCR",
        redis::pipe().atomic().incr("n", 1).query_async(&mut s),
    )
    .await
    .expect("atomic INCR");
    assert_eq!(n, 2);
    assert!(s.is_clean());

    // A refused EXEC or DISCARD (no MULTI open) ends no WATCH: the server still watches the
    // key, as a change to it shows by aborting the next transaction ...
    let mut adm = redis.admin().await;
    assert_eq!(run(&mut s, redis::cmd("WATCH").arg("w")).await, ok());
    refused(&mut s, &redis::cmd("EXEC")).await;
    refused(&mut s, &redis::cmd("DISCARD")).await;
    assert_eq!(admin_run(&mut adm, &[b"SET", b"w", b"changed"]).await, ok());
    assert_eq!(run(&mut s, &redis::cmd("MULTI")).await, ok());
    run(&mut s, redis::cmd("INCR").arg("n")).await;
    assert_eq!(
        run(&mut s, &redis::cmd("EXEC")).await,
        Value::Nil,
        "the WATCH outlived the refused EXEC and DISCARD"
    );
    assert!(s.is_clean(), "a real EXEC ends the WATCH");
    // ... so the connection is not clean in between.
    assert_eq!(run(&mut s, redis::cmd("WATCH").arg("w")).await, ok());
    assert!(!s.is_clean(), "watching");
    refused(&mut s, &redis::cmd("EXEC")).await;
    assert!(!s.is_clean(), "still watching after a refused EXEC");
    refused(&mut s, &redis::cmd("DISCARD")).await;
    assert!(!s.is_clean(), "still watching after a refused DISCARD");
    assert_eq!(run(&mut s, &redis::cmd("UNWATCH")).await, ok());
    assert!(s.is_clean());
}

/// A call stopped after its commands left owes their replies; the next call reads and drops
/// them first (never returns one of them), and the state they carry (MULTI … EXEC) is
/// followed as they are read. A write pause at the server holds the replies back, so the
/// call is stopped before they can arrive.
#[tokio::test]
async fn a_call_stopped_early_owes_replies_and_the_next_call_drops_them() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let mut adm = redis.admin().await;
    let mut s = session(&redis, &RedisConfig::new().resp3(true)).await;
    let pause = [b"CLIENT".as_slice(), b"PAUSE", b"10000", b"WRITE"];

    assert_eq!(admin_run(&mut adm, &pause).await, ok());
    let mut pipe = redis::pipe();
    pipe.incr("p", 1).incr("p", 1).incr("p", 1);
    stop_early(pipe.query_async::<Vec<i64>>(&mut s)).await;
    assert_eq!(s.owed(), 3);
    assert!(!s.is_clean());
    assert_eq!(admin_run(&mut adm, &[b"CLIENT", b"UNPAUSE"]).await, ok());
    let n: i64 = within(5, "INCR after the stopped pipeline", s.incr("p", 1))
        .await
        .expect("INCR");
    assert_eq!(n, 4, "its own reply, not one of the three owed");
    assert_eq!(s.owed(), 0);
    assert!(s.is_clean());

    // MULTI … EXEC stopped early: MULTI's reply may come, the INCR is held.
    assert_eq!(admin_run(&mut adm, &pause).await, ok());
    let mut pipe = redis::pipe();
    pipe.atomic().incr("p", 1);
    stop_early(pipe.query_async::<(i64,)>(&mut s)).await;
    assert!((2..=3).contains(&s.owed()), "{} owed", s.owed());
    assert!(!s.is_clean());
    assert_eq!(admin_run(&mut adm, &[b"CLIENT", b"UNPAUSE"]).await, ok());
    within(5, "ping after the stopped transaction", s.ping())
        .await
        .expect("ping: its own reply");
    assert_eq!(s.owed(), 0);
    assert!(s.is_clean(), "EXEC was read: no MULTI left open");
    assert_eq!(run(&mut s, redis::cmd("GET").arg("p")).await, bulk("5"));

    // Read in full, a transaction leaves nothing behind.
    let (n,): (i64,) = within(
        5,
        "atomic INCR",
        redis::pipe().atomic().incr("p", 1).query_async(&mut s),
    )
    .await
    .expect("atomic INCR");
    assert_eq!(n, 6);
    assert_eq!(s.owed(), 0);
    assert!(s.is_clean());
}

#[tokio::test]
async fn tracking_invalidation_on_an_idle_connection_is_benign() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    // Tracking as part of the setup: the connection as set up has it.
    let cfg = RedisConfig::new()
        .resp3(true)
        .on_connect(&["CLIENT", "TRACKING", "on"]);
    let mut s = session(&redis, &cfg).await;
    assert_eq!(
        run(&mut s, redis::cmd("GET").arg("tracked")).await,
        Value::Nil
    );
    assert!(s.is_clean());

    let mut adm = redis.admin().await;
    assert_eq!(admin_run(&mut adm, &[b"SET", b"tracked", b"1"]).await, ok());

    // The push arrives while the connection is idle; the next call reads it first, queues
    // it, and gets its own reply.
    bytes_waiting(s.get_ref(), "the invalidation push").await;
    within(5, "ping after the push", s.ping())
        .await
        .expect("ping");
    assert_eq!(s.take_pushes(), vec![invalidation("tracked")]);
    assert!(s.is_clean(), "pushes do not make a connection unclean");
    within(5, "ping after the push", s.ping())
        .await
        .expect("ping");
    assert!(s.take_pushes().is_empty());

    // A push that arrives before a reply is queued, and the reply still reaches its caller
    // (a typed one).
    assert_eq!(
        run(&mut s, redis::cmd("GET").arg("tracked")).await,
        bulk("1")
    );
    assert_eq!(admin_run(&mut adm, &[b"SET", b"tracked", b"2"]).await, ok());
    bytes_waiting(s.get_ref(), "the second push").await;
    let v: String = within(5, "GET with a push in front", s.get("tracked"))
        .await
        .expect("GET");
    assert_eq!(v, "2");
    assert_eq!(s.take_pushes(), vec![invalidation("tracked")]);
    assert!(s.is_clean());
}

#[tokio::test]
async fn client_kill_makes_the_next_call_fail_as_dropped() {
    let Some(redis) = RedisServer::start_with(RedisOptions::new().password(PASSWORD)).await else {
        return;
    };
    for resp3 in [false, true] {
        let mut s = session(&redis, &RedisConfig::new().password(PASSWORD).resp3(resp3)).await;
        let id = client_id(&mut s).await.to_string();
        let killed = redis
            .admin_cmd(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()])
            .await;
        assert_eq!(killed, Value::Int(1), "CLIENT KILL ID {id}");
        closed_by_peer(s.get_ref(), "the killed connection's FIN").await;
        // Nothing was read yet: the close shows on the next call (a pool's idle watch reads
        // it earlier, see tests/pool.rs).
        assert!(s.is_clean());
        assert_dead(&mut s).await;
    }
}

#[tokio::test]
async fn restart_serves_again_on_the_same_port() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let addr = redis.addr();
    let mut s = session(&redis, &RedisConfig::new()).await;
    within(5, "ping", s.ping()).await.expect("ping");
    redis.restart().await;
    assert_eq!(redis.addr(), addr);
    // The old connection died with the old process.
    closed_by_peer(s.get_ref(), "EOF from the killed server").await;
    assert_dead(&mut s).await;
    let mut s = session(&redis, &RedisConfig::new()).await;
    within(5, "ping after restart", s.ping())
        .await
        .expect("ping");
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_setup_ping_and_kill() {
    let Some(redis) = RedisServer::start_with(
        RedisOptions::new()
            .tls()
            .password(PASSWORD)
            .acl_user("app", APP_PASSWORD),
    )
    .await
    else {
        return;
    };
    // The plain port is off: only TLS serves.
    for cfg in [
        RedisConfig::new().password(PASSWORD),
        RedisConfig::new()
            .username("app")
            .password(APP_PASSWORD)
            .resp3(true)
            .db(4),
    ] {
        let tls = within(5, "tls connect", redis.certs().connect(redis.addr()))
            .await
            .expect("tls handshake with redis-server");
        let mut s = within(5, "setup over tls", RedisConnection::setup(tls, &cfg))
            .await
            .unwrap_or_else(|e| panic!("setup over tls with {cfg:?}: {e}"));
        within(5, "ping over tls", s.ping()).await.expect("ping");
        assert_eq!(
            run(&mut s, redis::cmd("SET").arg("t").arg("over tls")).await,
            ok()
        );
        let v: String = within(5, "GET over tls", s.get("t")).await.expect("GET");
        assert_eq!(v, "over tls");
        assert!(s.is_clean());
        assert_eq!(s.db(), i64::from(cfg.db));

        // Whatever arrived by now (TLS 1.3 session tickets) is no reply: the next call
        // gets its own, and nothing is queued.
        let id = client_id(&mut s).await.to_string();
        assert!(s.take_pushes().is_empty());
        assert!(s.is_clean());

        assert_eq!(
            redis
                .admin_cmd(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()])
                .await,
            Value::Int(1)
        );
        closed_by_peer(s.get_ref().get_ref().0, "the killed connection's close").await;
        assert_dead(&mut s).await;
    }
    // A fresh TLS connection with nothing sent yet: the TLS 1.3 session tickets the server
    // sends after the handshake make the socket readable and carry no payload.
    let tls = within(5, "tls connect", redis.certs().connect(redis.addr()))
        .await
        .expect("tls handshake");
    let mut s = within(
        5,
        "setup (no steps)",
        RedisConnection::setup(tls, &RedisConfig::new()),
    )
    .await
    .expect("setup with nothing to send");
    within(
        10,
        "session tickets after the handshake",
        s.get_ref().get_ref().0.readable(),
    )
    .await
    .expect("readable");
    assert!(s.is_clean());
    // Still in step: the next reply is the one to the next command.
    let e = refused(&mut s, &redis::cmd("PING")).await;
    assert_eq!(e.code(), Some("NOAUTH"), "{e}");
    assert!(s.take_pushes().is_empty());
    assert!(s.is_clean());

    // Wrong password over TLS: the server's words, no password.
    let tls = within(5, "tls connect", redis.certs().connect(redis.addr()))
        .await
        .expect("tls handshake");
    let e = within(
        5,
        "setup",
        RedisConnection::setup(tls, &RedisConfig::new().password("nope-123")),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Some("WRONGPASS"), "{e}");
    assert!(e.to_string().contains("WRONGPASS"), "{e}");
    assert_no_secret(&e, "nope-123");
}
