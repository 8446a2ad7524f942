//! `livepool::redis::RedisSession` against a real `redis-server` (started by the tests on
//! free loopback ports; skipped when it is not installed, unless `LIVEPOOL_REQUIRE_ALL=1`):
//! authentication (password, ACL user, wrong password), database selection, the
//! `is_clean` tracking (SELECT, MULTI/EXEC, pipelining), RESP3 push frames on an idle
//! session, a killed connection, and TLS. Real time throughout; every wait is bounded.
#![cfg(feature = "redis")]

mod support;

use futures_util::FutureExt;
use livepool::redis::{IdleOutcome, RedisConfig, RedisError, RedisSession, Value};
use support::redis_server::{RedisOptions, RedisServer, admin_run, bulk, ok, text};
use support::within;
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

async fn session(redis: &RedisServer, cfg: &RedisConfig) -> RedisSession<TcpStream> {
    let stream = tcp(redis).await;
    match within(5, "setup", RedisSession::setup(stream, cfg)).await {
        Ok(s) => s,
        Err(e) => panic!("setup with {cfg:?}: {e}"),
    }
}

async fn setup_err(redis: &RedisServer, cfg: &RedisConfig) -> RedisError {
    let stream = tcp(redis).await;
    match within(5, "setup", RedisSession::setup(stream, cfg)).await {
        Ok(s) => panic!("setup with {cfg:?} succeeded: {s:?}"),
        Err(e) => e,
    }
}

