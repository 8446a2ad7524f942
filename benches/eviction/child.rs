//! The scale run's ping server: this same binary in a child process (see `child_server_main`),
//! so that the measured process holds only the pools' (client) ends.

use livepool_testkit::bench::*;

use std::collections::HashMap;
use std::io::{self, BufRead as _, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livepool::FramePing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::shared::{env_or, listen_backlog, mono_ns};

/// Set in the environment of the scale run's ping server, to the number of ports it listens
/// on: this same binary, in a child process, so that the measured process holds only the
/// pools' (client) ends.
pub(crate) const CHILD_SERVER_ENV: &str = "LIVEPOOL_PING_SERVER_CHILD";

/// Backlog asked for on the child's listeners (the kernel caps it at `net.core.somaxconn`).
pub(crate) const CHILD_BACKLOG: i32 = 65_535;

/// One connection held by the child server, and the way to close it: the sender gets the
/// `CLOCK_MONOTONIC` time taken just before the close.
struct ChildConn {
    id: u64,
    kill: oneshot::Sender<std::sync::mpsc::Sender<u64>>,
}

/// The child server's state, shared by its runtime thread and its command loop.
#[derive(Default)]
struct ChildState {
    /// Open connections by (listener index, client address): one client address may reach
    /// two listeners at once.
    conns: Mutex<HashMap<(usize, SocketAddr), ChildConn>>,
    /// Arrival time (`CLOCK_MONOTONIC` ns) of every ping answered.
    pings: Mutex<Vec<u64>>,
}

/// The child's main: listens on as many loopback ports as `CHILD_SERVER_ENV` says (backlog
/// `CHILD_BACKLOG`), answers `FramePing` pings on its own thread, prints
/// `addrs <a> <b> …`, then serves commands from stdin, one reply line each on stdout (`list`:
/// several), until stdin closes:
/// - `count` → `count <n>`: connections open now;
/// - `list` → `conn <port-index> <client-addr>` per connection, then `end`;
/// - `fin <port-index> <client-addr>` → `closed <port-index> <client-addr> <ns>`, where `ns`
///   is the `CLOCK_MONOTONIC` time just before the server end's close(2) (which sends the
///   FIN), or `missing …` when no such connection is open;
/// - `hist <from-ns> <to-ns>` → `hist <before> <c0> <c1> …`: pings answered before `from`,
///   then the pings answered in each 1 s of [from, to).
pub(crate) fn child_server_main() {
    let ports: usize = env_or(CHILD_SERVER_ENV, 1usize).max(1);
    let state = Arc::new(ChildState::default());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let st = state.clone();
    std::thread::spawn(move || {
        let rt = current_thread();
        rt.block_on(async move {
            let mut addrs = Vec::with_capacity(ports);
            for port in 0..ports {
                let l = listen_backlog(SocketAddr::from(([127, 0, 0, 1], 0)), CHILD_BACKLOG);
                let l = TcpListener::from_std(l).expect("tokio listener");
                addrs.push(l.local_addr().expect("addr"));
                tokio::spawn(child_accept(l, port, st.clone()));
            }
            addr_tx.send(addrs).expect("addrs");
            std::future::pending::<()>().await;
        });
    });
    let addrs: Vec<SocketAddr> = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("child server did not start");
    let mut out = io::stdout().lock();
    let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "addrs {}", shown.join(" "));
    let _ = out.flush();
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if child_command(&line, &state, &mut out)
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    // The runtime thread serves until the process ends: leave without joining it.
    std::process::exit(0);
}

fn child_command(line: &str, st: &ChildState, out: &mut impl io::Write) -> io::Result<()> {
    let mut words = line.split_whitespace();
    match words.next() {
        Some("count") => writeln!(out, "count {}", st.conns.lock().expect("conns").len()),
        Some("list") => {
            let keys: Vec<(usize, SocketAddr)> =
                st.conns.lock().expect("conns").keys().copied().collect();
            for (port, peer) in keys {
                writeln!(out, "conn {port} {peer}")?;
            }
            writeln!(out, "end")
        }
        Some("fin") => {
            let port = words.next().and_then(|p| p.parse::<usize>().ok());
            let peer = words.next().and_then(|a| a.parse::<SocketAddr>().ok());
            let (Some(port), Some(peer)) = (port, peer) else {
                return writeln!(out, "error {line}");
            };
            let conn = st.conns.lock().expect("conns").remove(&(port, peer));
            let (tx, rx) = std::sync::mpsc::channel();
            let closed = conn
                .and_then(|c| c.kill.send(tx).ok())
                .and_then(|()| rx.recv_timeout(Duration::from_secs(5)).ok());
            match closed {
                Some(at) => writeln!(out, "closed {port} {peer} {at}"),
                None => writeln!(out, "missing {port} {peer}"),
            }
        }
        Some("hist") => {
            let from = words.next().and_then(|x| x.parse::<u64>().ok());
            let to = words.next().and_then(|x| x.parse::<u64>().ok());
            let (Some(from), Some(to)) = (from, to) else {
                return writeln!(out, "error {line}");
            };
            let mut counts = vec![0u64; to.saturating_sub(from).div_ceil(1_000_000_000) as usize];
            let mut before = 0u64;
            for &t in st.pings.lock().expect("pings").iter() {
                if t < from {
                    before += 1;
                } else if t < to {
                    counts[((t - from) / 1_000_000_000) as usize] += 1;
                }
            }
            let shown: Vec<String> = counts.iter().map(ToString::to_string).collect();
            writeln!(out, "hist {before} {}", shown.join(" "))
        }
        _ => writeln!(out, "error {line}"),
    }
}

async fn child_accept(listener: TcpListener, port: usize, st: Arc<ChildState>) {
    let mut next = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                next += 1;
                let (tx, rx) = oneshot::channel();
                st.conns
                    .lock()
                    .expect("conns")
                    .insert((port, peer), ChildConn { id: next, kill: tx });
                tokio::spawn(child_serve(stream, (port, peer), next, rx, st.clone()));
            }
            // Out of descriptors or similar: the connection waits in the backlog meanwhile.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Answers each ping with a pong (noting its arrival time) until EOF, an error, or a `fin`
/// command (then closes: FIN).
async fn child_serve(
    mut stream: TcpStream,
    key: (usize, SocketAddr),
    id: u64,
    mut kill: oneshot::Receiver<std::sync::mpsc::Sender<u64>>,
    st: Arc<ChildState>,
) {
    let mut frame = [0u8; FramePing::LEN];
    loop {
        tokio::select! {
            reply = &mut kill => {
                // Err: the entry is gone without a request (not expected); close as well.
                if let Ok(reply) = reply {
                    let at = mono_ns();
                    drop(stream);
                    let _ = reply.send(at);
                }
                return;
            }
            r = stream.read_exact(&mut frame) => {
                if r.is_err() {
                    break;
                }
                let at = mono_ns();
                let (kind, seq, ts) = FramePing::decode(&frame);
                if kind != FramePing::PING {
                    break;
                }
                st.pings.lock().expect("pings").push(at);
                let pong = FramePing::encode(FramePing::PONG, seq, ts);
                if stream.write_all(&pong).await.is_err() {
                    break;
                }
            }
        }
    }
    // Closed by the client: forget it (unless the key now names a newer connection).
    let mut conns = st.conns.lock().expect("conns");
    if conns.get(&key).is_some_and(|c| c.id == id) {
        conns.remove(&key);
    }
}
