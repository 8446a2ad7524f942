//! The event subscriptions as `futures::Stream`s: an eviction arrives as an item, and the
//! stream ends once the pool is gone and every event was delivered.

use futures_util::StreamExt;
use livepool::{EvictReason, Pool};
use livepool_testkit::within;

#[tokio::test]
async fn eviction_events_stream_and_end_with_the_pool() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let pool = Pool::builder(addr).build().unwrap();
    let mut events = pool.events();
    let mut conn = within(5, "get", pool.get()).await.unwrap();
    conn.mark_broken();
    drop(conn);
    let ev = within(5, "the eviction as a stream item", events.next())
        .await
        .expect("an item")
        .expect("not lagged");
    assert_eq!(ev.reason, EvictReason::MarkedBroken);
    drop(pool);
    assert!(
        within(5, "the stream ends with the pool", events.next())
            .await
            .is_none()
    );
    accept.abort();
}