async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    s: &mut RedisSession<S>,
    args: &[&[u8]],
) -> Value {
    let what = format!("reply to {:?}", String::from_utf8_lossy(&args.join(&b' ')));
    match within(5, &what, s.cmd(args)).await {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Redis' id for this session's connection.
async fn client_id<S: AsyncRead + AsyncWrite + Unpin + Send>(s: &mut RedisSession<S>) -> i64 {
    match run(s, &[b"CLIENT", b"ID"]).await {
        Value::Int(id) => id,
        other => panic!("CLIENT ID: {other:?}"),
    }
}

/// Waits (bounded, 10 s overall) for the socket to become readable and hands the bytes to
/// `idle_bytes` until it reports something other than a benign wake-up with nothing new
/// (tokio's readiness may still be set from an earlier read); `done` says when to stop.
async fn idle_until(
    s: &mut RedisSession<TcpStream>,
    what: &str,
    mut done: impl FnMut(&IdleOutcome, &mut RedisSession<TcpStream>) -> bool,
) -> IdleOutcome {
    within(10, what, async {
        loop {
            s.get_ref().readable().await.expect("readable");
            let out = within(5, "idle_bytes", s.idle_bytes()).await;
            if done(&out, s) {
                return out;
            }
        }
    })
    .await
}

fn assert_no_secret(e: &RedisError, secret: &str) {
    let shown = format!("{e} / {e:?}");
    assert!(!shown.contains(secret), "error shows the password: {shown}");
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_with_requirepass_resp2_and_resp3() {
    let Some(redis) = RedisServer::start_with(RedisOptions::new().password(PASSWORD)).await else {
        return;
    };
    // Without credentials the server refuses commands, but the session stays usable.
    let mut anon = session(&redis, &RedisConfig::new()).await;
    match run(&mut anon, &[b"GET", b"k"]).await {
        Value::Error(e) => assert!(e.starts_with("NOAUTH"), "{e}"),
        other => panic!("GET without AUTH: {other:?}"),
    }
    assert!(anon.is_clean());

    for resp3 in [false, true] {
        let cfg = RedisConfig::new()
            .password(PASSWORD)
            .resp3(resp3)
            .client_name(format!("wire-{resp3}"));
        let mut s = session(&redis, &cfg).await;
        within(5, "ping", s.ping()).await.expect("ping");
        assert_eq!(run(&mut s, &[b"SET", b"k", b"v\r\n1"]).await, ok());
        assert_eq!(run(&mut s, &[b"GET", b"k"]).await, bulk("v\r\n1"));
        assert_eq!(
            text(&run(&mut s, &[b"CLIENT", b"GETNAME"]).await),
            format!("wire-{resp3}")
        );
        // RESP3 shows itself in the reply types: HGETALL is a map.
        run(&mut s, &[b"HSET", b"h", b"f", b"1"]).await;
        let all = run(&mut s, &[b"HGETALL", b"h"]).await;
        if resp3 {
            assert_eq!(all, Value::Map(vec![(bulk("f"), bulk("1"))]));
        } else {
            assert_eq!(all, Value::Array(Some(vec![bulk("f"), bulk("1")])));
        }
        // An error reply is a value, and the session goes on.
        assert!(run(&mut s, &[b"INCR", b"k"]).await.is_error());
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
        assert_eq!(text(&run(&mut s, &[b"ACL", b"WHOAMI"]).await), "app");
        within(5, "ping", s.ping()).await.expect("ping");
        assert!(s.is_clean());
    }
    // The default user still works with requirepass, through HELLO too.
    let mut s = session(&redis, &RedisConfig::new().password(PASSWORD).resp3(true)).await;
    assert_eq!(text(&run(&mut s, &[b"ACL", b"WHOAMI"]).await), "default");
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
        assert!(e.is_server(), "{cfg:?}: {e}");
        let msg = e.server_message().expect("server message");
        assert!(
            msg.contains("WRONGPASS") || msg.contains("invalid password"),
            "{cfg:?}: {msg}"
        );
        assert!(e.to_string().contains(msg.trim_end_matches('.')), "{e}");
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
        let info = text(&run(&mut s, &[b"CLIENT", b"INFO"]).await);
        assert!(info.contains(" db=5 "), "{info}");

        assert_eq!(run(&mut s, &[b"SELECT", b"3"]).await, ok());
        assert_eq!(s.db(), 3);
        assert!(!s.is_clean(), "a user SELECT leaves the setup db");
        // A refused SELECT changes nothing.
        assert!(run(&mut s, &[b"SELECT", b"99999"]).await.is_error());
        assert_eq!(s.db(), 3);
        assert_eq!(run(&mut s, &[b"SELECT", b"5"]).await, ok());
        assert!(s.is_clean());

        // A SELECT inside MULTI applies at EXEC.
        assert_eq!(run(&mut s, &[b"MULTI"]).await, ok());
        assert_eq!(
            run(&mut s, &[b"SELECT", b"2"]).await,
            Value::Simple("QUEUED".into())
        );
        assert_eq!(s.db(), 5);
        run(&mut s, &[b"EXEC"]).await;
        assert_eq!(s.db(), 2);
        assert!(!s.is_clean());
    }
}

#[tokio::test]
async fn multi_exec_and_discard_tracking() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let mut s = session(&redis, &RedisConfig::new()).await;
    assert_eq!(run(&mut s, &[b"MULTI"]).await, ok());
    assert!(!s.is_clean(), "open MULTI");
    assert_eq!(
        run(&mut s, &[b"INCR", b"n"]).await,
        Value::Simple("QUEUED".into())
    );
    assert_eq!(
        run(&mut s, &[b"EXEC"]).await,
        Value::Array(Some(vec![Value::Int(1)]))
    );
    assert!(s.is_clean(), "after EXEC");

    assert_eq!(run(&mut s, &[b"MULTI"]).await, ok());
    // A nested MULTI is refused and changes nothing.
    assert!(run(&mut s, &[b"MULTI"]).await.is_error());
    assert!(!s.is_clean());
    assert_eq!(run(&mut s, &[b"DISCARD"]).await, ok());
    assert!(s.is_clean(), "after DISCARD");

    // EXEC without MULTI is an error reply; still clean.
    assert!(run(&mut s, &[b"EXEC"]).await.is_error());
    assert!(s.is_clean());
}

#[tokio::test]
async fn pipelining_owes_replies() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let mut s = session(&redis, &RedisConfig::new().resp3(true)).await;
    for _ in 0..3 {
        within(5, "send", s.send(&[b"INCR", b"p"]))
            .await
            .expect("send");
    }
    assert_eq!(s.owed(), 3);
    assert_eq!(within(5, "recv", s.recv()).await.unwrap(), Value::Int(1));
    assert_eq!(s.owed(), 2);
    assert!(!s.is_clean());
    // cmd refuses to run while replies are owed (it would read the wrong one).
    let e = within(5, "cmd", s.cmd(&[b"PING"])).await.unwrap_err();
    assert!(e.is_usage(), "{e}");
    assert_eq!(within(5, "recv", s.recv()).await.unwrap(), Value::Int(2));
    assert_eq!(within(5, "recv", s.recv()).await.unwrap(), Value::Int(3));
    assert_eq!(s.owed(), 0);
    assert!(s.is_clean());
    let e = within(5, "recv", s.recv()).await.unwrap_err();
    assert!(e.is_usage(), "{e}");

    // MULTI … EXEC pipelined in one go: tracked by the replies as they are read.
    for args in [&[b"MULTI".as_slice()][..], &[b"INCR", b"p"], &[b"EXEC"]] {
        within(5, "send", s.send(args)).await.expect("send");
    }
    assert_eq!(within(5, "recv", s.recv()).await.unwrap(), ok());
    assert!(!s.is_clean());
    within(5, "recv", s.recv()).await.unwrap();
    assert_eq!(
        within(5, "recv", s.recv()).await.unwrap(),
        Value::Array(Some(vec![Value::Int(4)]))
    );
    assert!(s.is_clean());
}

