//! The redis crate's typed API end to end on pooled connections, against a real
//! `redis-server` the tests start: commands and `FromRedisValue` conversions, hashes, a SCAN
//! iterator, pipelines (plain and atomic), a Lua script, server errors as `RedisError`,
//! AUTH with an ACL user and RESP3, and a blocking command that takes as long as its own
//! timeout says.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use livepool_redis::redis::{self, AsyncCommands, AsyncIter, Value};
use livepool_redis::{Pool, Redis, RedisConfig};
use livepool_testkit::redis_server::{RedisOptions, RedisServer};
use livepool_testkit::within;

fn pool(redis: &RedisServer, cfg: RedisConfig) -> Pool {
    livepool::Pool::builder(redis.addr())
        .protocol(Redis::new(cfg))
        .max_size(4)
        .connect_timeout(Some(Duration::from_secs(5)))
        .wait_timeout(Some(Duration::from_secs(10)))
        .build()
        .expect("build the pool")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pipelines_scripts_and_errors_are_typed() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let pool = pool(&server, RedisConfig::new());
    let mut conn = within(5, "get", pool.get()).await.expect("a connection");

    // Strings, integers, options.
    let _: () = conn.set("greeting", "hello").await.unwrap();
    let greeting: String = conn.get("greeting").await.unwrap();
    assert_eq!(greeting, "hello");
    let missing: Option<String> = conn.get("no-such-key").await.unwrap();
    assert_eq!(missing, None);
    let n: i64 = conn.incr("counter", 5).await.unwrap();
    assert_eq!(n, 5);

    // Hashes into a map.
    let _: () = conn
        .hset_multiple("h", &[("a", 1), ("b", 2), ("c", 3)])
        .await
        .unwrap();
    let h: BTreeMap<String, i64> = conn.hgetall("h").await.unwrap();
    assert_eq!(
        h,
        BTreeMap::from([("a".into(), 1), ("b".into(), 2), ("c".into(), 3)])
    );

    // Binary values round-trip.
    let blob: Vec<u8> = (0..=255u8).collect();
    let _: () = conn.set("blob", &blob).await.unwrap();
    let back: Vec<u8> = conn.get("blob").await.unwrap();
    assert_eq!(back, blob);

    // A SCAN iterator over many keys (several cursor rounds).
    for i in 0..300 {
        let _: () = conn.set(format!("scan:{i}"), i).await.unwrap();
    }
    let mut seen = HashSet::new();
    {
        let mut iter: AsyncIter<String> = conn.scan_match("scan:*").await.unwrap();
        while let Some(key) = iter.next_item().await {
            seen.insert(key.unwrap());
        }
    }
    assert_eq!(seen.len(), 300);

    // A plain pipeline and an atomic one.
    let (a, b): (i64, i64) = redis::pipe()
        .incr("p1", 1)
        .incr("p2", 2)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((a, b), (1, 2));
    let (x, y): (i64, String) = redis::pipe()
        .atomic()
        .incr("p1", 10)
        .set("p3", "z")
        .ignore()
        .get("p3")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((x, y), (11, "z".to_string()));
    assert!(conn.is_clean(), "an atomic pipeline leaves no MULTI open");

    // A Lua script (EVALSHA, then EVAL when the server does not know it yet).
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1]) * 2");
    let doubled: i64 = script
        .key("script-counter")
        .arg(21)
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(doubled, 42);

    // A server error is an Err with the server's code, and the connection stays usable.
    let err = conn.incr::<_, _, i64>("greeting", 1).await.unwrap_err();
    assert_eq!(err.code(), Some("ERR"), "{err}");
    let err = redis::cmd("NO-SUCH-COMMAND")
        .query_async::<Value>(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown command"), "{err}");
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    assert!(conn.is_clean());
    drop(conn);

    // Back in the pool and reused: one connection served all of it.
    let mut again = within(5, "get", pool.get()).await.unwrap();
    let n: i64 = again.get("counter").await.unwrap();
    assert_eq!(n, 5);
    assert_eq!(pool.statistics().created, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_with_resp3_and_a_database() {
    let Some(server) =
        RedisServer::start_with(RedisOptions::new().acl_user("app", "app-Pw-7731")).await
    else {
        return;
    };
    let cfg = RedisConfig::new()
        .username("app")
        .password("app-Pw-7731")
        .resp3(true)
        .db(3)
        .client_name("typed-test");
    let pool = pool(&server, cfg);
    let mut conn = within(5, "get", pool.get()).await.expect("a connection");
    let who: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(who, "app");
    let name: String = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(name, "typed-test");
    // RESP3: HGETALL is a map on the wire, converted all the same.
    let _: () = conn.hset("h3", "k", "v").await.unwrap();
    let raw: Value = redis::cmd("HGETALL")
        .arg("h3")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        matches!(raw, Value::Map(_)),
        "RESP3 map expected, got {raw:?}"
    );
    let info: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        info.contains(" db=3 ") && info.contains(" resp=3"),
        "{info}"
    );
    assert_eq!(conn.db(), 3);
    assert!(conn.is_clean());
}

/// A blocking command takes as long as its own timeout says: no response timeout of the
/// pool's cuts a 1 s `BLPOP` short (the redis crate's own connections give up after 500 ms
/// by default), and its nil reply is an ordinary `None`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_command_honours_its_own_timeout() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let pool = pool(&server, RedisConfig::new());
    let mut conn = within(5, "get", pool.get()).await.expect("a connection");
    let popped: Option<(String, String)> = within(10, "BLPOP 1 s", conn.blpop("empty", 1.0))
        .await
        .expect("BLPOP timing out is a nil reply, not an error");
    assert_eq!(popped, None);
    // And a value pushed while it blocks is delivered.
    let mut other = within(5, "second conn", pool.get()).await.unwrap();
    let blocked = tokio::spawn(async move {
        let got: Option<(String, String)> = conn.blpop("jobs", 10.0).await.unwrap();
        got
    });
    // Push until the blocked call has its value (the push may precede the BLPOP: then the
    // BLPOP takes it at once; either way exactly one value reaches it).
    let _: () = other.rpush("jobs", "job-1").await.unwrap();
    let got = within(10, "BLPOP delivered", blocked).await.unwrap();
    assert_eq!(got, Some(("jobs".to_string(), "job-1".to_string())));
}
