//! Two network namespaces joined by a veth pair, for real blackhole tests (root only).
//!
//! ```text
//!   namespace A (client)                    namespace B (server)
//!   lo up, veth "lpva" 10.213.X.1/24  <-->  veth "lpvb" 10.213.X.2/24, lo up
//! ```
//!
//! [`Netns::blackhole`] takes B's veth down: A's packets to B vanish without an answer (no
//! RST, no ICMP), which is what a vanished host or a dropped route looks like to A.
//! [`Netns::heal`] brings it back up. Dropping the guard deletes both namespaces (and with
//! them the veth pair), also when the test panics.
//!
//! Code runs inside a namespace on a helper thread that joined it with `setns()`:
//! [`Netns::exec_in`] runs a closure there (e.g. to create a listener), [`Netns::run_in`]
//! builds a current-thread tokio runtime there and blocks on a future. Sockets keep the
//! namespace they were created in, so their fds work from any thread afterwards.
//!
//! Names hold the process id and a counter (test threads of one binary run in parallel).
//! The veth pair is created directly inside the two namespaces, so its fixed names never
//! appear in the host namespace.

use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Prefix of every namespace these helpers create: `lpt-<pid>-<n>-a` / `-b`.
const PREFIX: &str = "lpt-";
/// Client-side veth (in namespace A).
pub const VETH_A: &str = "lpva";
/// Server-side veth (in namespace B).
pub const VETH_B: &str = "lpvb";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A pair of network namespaces joined by a veth pair; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Client namespace name.
    pub a: String,
    /// Server namespace name.
    pub b: String,
    /// Address of A's veth (10.213.X.1).
    pub client_ip: Ipv4Addr,
    /// Address of B's veth (10.213.X.2).
    pub server_ip: Ipv4Addr,
}

/// Runs `ip ARGS`, returning stderr on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Like [`ip`], panicking on failure.
fn ip_ok(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

/// Output of `ip ARGS` (empty on failure).
fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Deletes namespaces left behind by earlier runs of these tests whose process is gone
/// (a test binary killed before its guards could drop).
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

impl Netns {
    /// Whether namespaces can be made here: root, `ip` present, and `ip netns add` works.
    /// Probed once per process.
    pub fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            if !is_root() {
                eprintln!("netns: not running as root");
                return false;
            }
            if Command::new("ip").arg("-V").output().is_err() {
                eprintln!("netns: `ip` (iproute2) not found");
                return false;
            }
            remove_stale();
            let probe = format!("{PREFIX}{}-probe", std::process::id());
            match ip(&["netns", "add", &probe]) {
                Ok(()) => {
                    let _ = ip(&["netns", "del", &probe]);
                    true
                }
                Err(e) => {
                    eprintln!("netns: {e}");
                    false
                }
            }
        })
    }

    /// Creates the pair, or returns `None` after printing SKIPPED when namespaces are not
    /// available (panics instead under `LIVEPOOL_REQUIRE_ALL=1`).
    pub fn create() -> Option<Netns> {
        if crate::skip_without(Self::available(), "root and ip netns") {
            return None;
        }
        Some(Self::setup())
    }

    /// Creates the pair; panics when anything fails (whatever was made is deleted).
    pub fn setup() -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // X only has to differ between pairs of this process for readable logs: each pair
        // lives in its own namespaces, so equal subnets of two pairs never meet.
        let x = (pid.wrapping_mul(7).wrapping_add(n) % 254 + 1) as u8;
        // The guard exists before anything is made, so a failure below still cleans up.
        let ns = Netns {
            a: format!("{PREFIX}{pid}-{n}-a"),
            b: format!("{PREFIX}{pid}-{n}-b"),
            client_ip: Ipv4Addr::new(10, 213, x, 1),
            server_ip: Ipv4Addr::new(10, 213, x, 2),
        };
        let (a, b) = (ns.a.as_str(), ns.b.as_str());
        ip_ok(&["netns", "add", a]);
        ip_ok(&["netns", "add", b]);
        ip_ok(&[
            "link", "add", VETH_A, "netns", a, "type", "veth", "peer", "name", VETH_B, "netns", b,
        ]);
        let addr_a = format!("{}/24", ns.client_ip);
        let addr_b = format!("{}/24", ns.server_ip);
        ip_ok(&["-n", a, "addr", "add", &addr_a, "dev", VETH_A]);
        ip_ok(&["-n", b, "addr", "add", &addr_b, "dev", VETH_B]);
        ip_ok(&["-n", a, "link", "set", "lo", "up"]);
        ip_ok(&["-n", b, "link", "set", "lo", "up"]);
        ip_ok(&["-n", a, "link", "set", VETH_A, "up"]);
        ip_ok(&["-n", b, "link", "set", VETH_B, "up"]);
        ns.wait_link_up(true);
        ns
    }

    /// Waits (bounded) until A's veth has or has lost its carrier.
    fn wait_link_up(&self, up: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = ip_output(&["-n", &self.a, "-o", "link", "show", "dev", VETH_A]);
            if out.contains("state UP") == up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "veth {VETH_A} in {} not {} after 5 s: {out}",
                self.a,
                if up { "up" } else { "down" }
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Cuts the path: B's veth goes down, so A's packets get no answer at all.
    pub fn blackhole(&self) {
        ip_ok(&["-n", &self.b, "link", "set", VETH_B, "down"]);
        self.wait_link_up(false);
    }

    /// Restores the path cut by [`Netns::blackhole`].
    pub fn heal(&self) {
        ip_ok(&["-n", &self.b, "link", "set", VETH_B, "up"]);
        self.wait_link_up(true);
    }

    /// Sets a sysctl inside namespace `ns` only (TCP sysctls are per namespace).
    pub fn sysctl(ns: &str, key: &str, value: &str) {
        let kv = format!("{key}={value}");
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-q", "-w", &kv])
            .output()
            .expect("run ip netns exec sysctl");
        assert!(
            out.status.success(),
            "sysctl {kv} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// Runs `f` on a helper thread that has joined namespace `ns`; returns its result (a
    /// panic in `f` is passed on). Sockets created in `f` belong to `ns`.
    pub fn exec_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name(format!("netns-{ns}"))
                .spawn_scoped(s, move || {
                    enter(ns);
                    f()
                })
                .expect("spawn netns thread");
            match h.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Builds a current-thread tokio runtime (all drivers) on a helper thread inside
    /// namespace `ns` and blocks on the future `f()` there. Every socket the future creates
    /// (a pool's connections included) belongs to `ns`.
    pub fn run_in<F, Fut, T>(ns: &str, f: F) -> T
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send,
    {
        Self::exec_in(ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(f())
        })
    }
}

/// Moves the calling thread into the named network namespace.
fn enter(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: `file` is an open descriptor of a network namespace file and outlives the call;
    // setns with CLONE_NEWNET changes only this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace destroys its end of the veth pair, and with it the other end.
        for ns in [&self.a, &self.b] {
            if std::path::Path::new(&format!("/var/run/netns/{ns}")).exists()
                && let Err(e) = ip(&["netns", "del", ns])
            {
                eprintln!("netns cleanup: {e}");
            }
        }
    }
}
