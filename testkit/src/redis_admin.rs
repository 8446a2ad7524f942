//! Admin connections to a test `redis-server`, outside any pool: a [`RedisConnection`] over
//! a boxed stream (plain TCP, or TLS when the server is TLS-only), authenticated as the
//! `default` user when the server has a password. The tests read the server's own view
//! through it (`INFO`, `CLIENT LIST`, `GET`) and act on the server (`CLIENT KILL`, `SET`).
//!
//! Feature `redis` (livepool-redis's tests turn it on).

use livepool_redis::redis::aio::ConnectionLike;
use livepool_redis::redis::{self, Value};
use livepool_redis::{RedisConfig, RedisConnection};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::redis_server::RedisServer;
use crate::within;

/// Any stream an admin session can run over (plain TCP or TLS); `Sync` so that the redis
/// crate's `AsyncCommands` run on the session.
pub trait AdminStream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> AdminStream for T {}

/// An admin session: the crate's connection type over any stream.
pub type AdminSession = RedisConnection<Box<dyn AdminStream>>;

impl RedisServer {
    /// A raw stream to the server: TLS when the server is TLS-only, else plain TCP.
    pub async fn connect_stream(&self) -> Box<dyn AdminStream> {
        if self.is_tls() {
            let s = within(5, "tls connect", self.certs().connect(self.addr()))
                .await
                .expect("tls connect to redis-server");
            return Box::new(s);
        }
        let s = within(5, "connect", TcpStream::connect(self.addr()))
            .await
            .expect("connect to redis-server");
        s.set_nodelay(true).unwrap();
        Box::new(s)
    }

    /// An admin session, authenticated as the `default` user when a password is set.
    pub async fn admin(&self) -> AdminSession {
        let mut cfg = RedisConfig::new().response_timeout(None);
        if let Some(pw) = self.password() {
            cfg = cfg.password(pw);
        }
        let stream = self.connect_stream().await;
        within(5, "admin setup", AdminSession::setup(stream, &cfg))
            .await
            .unwrap_or_else(|e| panic!("admin setup: {e}"))
    }

    /// Runs one command on a fresh admin connection; panics on failure (an error reply is
    /// a value, as with [`admin_run`]).
    pub async fn admin_cmd(&self, args: &[&[u8]]) -> Value {
        let mut adm = self.admin().await;
        admin_run(&mut adm, args).await
    }
}

/// Runs one command on an admin session (bounded 5 s) and returns the server's reply as it
/// came: an error reply is `Value::ServerError`, not a failure. Panics when the command
/// could not be sent or its reply not read.
pub async fn admin_run(adm: &mut AdminSession, args: &[&[u8]]) -> Value {
    let what = format!("admin {:?}", String::from_utf8_lossy(&args.join(&b' ')));
    let mut cmd = redis::Cmd::new();
    for a in args {
        cmd.arg(*a);
    }
    // `req_packed_command` hands back the raw reply, error replies included.
    match within(5, &what, adm.req_packed_command(&cmd)).await {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// A command as it would be typed (for messages): its words, a cursor as `<cursor>`.
pub fn shown(cmd: &redis::Cmd) -> String {
    cmd.args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
            _ => "<cursor>".to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `+OK` reply.
pub fn ok() -> Value {
    Value::Okay
}

/// A bulk string reply.
pub fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

/// Text of a string reply (simple, bulk or verbatim; `+OK` is "OK").
pub fn text(v: &Value) -> String {
    match v {
        Value::Okay => "OK".to_string(),
        Value::SimpleString(s) => s.clone(),
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::VerbatimString { text, .. } => text.clone(),
        other => panic!("expected a string reply, got {other:?}"),
    }
}
