//! The pub/sub [`Subscriber`] against a real `redis-server` the tests start, in RESP2 and
//! RESP3: messages on channels and patterns, pings answered in subscribed mode, the pool's
//! other members never receiving a message (and the subscriber's connection never going back
//! to the pool), unsubscribing, messages that arrive while a subscription waits for its
//! confirmation, a refused subscription, cancelled calls, and the three ways a connection
//! ends — a server restart, `CLIENT KILL`, a ping left unanswered (`DEBUG SLEEP`) — each
//! followed by `Reconnected` and messages on every channel and pattern again. Also as a
//! `Stream`.
//!
//! Messages are published by an unpooled admin connection; `PUBLISH`'s count of receivers
//! says what the server did, `CLIENT LIST TYPE pubsub` which connection the subscriber holds.
//! Every wait is bounded; after a `Reconnected` the subscriptions are confirmed, so a message
//! published then must arrive (no publish-and-hope).

use std::collections::HashSet;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use livepool_redis::redis::{self, FromRedisValue};
use livepool_redis::{Pool, Redis, RedisConfig, Subscriber, SubscriberError, SubscriberMessage};
use livepool_testkit::redis_server::{RedisOptions, RedisServer};
use livepool_testkit::{wait_until, within};
use tokio::net::TcpStream;

const MS: Duration = Duration::from_millis(1);

fn config(resp3: bool) -> RedisConfig {
    RedisConfig::new().resp3(resp3)
}

fn pool(server: &RedisServer, cfg: RedisConfig, max_size: usize) -> Pool {
    livepool::Pool::builder(server.addr())
        .protocol(Redis::new(cfg))
        .max_size(max_size)
        .connect_timeout(Some(Duration::from_secs(5)))
        .wait_timeout(Some(Duration::from_secs(10)))
        .build()
        .expect("build the pool")
}

/// An unpooled admin connection (no response timeout: it runs DEBUG SLEEP and waits
/// behind CLIENT PAUSE).
type Admin = livepool_testkit::redis_admin::AdminSession;

/// One command on the admin connection that must succeed within 10 s.
async fn must<T: FromRedisValue>(admin: &mut Admin, cmd: &redis::Cmd) -> T {
    match within(10, "an admin command", cmd.query_async(admin)).await {
        Ok(v) => v,
        Err(e) => panic!("admin command failed: {e}"),
    }
}

/// `PUBLISH`: how many subscriptions received it.
async fn publish(admin: &mut Admin, channel: &str, payload: impl AsRef<[u8]>) -> i64 {
    must(
        admin,
        redis::cmd("PUBLISH").arg(channel).arg(payload.as_ref()),
    )
    .await
}

/// The ids of the server's pub/sub clients (`CLIENT LIST TYPE pubsub`).
async fn pubsub_clients(admin: &mut Admin) -> Vec<i64> {
    let list: String = must(
        admin,
        redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub"),
    )
    .await;
    list.lines()
        .filter_map(|l| field(l, "id"))
        .map(|id| id.parse().expect("a numeric client id"))
        .collect()
}

/// One `name=value` item of a `CLIENT LIST` / `CLIENT INFO` line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// The one pub/sub client (the subscriber's connection); panics unless there is exactly one.
async fn the_subscriber_client(admin: &mut Admin) -> i64 {
    let ids = pubsub_clients(admin).await;
    assert_eq!(ids.len(), 1, "one pub/sub client: {ids:?}");
    ids[0]
}

/// Waits (bounded) until the server has freed every pub/sub client (a subscriber dropped:
/// its connection is closed by the client, then freed by the server).
async fn no_pubsub_client_left(admin: &mut Admin) {
    within(10, "no pub/sub client left", async {
        while !pubsub_clients(admin).await.is_empty() {
            tokio::time::sleep(5 * MS).await;
        }
    })
    .await
}

/// Waits (bounded) until the one pub/sub client is another than `before` (the server may
/// free a connection closed by the client after the new one is set up); its id.
async fn a_new_subscriber_client(admin: &mut Admin, before: i64) -> i64 {
    within(10, "one pub/sub client, a new one", async {
        loop {
            match pubsub_clients(admin).await[..] {
                [id] if id != before => break id,
                _ => tokio::time::sleep(5 * MS).await,
            }
        }
    })
    .await
}

