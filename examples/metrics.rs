//! Exposes livepool's metrics in Prometheus text format over HTTP on localhost.
//!
//! ```sh
//! cargo run --example metrics --features metrics            # serves for 30 s
//! curl -s http://127.0.0.1:9898/metrics | grep livepool_     # in another terminal
//! ```
//!
//! It starts an embedded loopback echo server, builds a pool against it (after installing
//! the recorder: handles are registered when a pool is built), runs a little traffic with
//! some faults, prints the metrics once, and serves them until the time is up.

use std::time::Duration;

use livepool::Pool;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().map_or(Ok(9898), |a| a.parse())?;
    let serve_for = Duration::from_secs(args.next().map_or(Ok(30), |a| a.parse())?);

    let handle = PrometheusBuilder::new().install_recorder()?;

    // An echo server that closes each connection after 50 requests (so there are evictions).
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let addr = echo.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 8];
                for _ in 0..50 {
                    if s.read_exact(&mut buf).await.is_err() || s.write_all(&buf).await.is_err() {
                        return;
                    }
                }
            });
        }
    });

    let pool = Pool::builder(addr).max_size(4).min_idle(2).build()?;
    for i in 0..200u64 {
        let Ok(mut conn) = pool.get().await else {
            continue;
        };
        // Give the idle watch a moment to see a server's close before the next checkout.
        tokio::task::yield_now().await;
        let mut buf = [0u8; 8];
        if conn.write_all(&i.to_be_bytes()).await.is_ok() {
            let _ = conn.read_exact(&mut buf).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1200)).await; // one reaper tick for the gauges
    println!("{}", handle.render());

    let http = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("serving http://127.0.0.1:{port}/metrics for {serve_for:?}");
    let serve = async {
        while let Ok((mut s, _)) = http.accept().await {
            let body = handle.render();
            tokio::spawn(async move {
                let mut req = [0u8; 1024];
                let _ = s.read(&mut req).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    };
    let _ = tokio::time::timeout(serve_for, serve).await;
    Ok(())
}
