//! A host name is resolved again at every connect: rewriting `/etc/hosts` between two
//! connects moves the second one. Drives pools built on the name against listeners on
//! 127.0.0.2 / 127.0.0.3 / …, so no packet leaves loopback and no lookup reaches DNS (every
//! name used is in `/etc/hosts` whenever it is resolved). Also checks the [`HostsGuard`]
//! cleanup paths: drop, panic, SIGINT/SIGTERM, and stale lines after `kill -9`.
//!
//! Root only (to edit `/etc/hosts`): without it every test prints SKIPPED (or fails under
//! `LIVEPOOL_REQUIRE_ALL=1`).

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use livepool_testkit::hosts::HostsGuard;
use livepool_testkit::within;
use tokio::net::TcpListener;

/// One connect by name, through a fresh pool (no breaker, no idle watch): the pool's own
/// connect path, DNS included. The error is the connect's `io::Error` (the pool error's
/// source), whose text names the host and every address tried.
async fn connect_tcp(target: &str, timeout: Option<Duration>) -> std::io::Result<livepool::Conn> {
    let pool = livepool::Pool::builder(target)
        .connect_timeout(timeout)
        .breaker(None)
        .idle_watch(false)
        .build()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    pool.get().await.map_err(|e| {
        let io = e
            .io_error()
            .expect("a failed connect carries its io::Error");
        std::io::Error::new(io.kind(), io.to_string())
    })
}

/// Set in the child process of the signal tests.
const CHILD_ENV: &str = "LIVEPOOL_HOSTS_CHILD";

fn skip() -> bool {
    livepool_testkit::skip_without(HostsGuard::available(), "root (to edit /etc/hosts)")
}

fn lo(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

fn hosts_file() -> String {
    std::fs::read_to_string("/etc/hosts").expect("read /etc/hosts")
}

/// Lines of /etc/hosts naming `name`.
fn lines_for(name: &str) -> Vec<String> {
    hosts_file()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(name))
        .map(str::to_owned)
        .collect()
}

/// Listeners on each of `ips`, all on one port (retried until a free one is found).
async fn same_port(ips: &[IpAddr]) -> (Vec<TcpListener>, u16) {
    'retry: for _ in 0..50 {
        let first = TcpListener::bind(SocketAddr::new(ips[0], 0))
            .await
            .expect("bind");
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for &ip in &ips[1..] {
            match TcpListener::bind(SocketAddr::new(ip, port)).await {
                Ok(l) => all.push(l),
                Err(_) => continue 'retry,
            }
        }
        return (all, port);
    }
    panic!("no port free on all of {ips:?}");
}

/// A port on which nothing listens on any of `ips` (bound everywhere, then closed).
async fn closed_port(ips: &[IpAddr]) -> u16 {
    same_port(ips).await.1
}

/// Connects to `target` and checks that it lands on `listener`: returns the peer address.
async fn connect_lands_on(target: &str, listener: &TcpListener) -> SocketAddr {
    let stream = within(
        10,
        "connect_tcp",
        connect_tcp(target, Some(Duration::from_secs(5))),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {target}: {e}"));
    let (_accepted, peer) = within(5, "accept", listener.accept())
        .await
        .expect("accept");
    assert_eq!(peer, stream.local_addr().unwrap());
    assert_eq!(stream.peer_addr().unwrap(), listener.local_addr().unwrap());
    stream.peer_addr().unwrap()
}

#[tokio::test]
async fn remap_moves_the_next_connect() {
    if skip() {
        return;
    }
    let (ls, port) = same_port(&[lo(2), lo(3)]).await;
    let hosts = HostsGuard::map(lo(2));
    let target = format!("{}:{port}", hosts.name());
    let first = connect_lands_on(&target, &ls[0]).await;
    assert_eq!(first, SocketAddr::new(lo(2), port));
    hosts.remap(lo(3));
    let second = connect_lands_on(&target, &ls[1]).await;
    assert_eq!(second, SocketAddr::new(lo(3), port));
    // And back: nothing was cached in between.
    hosts.remap(lo(2));
    connect_lands_on(&target, &ls[0]).await;
}

#[tokio::test]
async fn refused_first_address_falls_through_to_the_next() {
    if skip() {
        return;
    }
    // Both addresses share the port; only 127.0.0.5 listens on it.
    let (mut ls, port) = same_port(&[lo(5), lo(4)]).await;
    drop(ls.pop()); // 127.0.0.4: closed again.
    let listening = ls.pop().unwrap();
    let hosts = HostsGuard::map_all(&[lo(4), lo(5)]);
    let target = format!("{}:{port}", hosts.name());
    // Wherever the resolver puts 127.0.0.4, the connect ends on 127.0.0.5.
    let peer = within(
        10,
        "connect_tcp",
        connect_tcp(&target, Some(Duration::from_secs(5))),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {target}: {e}"))
    .peer_addr()
    .unwrap();
    assert_eq!(peer, SocketAddr::new(lo(5), port));
    within(5, "accept", listening.accept())
        .await
        .expect("accept");
}

#[tokio::test]
async fn all_refused_names_every_address() {
    if skip() {
        return;
    }
    let port = closed_port(&[lo(6), lo(7)]).await;
    let hosts = HostsGuard::map_all(&[lo(6), lo(7)]);
    let target = format!("{}:{port}", hosts.name());
    let err = within(
        10,
        "connect_tcp",
        connect_tcp(&target, Some(Duration::from_secs(5))),
    )
    .await
    .expect_err("nothing listens");
    let msg = err.to_string();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{msg}");
    assert!(msg.starts_with(&format!("{target}: ")), "{msg}");
    for ip in [lo(6), lo(7)] {
        assert!(msg.contains(&format!("{ip}:{port}: ")), "{msg}");
    }
    assert_eq!(msg.matches("refused").count(), 2, "{msg}");
}

#[test]
fn guard_removes_its_lines_on_drop_and_on_panic() {
    if skip() {
        return;
    }
    let hosts = HostsGuard::map_all(&[lo(8), lo(9)]);
    let name = hosts.name().to_owned();
    assert_eq!(lines_for(&name).len(), 2, "{}", hosts_file());
    hosts.remap(lo(10));
    assert_eq!(lines_for(&name).len(), 1);
    assert!(lines_for(&name)[0].starts_with("127.0.0.10 "));
    drop(hosts);
    assert!(lines_for(&name).is_empty(), "{}", hosts_file());

    let (tx, rx) = std::sync::mpsc::channel();
    let res = std::panic::catch_unwind(move || {
        let hosts = HostsGuard::map(lo(11));
        tx.send(hosts.name().to_owned()).unwrap();
        panic!("test panic while a HostsGuard is alive");
    });
    assert!(res.is_err());
    let name = rx.recv().unwrap();
    assert!(lines_for(&name).is_empty(), "{}", hosts_file());
}

/// Starts this test binary as a child that maps a name and waits to be signalled; returns
/// the child and the name once it is in /etc/hosts.
fn child_with_mapping() -> (std::process::Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_holds_a_mapping",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child test process");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest prints "test child_holds_a_mapping ... " on the same line first.
            if let Some((_, name)) = line.split_once("MAPPED ") {
                let _ = tx.send(name.trim().to_owned());
            }
        }
    });
    // The child may wait for other tests' guards (up to 60 s each) first.
    let name = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("child never mapped its name");
    assert_eq!(lines_for(&name).len(), 1, "{}", hosts_file());
    (child, name)
}