/// A message as (channel, pattern, payload).
type Got = (String, Option<String>, Vec<u8>);

fn got(m: &redis::Msg) -> Got {
    (
        m.get_channel_name().to_owned(),
        m.get_pattern::<Option<String>>().expect("a pattern or nil"),
        m.get_payload_bytes().to_vec(),
    )
}

fn plain(channel: &str, payload: &str) -> Got {
    (channel.into(), None, payload.as_bytes().to_vec())
}

fn matched(channel: &str, pattern: &str, payload: &str) -> Got {
    (
        channel.into(),
        Some(pattern.into()),
        payload.as_bytes().to_vec(),
    )
}

/// The next message (bounded); anything else — a reconnect, an error — fails the test.
async fn next_message(sub: &mut Subscriber) -> Got {
    match within(10, "a message", sub.recv()).await {
        Ok(SubscriberMessage::Message(m)) => got(&m),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Calls `recv` until it reports the reconnect (bounded); errors while the server is away
/// are allowed (the subscriber waits out the pool's breaker itself), a message is not.
async fn reconnected(sub: &mut Subscriber) -> Duration {
    within(30, "the subscriber reconnects", async {
        loop {
            match sub.recv().await {
                Ok(SubscriberMessage::Reconnected { gap }) => break gap,
                Ok(other) => panic!("before the reconnect: {other:?}"),
                Err(SubscriberError::Connect(_)) => {}
                Err(e) => panic!("only connect errors are expected: {e}"),
            }
        }
    })
    .await
}

/// Subscribes to channels `a`, `b` and patterns `p.*`, `q.*`.
async fn subscribe_four(sub: &mut Subscriber) {
    for c in ["a", "b"] {
        within(10, "subscribe", sub.subscribe(c))
            .await
            .expect("subscribe");
    }
    for p in ["p.*", "q.*"] {
        within(10, "psubscribe", sub.psubscribe(p))
            .await
            .expect("psubscribe");
    }
}

/// One message on each of `a`, `b`, `p.*`, `q.*`: each published to exactly one subscription
/// and each received.
async fn all_four_deliver(admin: &mut Admin, sub: &mut Subscriber, tag: &str) {
    let sent = [
        plain("a", tag),
        plain("b", tag),
        matched("p.1", "p.*", tag),
        matched("q.1", "q.*", tag),
    ];
    for (channel, _, payload) in &sent {
        assert_eq!(
            publish(admin, channel, payload).await,
            1,
            "PUBLISH {channel}"
        );
    }
    let mut received = HashSet::new();
    for _ in 0..sent.len() {
        received.insert(next_message(sub).await);
    }
    assert_eq!(received, HashSet::from(sent));
}

async fn messages_on_channels_and_patterns(resp3: bool) {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let mut admin = server.admin().await;
    let mut sub = Subscriber::new(pool(&server, config(resp3), 1));
    within(10, "subscribe", sub.subscribe("news"))
        .await
        .expect("subscribe");
    within(10, "subscribe", sub.subscribe("weird name ✓"))
        .await
        .expect("subscribe");
    within(10, "psubscribe", sub.psubscribe("log.*"))
        .await
        .expect("psubscribe");
    assert_eq!(sub.channels(), ["news", "weird name ✓"]);
    assert_eq!(sub.patterns(), ["log.*"]);
    let client = the_subscriber_client(&mut admin).await;

    assert_eq!(publish(&mut admin, "news", "one").await, 1);
    assert_eq!(next_message(&mut sub).await, plain("news", "one"));
    let binary: Vec<u8> = (0..=255u8).collect();
    assert_eq!(publish(&mut admin, "log.error", &binary).await, 1);
    assert_eq!(
        next_message(&mut sub).await,
        ("log.error".into(), Some("log.*".into()), binary)
    );
    assert_eq!(publish(&mut admin, "weird name ✓", "two").await, 1);
    assert_eq!(next_message(&mut sub).await, plain("weird name ✓", "two"));
    // A channel nobody subscribed to reaches nobody.
    assert_eq!(publish(&mut admin, "other", "not for us").await, 0);

    // Subscribing again is confirmed and changes nothing: one subscription, one message.
    within(10, "subscribe again", sub.subscribe("news"))
        .await
        .expect("subscribe again");
    assert_eq!(sub.channels(), ["news", "weird name ✓"]);
    assert_eq!(publish(&mut admin, "news", "three").await, 1);
    assert_eq!(publish(&mut admin, "log.x", "four").await, 1);
    assert_eq!(next_message(&mut sub).await, plain("news", "three"));
    assert_eq!(
        next_message(&mut sub).await,
        matched("log.x", "log.*", "four")
    );
    // Still the first connection: nothing above cost a reconnect.
    assert_eq!(the_subscriber_client(&mut admin).await, client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_on_channels_and_patterns_resp2() {
    messages_on_channels_and_patterns(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_on_channels_and_patterns_resp3() {
    messages_on_channels_and_patterns(true).await;
}

/// The number of `PING`s the server has run since its start (`INFO commandstats`).
async fn pings_served(admin: &mut Admin) -> u64 {
    let info: String = must(admin, redis::cmd("INFO").arg("commandstats")).await;
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_ping:calls="))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

/// The subscriber pings its connection itself, and the answer in subscribed mode (RESP2: an
/// array `pong`; RESP3: `+PONG`) is a pong, not a message or a reply out of step.
async fn pings_are_answered_in_subscribed_mode(resp3: bool) {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let mut admin = server.admin().await;
    let mut sub =
        Subscriber::new(pool(&server, config(resp3), 1)).ping(10 * MS, Duration::from_secs(5));
    within(10, "subscribe", sub.subscribe("c"))
        .await
        .expect("subscribe");
    let client = the_subscriber_client(&mut admin).await;
    let before = pings_served(&mut admin).await;
    // recv runs (it is what pings) until the server has served five more pings; it returns
    // nothing meanwhile: nothing is published, and a pong taken for anything else would end
    // the connection (a `Reconnected`).
    let mut admin2 = server.admin().await;
    tokio::select! {
        m = sub.recv() => panic!("nothing was published, yet recv returned {m:?}"),
        () = within(10, "five pings from the subscriber", async {
            while pings_served(&mut admin2).await < before + 5 {
                // Polling the server's counter, not waiting for an event.
                tokio::time::sleep(5 * MS).await;
            }
        }) => {}
    }
    let list: String = must(
        &mut admin,
        redis::cmd("CLIENT").arg("LIST").arg("ID").arg(client),
    )
    .await;
    assert!(
        list.contains(" sub=1 "),
        "the subscriber's connection is still subscribed: {list}"
    );
    assert_eq!(
        the_subscriber_client(&mut admin).await,
        client,
        "same connection"
    );
    assert_eq!(publish(&mut admin, "c", "after the pings").await, 1);
    assert_eq!(next_message(&mut sub).await, plain("c", "after the pings"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_in_subscribed_mode_resp2() {
    pings_are_answered_in_subscribed_mode(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_in_subscribed_mode_resp3() {
    pings_are_answered_in_subscribed_mode(true).await;
}

/// The pool's other members never receive a message, and the subscriber's connection is
/// closed when the subscriber is dropped, never handed to another caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_other_members_never_receive_messages() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let mut admin = server.admin().await;
    for resp3 in [false, true] {
        let pool = pool(&server, config(resp3), 3);
        let mut sub = Subscriber::new(pool.clone());
        within(10, "subscribe", sub.subscribe("news"))
            .await
            .expect("subscribe");
        within(10, "psubscribe", sub.psubscribe("n*"))
            .await
            .expect("psubscribe");
        let subscriber_client = the_subscriber_client(&mut admin).await;
        let mut others = Vec::new();
        for _ in 0..2 {
            others.push(within(10, "get", pool.get()).await.expect("get"));
        }
        // The subscriber's connection: once by channel, once by pattern.
        assert_eq!(publish(&mut admin, "news", "hello").await, 2);
        let mut got_both = HashSet::new();
        got_both.insert(next_message(&mut sub).await);
        got_both.insert(next_message(&mut sub).await);
        assert_eq!(
            got_both,
            HashSet::from([plain("news", "hello"), matched("news", "n*", "hello")])
        );
        for conn in &mut others {
            let info: String = within(
                10,
                "CLIENT INFO",
                redis::cmd("CLIENT").arg("INFO").query_async(&mut **conn),
            )
            .await
            .expect("CLIENT INFO");
            assert_eq!(field(&info, "sub"), Some("0"), "{info}");
            assert_eq!(field(&info, "psub"), Some("0"), "{info}");
            assert!(conn.take_pushes().is_empty(), "no push reached a member");
            assert!(conn.is_clean());
        }
        let members: HashSet<u64> = others.iter().map(|c| c.id()).collect();
        drop(others);

        // Dropped: the subscriber's connection is closed, not returned.
        let evicted = pool.statistics().evicted_total();
        drop(sub);
        wait_until(10, "the subscriber's connection closed", || {
            pool.statistics().evicted_total() == evicted + 1
        })
        .await;
        no_pubsub_client_left(&mut admin).await;
        // Every connection the pool hands out now is one of the two members or a new one,
        // none subscribed, none the subscriber's.
        let mut all = Vec::new();
        for _ in 0..3 {
            all.push(within(10, "get", pool.get()).await.expect("get"));
        }
        for conn in &mut all {
            let id: i64 = within(
                10,
                "CLIENT ID",
                redis::cmd("CLIENT").arg("ID").query_async(&mut **conn),
            )
            .await
            .expect("CLIENT ID");
            assert_ne!(
                id, subscriber_client,
                "the subscriber's connection came back"
            );
        }
        let reused = all.iter().filter(|c| members.contains(&c.id())).count();
        assert_eq!(reused, 2, "the two members were kept");
    }
}

async fn unsubscribe_stops_delivery(resp3: bool) {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let mut admin = server.admin().await;
    let mut sub = Subscriber::new(pool(&server, config(resp3), 1));
    subscribe_four(&mut sub).await;
    all_four_deliver(&mut admin, &mut sub, "before").await;

    // Published while subscribed, not yet taken by recv: not returned after unsubscribe.
    assert_eq!(publish(&mut admin, "a", "queued").await, 1);
    assert_eq!(publish(&mut admin, "p.1", "queued").await, 1);
    within(10, "unsubscribe", sub.unsubscribe("a"))
        .await
        .expect("unsubscribe");
    within(10, "punsubscribe", sub.punsubscribe("p.*"))
        .await
        .expect("punsubscribe");
    assert_eq!(sub.channels(), ["b"]);
    assert_eq!(sub.patterns(), ["q.*"]);
    // The server delivers to nobody; what is still subscribed to still arrives.
    assert_eq!(publish(&mut admin, "a", "after").await, 0);
    assert_eq!(publish(&mut admin, "p.1", "after").await, 0);
    assert_eq!(publish(&mut admin, "b", "after").await, 1);
    assert_eq!(publish(&mut admin, "q.1", "after").await, 1);
    assert_eq!(next_message(&mut sub).await, plain("b", "after"));
    assert_eq!(next_message(&mut sub).await, matched("q.1", "q.*", "after"));

    // Unsubscribed from everything, the connection leaves subscribed mode; it still works.
    within(10, "unsubscribe", sub.unsubscribe("b"))
        .await
        .expect("unsubscribe");
    within(10, "punsubscribe", sub.punsubscribe("q.*"))
        .await
        .expect("punsubscribe");
    assert!(pubsub_clients(&mut admin).await.is_empty());
    within(10, "subscribe again", sub.subscribe("b"))
        .await
        .expect("subscribe again");
    assert_eq!(publish(&mut admin, "b", "back").await, 1);
    assert_eq!(next_message(&mut sub).await, plain("b", "back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery_resp2() {
    unsubscribe_stops_delivery(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery_resp3() {
    unsubscribe_stops_delivery(true).await;
}

/// Messages that arrive while `subscribe` waits for its confirmation wait for `recv`, in
/// order, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arriving_during_a_subscribe_wait_for_recv() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let mut admin = server.admin().await;
    for resp3 in [false, true] {
        let mut sub = Subscriber::new(pool(&server, config(resp3), 1));
        within(10, "subscribe", sub.subscribe("a"))
            .await
            .expect("subscribe");
        // Published (and so on the subscriber's connection) before the next SUBSCRIBE.
        for i in 0..100 {
            assert_eq!(publish(&mut admin, "a", format!("m{i}")).await, 1);
        }
        within(10, "subscribe", sub.subscribe("b"))
            .await
            .expect("subscribe");
        for i in 0..100 {
            assert_eq!(next_message(&mut sub).await, plain("a", &format!("m{i}")));
        }
        assert_eq!(publish(&mut admin, "b", "last").await, 1);
        assert_eq!(next_message(&mut sub).await, plain("b", "last"));
        drop(sub);
        no_pubsub_client_left(&mut admin).await;
    }
}

async fn subscribes_again_after_a_restart(resp3: bool) {
    let Some(mut server) = RedisServer::start().await else {
        return;
    };
    let mut admin = server.admin().await;
    let mut sub = Subscriber::new(pool(&server, config(resp3), 1));
    subscribe_four(&mut sub).await;
    all_four_deliver(&mut admin, &mut sub, "before").await;
    drop(admin);

    server.restart().await;
    // The subscriber notices, reconnects through its pool, subscribes to everything again
    // and says how long it was away.
    let gap = reconnected(&mut sub).await;
    assert!(gap > Duration::ZERO);
    assert_eq!(sub.channels(), ["a", "b"]);
    assert_eq!(sub.patterns(), ["p.*", "q.*"]);
    let mut admin = server.admin().await;
    the_subscriber_client(&mut admin).await;
    all_four_deliver(&mut admin, &mut sub, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_again_after_a_restart_resp2() {
    subscribes_again_after_a_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_again_after_a_restart_resp3() {
    subscribes_again_after_a_restart(true).await;
}

/// `CLIENT KILL` of the subscriber's connection: `Reconnected` on a new one, subscribed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_of_its_connection_reconnects() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let mut admin = server.admin().await;
    for resp3 in [false, true] {
        let mut sub = Subscriber::new(pool(&server, config(resp3), 1));
        subscribe_four(&mut sub).await;
        let before = the_subscriber_client(&mut admin).await;
        let killed: i64 = must(
            &mut admin,
            redis::cmd("CLIENT").arg("KILL").arg("ID").arg(before),
        )
        .await;
        assert_eq!(killed, 1);
        let gap = reconnected(&mut sub).await;
        assert!(gap > Duration::ZERO);
        a_new_subscriber_client(&mut admin, before).await;
        all_four_deliver(&mut admin, &mut sub, "after the kill").await;
        drop(sub);
        no_pubsub_client_left(&mut admin).await;
    }
}

/// A server that stops answering (`DEBUG SLEEP`: the connection stays open) is noticed by
/// the subscriber's own ping: the connection is given up and a new one subscribed again once
/// the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_ping_gives_up_the_connection() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let mut admin = server.admin().await;
    let mut sub =
        Subscriber::new(pool(&server, config(false), 1)).ping(20 * MS, Duration::from_millis(500));
    subscribe_four(&mut sub).await;
    let before = the_subscriber_client(&mut admin).await;
    // The whole server sleeps for 3 s; the admin's reply comes after it.
    let mut sleeper = server.admin().await;
    let sleeping = tokio::spawn(async move {
        let _: () = must(&mut sleeper, redis::cmd("DEBUG").arg("SLEEP").arg(3)).await;
    });
    let gap = reconnected(&mut sub).await;
    assert!(gap > Duration::ZERO);
    within(10, "DEBUG SLEEP ends", sleeping)
        .await
        .expect("the sleeper");
    // The unanswered connection was given up.
    a_new_subscriber_client(&mut admin, before).await;
    all_four_deliver(&mut admin, &mut sub, "after the sleep").await;
}

/// As a `Stream`: messages in order, and a reconnect as an item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_a_stream() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let mut admin = server.admin().await;
    let mut sub = Subscriber::new(pool(&server, config(true), 1));
    within(10, "subscribe", sub.subscribe("s"))
        .await
        .expect("subscribe");
    within(10, "psubscribe", sub.psubscribe("t.*"))
        .await
        .expect("psubscribe");
    let mut stream = sub.into_stream();
    let mut next = async || match within(10, "a stream item", stream.next()).await {
        Some(Ok(SubscriberMessage::Message(m))) => got(&m),
        other => panic!("expected a message, got {other:?}"),
    };
    for i in 0..3 {
        assert_eq!(publish(&mut admin, "s", format!("{i}")).await, 1);
    }
    assert_eq!(publish(&mut admin, "t.x", "pattern").await, 1);
    for i in 0..3 {
        assert_eq!(next().await, plain("s", &format!("{i}")));
    }
    assert_eq!(next().await, matched("t.x", "t.*", "pattern"));

    let killed: i64 = must(
        &mut admin,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
    )
    .await;
    assert_eq!(killed, 1);
    within(30, "the stream reports the reconnect", async {
        loop {
            match stream.next().await {
                Some(Ok(SubscriberMessage::Reconnected { gap })) => {
                    assert!(gap > Duration::ZERO);
                    break;
                }
                Some(Err(SubscriberError::Connect(_))) => {}
                other => panic!("before the reconnect: {other:?}"),
            }
        }
    })
    .await;
    let mut next = async || match within(10, "a stream item", stream.next()).await {
        Some(Ok(SubscriberMessage::Message(m))) => got(&m),
        other => panic!("expected a message, got {other:?}"),
    };
    assert_eq!(publish(&mut admin, "s", "again").await, 1);
    assert_eq!(publish(&mut admin, "t.y", "again").await, 1);
    assert_eq!(next().await, plain("s", "again"));
    assert_eq!(next().await, matched("t.y", "t.*", "again"));
}

/// A TCP proxy in front of the server whose server-to-client direction passes only as many
/// bytes as its gate allows: the test decides where a message is cut.
struct GatedProxy {
    addr: std::net::SocketAddr,
    gate: std::sync::Arc<tokio::sync::Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl GatedProxy {
    const OPEN: usize = 1 << 40;

    async fn start(server: std::net::SocketAddr) -> GatedProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(Self::OPEN));
        let g = gate.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(server).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = upstream.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut uw).await;
                });
                let g = g.clone();
                tokio::spawn(async move {
                    let mut chunk = vec![0u8; 16 << 10];
                    loop {
                        let n = match ur.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        match g.acquire_many(n as u32).await {
                            Ok(permit) => permit.forget(),
                            Err(_) => break,
                        }
                        if cw.write_all(&chunk[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        GatedProxy { addr, gate, task }
    }

    /// From now on, only `bytes` more go to the client.
    fn allow_only(&self, bytes: usize) {
        self.gate.forget_permits(Self::OPEN * 2);
        self.gate.add_permits(bytes);
    }

    fn open(&self) {
        self.gate.add_permits(Self::OPEN);
    }
}

impl Drop for GatedProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `recv` dropped halfway through a large message loses nothing: the next call goes on
/// from the bytes already read. A proxy lets through only the first part of each 3 MiB
/// message, so a call that polls once then must end mid-message (it is dropped), and the
/// call after the rest arrived returns the message whole, on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_cancelled_midway_loses_nothing() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let proxy = GatedProxy::start(server.addr()).await;
    let mut admin = server.admin().await;
    for resp3 in [false, true] {
        let pool: Pool = livepool::Pool::builder(proxy.addr)
            .protocol(Redis::new(config(resp3)))
            .max_size(1)
            .connect_timeout(Some(Duration::from_secs(5)))
            .build()
            .expect("build the pool");
        let mut sub = Subscriber::new(pool);
        within(10, "subscribe", sub.subscribe("big"))
            .await
            .expect("subscribe");
        let client = the_subscriber_client(&mut admin).await;
        for i in 0..3u8 {
            let payload: Vec<u8> = (0..3 << 20).map(|j: u32| (j % 251) as u8 ^ i).collect();
            proxy.allow_only(1 << 20);
            // One at a time: the server's pub/sub output limit (8 MiB soft) is never reached.
            assert_eq!(publish(&mut admin, "big", &payload).await, 1);
            // The first MiB goes through the proxy (its gate is used up: the bytes are in
            // the subscriber's socket), the rest is held: a call now reads that part and
            // must end mid-message; it is dropped.
            wait_until(10, "the first MiB through the proxy", || {
                proxy.gate.available_permits() == 0
            })
            .await;
            assert!(sub.recv().now_or_never().is_none(), "cut mid-message");
            proxy.open();
            match within(30, "the large message", sub.recv()).await {
                Ok(SubscriberMessage::Message(m)) => {
                    assert_eq!(m.get_channel_name(), "big");
                    assert!(m.get_payload_bytes() == payload, "message {i} intact");
                }
                other => panic!("expected message {i}, got {other:?}"),
            }
        }
        assert_eq!(
            the_subscriber_client(&mut admin).await,
            client,
            "no reconnect"
        );
        assert_eq!(publish(&mut admin, "big", "small").await, 1);
        assert_eq!(next_message(&mut sub).await, plain("big", "small"));
        drop(sub);
        no_pubsub_client_left(&mut admin).await;
    }
}

/// A `subscribe` cancelled after it sent `SUBSCRIBE`: the channel is subscribed to, and the
/// late confirmation is read by `recv` without taking the connection for out of step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_subscribe_is_finished_by_recv() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let mut admin = server.admin().await;
    for resp3 in [false, true] {
        let mut sub = Subscriber::new(pool(&server, config(resp3), 1));
        within(10, "subscribe", sub.subscribe("first"))
            .await
            .expect("subscribe");
        let client = the_subscriber_client(&mut admin).await;
        // The server holds every client's commands for a moment: a call polled once writes
        // its command and cannot have the confirmation yet.
        let _: () = must(
            &mut admin,
            redis::cmd("CLIENT").arg("PAUSE").arg(500).arg("ALL"),
        )
        .await;
        assert!(sub.subscribe("late").now_or_never().is_none());
        assert!(sub.psubscribe("late.*").now_or_never().is_none());
        assert_eq!(sub.channels(), ["first", "late"]);
        assert_eq!(sub.patterns(), ["late.*"]);
        // Once the pause is over the server runs both (in its own time: a PUBLISH of the
        // admin's could go first), with nobody reading the subscriber's connection.
        within(10, "the server has both subscriptions", async {
            loop {
                let (_, subs): (String, i64) =
                    must(&mut admin, redis::cmd("PUBSUB").arg("NUMSUB").arg("late")).await;
                let patterns: i64 = must(&mut admin, redis::cmd("PUBSUB").arg("NUMPAT")).await;
                if (subs, patterns) == (1, 1) {
                    break;
                }
                tokio::time::sleep(5 * MS).await;
            }
        })
        .await;
        assert_eq!(publish(&mut admin, "late", "one").await, 1);
        assert_eq!(publish(&mut admin, "late.x", "two").await, 1);
        assert_eq!(next_message(&mut sub).await, plain("late", "one"));
        assert_eq!(
            next_message(&mut sub).await,
            matched("late.x", "late.*", "two")
        );
        assert_eq!(
            the_subscriber_client(&mut admin).await,
            client,
            "no reconnect"
        );
        drop(sub);
        no_pubsub_client_left(&mut admin).await;
    }
}

/// A subscription the server refuses (an ACL user without the channel) is an error, and the
/// channel is not kept; the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_is_an_error_and_not_kept() {
    let Some(server) = RedisServer::start_with(RedisOptions::new()).await else {
        return;
    };
    let mut admin = server.admin().await;
    let _: () = must(
        &mut admin,
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("limited")
            .arg("on")
            .arg(">pw")
            .arg("~*")
            .arg("resetchannels")
            .arg("&allowed.*")
            .arg("+@all"),
    )
    .await;
    for resp3 in [false, true] {
        let cfg = config(resp3).username("limited").password("pw");
        let mut sub = Subscriber::new(pool(&server, cfg, 1));
        within(10, "subscribe", sub.subscribe("allowed.1"))
            .await
            .expect("subscribe");
        match within(10, "a refused subscribe", sub.subscribe("secret")).await {
            Err(SubscriberError::Redis(e)) => {
                assert_eq!(e.code(), Some("NOPERM"), "{e}");
            }
            other => panic!("expected NOPERM, got {other:?}"),
        }
        match within(10, "a refused psubscribe", sub.psubscribe("*")).await {
            Err(SubscriberError::Redis(e)) => assert_eq!(e.code(), Some("NOPERM"), "{e}"),
            other => panic!("expected NOPERM, got {other:?}"),
        }
        assert_eq!(sub.channels(), ["allowed.1"]);
        assert!(sub.patterns().is_empty());
        let client = the_subscriber_client(&mut admin).await;
        assert_eq!(publish(&mut admin, "allowed.1", "fine").await, 1);
        assert_eq!(next_message(&mut sub).await, plain("allowed.1", "fine"));
        assert_eq!(
            the_subscriber_client(&mut admin).await,
            client,
            "no reconnect"
        );
        drop(sub);
        no_pubsub_client_left(&mut admin).await;
    }
}
