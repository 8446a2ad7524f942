//! The embedded loopback servers: accept, echo requests, answer `FramePing` pings, apply the
//! faults the scheduler sends, and go down and come back on a `restart`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use livepool::FramePing;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until};

use crate::faults::Fault;
use crate::state::{Chaos, REQ_LEN, REQUEST, ServerConn};

const LATE_BY: Duration = Duration::from_millis(400);

const STALL_FOR: Duration = Duration::from_secs(3);

/// Binds `addr` with SO_REUSEADDR (so a restart gets the same port back), retrying until the end.
pub(crate) async fn listen(addr: SocketAddr, end: Instant) -> Option<TcpListener> {
    let bind = || {
        let s = TcpSocket::new_v4()?;
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        s.listen(1024)
    };
    while Instant::now() < end {
        match bind() {
            Ok(l) => return Some(l),
            Err(e) => eprintln!("server: cannot listen on {addr} ({e}), retrying"),
        }
        sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Server `srv`'s accept loop; a message on `restarts` takes it down for `Chaos::downtime`.
pub(crate) async fn server(
    chaos: Arc<Chaos>,
    srv: usize,
    mut listener: TcpListener,
    mut restarts: mpsc::Receiver<()>,
) {
    let me = &chaos.servers[srv];
    let addr = me.addr;
    let mut next_id = 0;
    loop {
        tokio::select! {
            Ok((stream, peer)) = listener.accept() => {
                let _ = stream.set_nodelay(true);
                let (tx, rx) = mpsc::unbounded_channel();
                next_id += 1;
                me.conns.lock().unwrap().insert(next_id, ServerConn { tx, faulted: false });
                // A new connection from a reused port starts with a clean record.
                me.faulted.lock().unwrap().remove(&peer);
                tokio::spawn(serve(chaos.clone(), srv, next_id, stream, peer, rx));
            }
            Some(()) = restarts.recv() => {
                drop(listener);
                for c in me.conns.lock().unwrap().values() {
                    let _ = c.tx.send(Fault::Restart);
                }
                let downtime = chaos.downtime();
                sleep(downtime.min(chaos.end.saturating_duration_since(Instant::now()))).await;
                let Some(l) = listen(addr, chaos.end).await else { return };
                listener = l;
                me.down.store(false, Relaxed);
                let mut outages = chaos.outages.lock().unwrap();
                if let Some(o) = outages.iter_mut().rev().find(|o| o.server == srv) {
                    o.back = Some(Instant::now());
                }
            }
            _ = sleep_until(chaos.end) => return,
        }
    }
}

/// One server-side connection: answers requests and pings, and applies the faults sent to it.
async fn serve(
    chaos: Arc<Chaos>,
    srv: usize,
    id: u64,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut faults: mpsc::UnboundedReceiver<Fault>,
) {
    let (mut buf, mut filled, mut late) = ([0u8; REQ_LEN], 0, false);
    loop {
        let need = match (filled, buf[0]) {
            (0, _) => 1,
            (_, FramePing::PING) => FramePing::LEN,
            (_, REQUEST) => REQ_LEN,
            _ => break, // not our protocol: hang up
        };
        if filled == need {
            filled = 0;
            let sent = if buf[0] == FramePing::PING {
                let (_, seq, ts) = FramePing::decode(buf[..8].try_into().expect("8 bytes"));
                stream
                    .write_all(&FramePing::encode(FramePing::PONG, seq, ts))
                    .await
            } else {
                if std::mem::take(&mut late) {
                    chaos.record(srv, peer, Fault::Late);
                    sleep(LATE_BY).await;
                }
                stream.write_all(&buf).await
            };
            if sent.is_err() {
                break;
            }
            continue;
        }
        // Both branches are cancel safe: a partial frame stays in `buf`.
        tokio::select! {
            fault = faults.recv() => match fault {
                None | Some(Fault::Fin | Fault::Restart) => {
                    if let Some(f) = fault { chaos.record(srv, peer, f) }
                    break;
                }
                Some(Fault::Rst) => {
                    chaos.record(srv, peer, Fault::Rst);
                    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    break;
                }
                Some(Fault::Garbage) => {
                    chaos.record(srv, peer, Fault::Garbage);
                    if stream.write_all(&[0xEE; 3]).await.is_err() { break }
                }
                Some(Fault::Stall) => {
                    chaos.record(srv, peer, Fault::Stall);
                    // Hold the socket open, unread and unanswered, for a while or until a restart.
                    let until = Instant::now() + STALL_FOR;
                    while let Ok(Some(f)) = tokio::time::timeout_at(until, faults.recv()).await {
                        if f == Fault::Restart { chaos.record(srv, peer, f); break }
                    }
                    break;
                }
                Some(Fault::Late) => late = true, // recorded when the late reply starts
            },
            read = stream.read(&mut buf[filled..need]) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            },
        }
    }
    chaos.servers[srv].conns.lock().unwrap().remove(&id);
}