#[tokio::test]
async fn tracking_invalidation_on_an_idle_session_is_benign() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    // Tracking as part of the setup: the session as set up has it.
    let cfg = RedisConfig::new()
        .resp3(true)
        .on_connect(&["CLIENT", "TRACKING", "on"]);
    let mut s = session(&redis, &cfg).await;
    assert_eq!(run(&mut s, &[b"GET", b"tracked"]).await, Value::Null);
    assert!(s.is_clean());

    let mut adm = redis.admin().await;
    assert_eq!(admin_run(&mut adm, &[b"SET", b"tracked", b"1"]).await, ok());

    let mut pushes = Vec::new();
    let out = idle_until(&mut s, "the invalidation push", |out, s| {
        pushes.extend(s.take_pushes());
        !out.is_benign() || !pushes.is_empty()
    })
    .await;
    assert_eq!(out, IdleOutcome::Benign);
    assert_eq!(
        pushes,
        vec![Value::Array(Some(vec![
            bulk("invalidate"),
            Value::Array(Some(vec![bulk("tracked")])),
        ]))]
    );
    assert!(s.is_clean(), "pushes do not make a session unclean");
    within(5, "ping after the push", s.ping())
        .await
        .expect("ping");

    // A push that arrives before a reply is queued, and the reply still reaches its caller.
    assert_eq!(run(&mut s, &[b"GET", b"tracked"]).await, bulk("1"));
    assert_eq!(admin_run(&mut adm, &[b"SET", b"tracked", b"2"]).await, ok());
    within(10, "readable after the second SET", s.get_ref().readable())
        .await
        .expect("readable");
    within(5, "ping with a push in front", s.ping())
        .await
        .expect("ping");
    assert_eq!(s.take_pushes().len(), 1);
    assert!(s.is_clean());
}

#[tokio::test]
async fn client_kill_makes_idle_bytes_closed() {
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
        let out = idle_until(&mut s, "the killed connection's EOF", |out, _| {
            !out.is_benign()
        })
        .await;
        assert_eq!(out, IdleOutcome::Closed);
        assert!(!s.is_clean());
        let e = within(5, "cmd on a closed session", s.cmd(&[b"PING"]))
            .await
            .unwrap_err();
        assert!(e.is_usage() || e.is_closed() || e.is_io(), "{e}");
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
    let out = idle_until(&mut s, "EOF from the killed server", |out, _| {
        !out.is_benign()
    })
    .await;
    assert_eq!(out, IdleOutcome::Closed);
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
        let mut s = within(5, "setup over tls", RedisSession::setup(tls, &cfg))
            .await
            .unwrap_or_else(|e| panic!("setup over tls with {cfg:?}: {e}"));
        within(5, "ping over tls", s.ping()).await.expect("ping");
        assert_eq!(run(&mut s, &[b"SET", b"t", b"over tls"]).await, ok());
        assert_eq!(run(&mut s, &[b"GET", b"t"]).await, bulk("over tls"));
        assert!(s.is_clean());
        assert_eq!(s.db(), cfg.database());

        // Whatever arrived by now (TLS 1.3 session tickets) is benign on an idle session.
        let bytes_waiting = matches!(
            s.get_ref().get_ref().0.readable().now_or_never(),
            Some(Ok(()))
        );
        if bytes_waiting {
            assert_eq!(
                within(5, "idle_bytes", s.idle_bytes()).await,
                IdleOutcome::Benign
            );
        }

        let id = client_id(&mut s).await.to_string();
        assert_eq!(
            redis
                .admin_cmd(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()])
                .await,
            Value::Int(1)
        );
        let out = within(10, "EOF over tls", async {
            loop {
                s.get_ref().get_ref().0.readable().await.expect("readable");
                let out = within(5, "idle_bytes", s.idle_bytes()).await;
                if !out.is_benign() {
                    return out;
                }
            }
        })
        .await;
        assert_eq!(out, IdleOutcome::Closed);
    }
    // A fresh TLS connection with nothing sent yet: the TLS 1.3 session tickets the server
    // sends after the handshake make the socket readable, carry no payload, and are benign.
    let tls = within(5, "tls connect", redis.certs().connect(redis.addr()))
        .await
        .expect("tls handshake");
    let mut s = within(
        5,
        "setup (no steps)",
        RedisSession::setup(tls, &RedisConfig::new()),
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
    assert_eq!(
        within(5, "idle_bytes", s.idle_bytes()).await,
        IdleOutcome::Benign
    );
    assert!(s.take_pushes().is_empty());
    assert!(s.is_clean());
    // Still in step: the next reply is the one to the next command.
    match run(&mut s, &[b"PING"]).await {
        Value::Error(e) => assert!(e.starts_with("NOAUTH"), "{e}"),
        other => panic!("PING without AUTH: {other:?}"),
    }

    // Wrong password over TLS: the server's words, no password.
    let tls = within(5, "tls connect", redis.certs().connect(redis.addr()))
        .await
        .expect("tls handshake");
    let e = within(
        5,
        "setup",
        RedisSession::setup(tls, &RedisConfig::new().password("nope-123")),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("WRONGPASS"), "{e}");
    assert_no_secret(&e, "nope-123");
}