/// Child side of the signal tests: maps a name, says so, waits to be killed.
#[test]
fn child_holds_a_mapping() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let hosts = HostsGuard::map(lo(12));
    println!("MAPPED {}", hosts.name());
    std::thread::sleep(Duration::from_secs(120));
    panic!("child was not signalled");
}

#[test]
fn sigint_and_sigterm_remove_the_lines() {
    if skip() {
        return;
    }
    for (sig, code) in [("-INT", 130), ("-TERM", 143)] {
        let (mut child, name) = child_with_mapping();
        let status = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{sig}: {status}");
        assert!(lines_for(&name).is_empty(), "{sig}: {}", hosts_file());
    }
}

#[test]
fn lines_left_by_kill_9_are_cleaned_by_the_next_guard() {
    if skip() {
        return;
    }
    let (mut child, name) = child_with_mapping();
    child.kill().unwrap(); // SIGKILL: no cleanup possible.
    child.wait().unwrap();
    // The line survives the child; not asserted, as a guard of a parallel test may already
    // have cleaned it (which is the behaviour under test too).
    let hosts = HostsGuard::map(lo(13));
    assert!(lines_for(&name).is_empty(), "{}", hosts_file());
    assert_eq!(lines_for(hosts.name()).len(), 1);
}

/// Counts the connections a listener holds open: +1 on accept, -1 when the client closes.
fn hold_open(listener: TcpListener) -> std::sync::Arc<std::sync::atomic::AtomicI64> {
    use std::sync::atomic::{AtomicI64, Ordering};
    let open = std::sync::Arc::new(AtomicI64::new(0));
    let count = open.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let count = count.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 64];
                while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    open
}

/// The pool follows a DNS change: after `/etc/hosts` moves the name, new connections go to
/// the new address, and `max_lifetime` rotates the idle members still on the old one
/// (refill then connects to the new address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_follows_a_dns_change_and_max_lifetime_rotates_old_members() {
    use std::sync::atomic::Ordering;
    if skip() {
        return;
    }
    let (mut listeners, port) = same_port(&[lo(8), lo(9)]).await;
    let new_side = hold_open(listeners.pop().unwrap());
    let old_side = hold_open(listeners.pop().unwrap());
    let hosts = HostsGuard::map(lo(8));
    let pool = livepool::Pool::builder(format!("{}:{port}", hosts.name()))
        .max_size(4)
        .min_idle(2)
        .max_lifetime(Some(Duration::from_millis(1500)))
        .lifetime_jitter(0.0)
        .idle_timeout(None)
        .reap_interval(Duration::from_millis(50))
        .breaker(None)
        .build()
        .expect("build");
    let first = within(10, "first checkout", pool.get()).await.expect("get");
    assert_eq!(first.peer_addr().unwrap().ip(), lo(8));
    drop(first);
    livepool_testkit::wait_until(10, "two members on the old address", || {
        old_side.load(Ordering::SeqCst) >= 2
    })
    .await;

    hosts.remap(lo(9));
    livepool_testkit::wait_until(15, "every member rotated to the new address", || {
        old_side.load(Ordering::SeqCst) == 0 && new_side.load(Ordering::SeqCst) >= 2
    })
    .await;
    let conn = within(10, "checkout after the change", pool.get())
        .await
        .expect("get");
    assert_eq!(conn.peer_addr().unwrap().ip(), lo(9));
    let rotated = pool
        .statistics()
        .evictions()
        .into_iter()
        .find(|(r, _)| *r == livepool::EvictReason::MaxLifetime)
        .map_or(0, |(_, n)| n);
    assert!(
        rotated >= 2,
        "old members must leave by max_lifetime: {rotated}"
    );
}
