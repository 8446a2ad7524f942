//! A length-prefixed request/response RPC client on top of livepool, with the 8-byte frame
//! heartbeat, against an embedded loopback server.
//!
//! ```sh
//! cargo run --example rpc
//! ```
//!
//! Wire format: a request is `[0x10][len u32 BE][payload]`; the response is
//! `[0x11][len u32 BE][payload]` (the server upper-cases the payload). Pings are the
//! 8-byte `FramePing` frames (first byte 0x01), which the server answers with pongs: the
//! first byte tells the two apart. The server closes each connection after 25 requests, so
//! you can watch the pool evict and replace them.

use std::time::Duration;

use livepool::{Conn, FramePing, Pool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REQUEST: u8 = 0x10;
const RESPONSE: u8 = 0x11;
/// Largest payload either side accepts: bad lengths from a peer are an error, not an
/// allocation.
const MAX_PAYLOAD: u32 = 1 << 20;

/// An RPC client: one call is one request and its response on a pooled connection.
struct Client {
    pool: Pool<FramePing>,
}

#[derive(Debug)]
enum CallError {
    Pool(livepool::Error),
    Io(std::io::Error),
    Protocol(String),
    Timeout,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Pool(e) => write!(f, "pool: {e}"),
            CallError::Io(e) => write!(f, "i/o: {e}"),
            CallError::Protocol(m) => write!(f, "protocol: {m}"),
            CallError::Timeout => f.write_str("deadline passed"),
        }
    }
}

impl Client {
    async fn call(&self, payload: &[u8], deadline: Duration) -> Result<Vec<u8>, CallError> {
        let mut conn = self.pool.get().await.map_err(CallError::Pool)?;
        // A timeout drops the exchange mid-way: the pool sees the pending read and closes the
        // connection, so a late response never reaches the next caller.
        match tokio::time::timeout(deadline, exchange(&mut conn, payload)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                // Out of step with the peer: never reuse this connection.
                conn.mark_broken();
                Err(e)
            }
            Err(_) => Err(CallError::Timeout),
        }
    }
}

async fn exchange(conn: &mut Conn<FramePing>, payload: &[u8]) -> Result<Vec<u8>, CallError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&n| n <= MAX_PAYLOAD)
        .ok_or_else(|| CallError::Protocol("payload too large".into()))?;
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(REQUEST);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    conn.write_all(&frame).await.map_err(CallError::Io)?;
    let mut head = [0u8; 5];
    conn.read_exact(&mut head).await.map_err(CallError::Io)?;
    if head[0] != RESPONSE {
        return Err(CallError::Protocol(format!(
            "unexpected frame type {:#04x}",
            head[0]
        )));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_PAYLOAD {
        return Err(CallError::Protocol(format!(
            "response length {len} too large"
        )));
    }
    let mut body = vec![0u8; len as usize];
    conn.read_exact(&mut body).await.map_err(CallError::Io)?;
    Ok(body)
}

/// The embedded server: answers requests and pings; closes a connection after 25 requests.
async fn serve(listener: TcpListener) {
    while let Ok((sock, _)) = listener.accept().await {
        tokio::spawn(handle(sock));
    }
}

async fn handle(mut sock: TcpStream) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    for _ in 0..25 {
        let mut kind = sock.read_u8().await?;
        while kind == FramePing::PING {
            let mut rest = [0u8; 7];
            sock.read_exact(&mut rest).await?;
            let mut pong = [0u8; 8];
            pong[0] = FramePing::PONG;
            pong[1..].copy_from_slice(&rest);
            sock.write_all(&pong).await?;
            kind = sock.read_u8().await?;
        }
        if kind != REQUEST {
            return Ok(()); // garbage: hang up
        }
        let len = sock.read_u32().await?;
        if len > MAX_PAYLOAD {
            return Ok(());
        }
        let mut body = vec![0u8; len as usize];
        sock.read_exact(&mut body).await?;
        body.make_ascii_uppercase();
        let mut out = vec![RESPONSE];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
        sock.write_all(&out).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener));

    let pool = Pool::builder(addr)
        .max_size(4)
        .min_idle(2)
        .protocol(FramePing::new())
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_timeout(Duration::from_millis(200))
        .build()?;
    let client = Client { pool: pool.clone() };

    let mut ok = 0;
    for i in 0..200u32 {
        let msg = format!("hello {i}");
        // Let the idle watch see a close that came with the last response.
        tokio::task::yield_now().await;
        match client.call(msg.as_bytes(), Duration::from_secs(1)).await {
            Ok(reply) if reply == msg.to_uppercase().as_bytes() => ok += 1,
            Ok(reply) => return Err(format!("wrong reply to {msg:?}: {reply:?}").into()),
            Err(e) => println!("call {i} failed: {e}"),
        }
        if i % 50 == 49 {
            // Idle long enough for a heartbeat round.
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    }
    let s = pool.statistics();
    println!(
        "{ok} of 200 calls ok; connections created {}, evicted {:?}",
        s.created,
        s.evictions()
    );
    println!("status: {:?}", pool.status());
    Ok(())
}
