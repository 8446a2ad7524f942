//! A test host name in `/etc/hosts`, for DNS re-resolution tests (root only: check
//! [`HostsGuard::available`] with `skip_without` first).
//!
//! [`HostsGuard::map`] adds one line per address for a fresh name, `livepool-<pid>-<n>.test`,
//! each line carrying the marker comment `# livepool-test pid=<pid>`:
//!
//! ```text
//! 127.0.0.2 livepool-4242-0.test # livepool-test pid=4242
//! ```
//!
//! [`HostsGuard::remap`] rewrites that name's lines; dropping the guard (also while unwinding
//! from a panic) removes them, which gives back the original file byte for byte (a file
//! without a final newline gets one). Only lines with the marker *and* this guard's name are
//! ever touched; everything else is copied through unchanged.
//!
//! * SIGINT / SIGTERM: the first guard installs (once per process) a watcher thread with
//!   tokio's safe signal API; on either signal it removes every line of this process, then
//!   exits with 128 + the signal number (130 / 143), as the default action would report.
//! * `kill -9` (or an abort) leaves the lines behind: every new guard first removes marker
//!   lines whose `pid=` no longer runs (no `/proc/<pid>`).
//! * One guard at a time, across threads *and* processes: a guard holds an exclusive
//!   `flock` on `/tmp/livepool-hosts.lock` for its life, so parallel tests never interleave
//!   their edits (or see each other's half-written file). A second guard waits up to 60 s,
//!   then panics; so never hold two guards in one test.
//!
//! The file is rewritten in place (not renamed over), so a bind-mounted `/etc/hosts` works.
//! glibc's `getaddrinfo` reads `/etc/hosts` at every lookup (without nscd), so a remap is seen
//! by the next resolution.

use std::fs::{File, OpenOptions};
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The hosts file.
const HOSTS: &str = "/etc/hosts";
/// Lock file serialising guards across processes.
const LOCK: &str = "/tmp/livepool-hosts.lock";
/// Marker comment on every line a guard writes.
const MARKER: &str = "# livepool-test";
/// How long a guard waits for another one to go away.
const LOCK_WAIT: Duration = Duration::from_secs(60);

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// Serialises edits within this process (the signal watcher edits without the flock).
static EDIT: Mutex<()> = Mutex::new(());
/// Set once the stale-line cleanup ran and the signal watcher is installed.
static INSTALLED: OnceLock<()> = OnceLock::new();

/// Lines for a test host name in `/etc/hosts`; removed on drop.
#[derive(Debug)]
pub struct HostsGuard {
    name: String,
    /// The exclusive flock (released when the file closes, after the lines are removed).
    _lock: File,
}

impl HostsGuard {
    /// Whether `/etc/hosts` can be edited (opened for writing; nothing is written).
    pub fn available() -> bool {
        OpenOptions::new().append(true).open(HOSTS).is_ok()
    }

    /// Maps a fresh name to `ip`. Panics if `/etc/hosts` cannot be edited.
    pub fn map(ip: IpAddr) -> HostsGuard {
        HostsGuard::map_all(&[ip])
    }

    /// Maps a fresh name to every address in `ips`, one line each, in this order (which is
    /// the order glibc returns them in for addresses of one family and scope).
    pub fn map_all(ips: &[IpAddr]) -> HostsGuard {
        let lock = acquire_lock();
        // Before this process's first line: lines with its own pid are from an earlier
        // process that had the same pid.
        let first = INSTALLED.get().is_none();
        edit(|lines| lines.retain(|l| !is_stale(l, first)));
        INSTALLED.get_or_init(install_signal_watcher);
        let name = format!(
            "livepool-{}-{}.test",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let guard = HostsGuard { name, _lock: lock };
        guard.remap_all(ips);
        guard
    }

    /// The mapped host name, e.g. `livepool-4242-0.test`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Maps the name to `ip` instead.
    pub fn remap(&self, ip: IpAddr) {
        self.remap_all(&[ip])
    }

    /// Maps the name to every address in `ips` instead (empty: the name disappears).
    pub fn remap_all(&self, ips: &[IpAddr]) {
        let pid = std::process::id();
        edit(|lines| {
            lines.retain(|l| !is_ours(l, &self.name));
            lines.extend(
                ips.iter()
                    .map(|ip| format!("{ip} {} {MARKER} pid={pid}", self.name)),
            );
        });
    }
}

impl Drop for HostsGuard {
    fn drop(&mut self) {
        // Not `remap_all(&[])`: never panic while unwinding, just say what went wrong.
        let _edit = EDIT.lock();
        if let Err(e) = rewrite(|lines| lines.retain(|l| !is_ours(l, &self.name))) {
            eprintln!("HostsGuard: cannot remove {} from {HOSTS}: {e}", self.name);
        }
    }
}

/// The `pid=` of a marker line.
fn marker_pid(line: &str) -> Option<u32> {
    let (_, tail) = line.split_once(MARKER)?;
    tail.trim().strip_prefix("pid=")?.parse().ok()
}

/// A marker line for `name`.
fn is_ours(line: &str, name: &str) -> bool {
    line.contains(MARKER) && line.split_whitespace().nth(1) == Some(name)
}

/// A marker line left by a process that no longer runs; with `first` (this process has not
/// written yet) also one carrying this process's pid.
fn is_stale(line: &str, first: bool) -> bool {
    match marker_pid(line) {
        Some(pid) if pid == std::process::id() => first,
        Some(pid) => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        // A marker without a pid is not from these helpers' current format: leave it.
        None => false,
    }
}

/// Applies `f` to the lines of `/etc/hosts` under the edit lock; panics on I/O errors.
fn edit(f: impl FnOnce(&mut Vec<String>)) {
    let _edit = EDIT.lock();
    if let Err(e) = rewrite(f) {
        panic!("cannot edit {HOSTS}: {e}");
    }
}

/// Reads, transforms and writes back `/etc/hosts` (in place; unchanged content is not written).
fn rewrite(f: impl FnOnce(&mut Vec<String>)) -> std::io::Result<()> {
    let before = std::fs::read_to_string(HOSTS)?;
    let mut lines: Vec<String> = before.lines().map(str::to_owned).collect();
    f(&mut lines);
    let mut after = lines.join("\n");
    if !lines.is_empty() {
        after.push('\n');
    }
    if after != before {
        std::fs::write(HOSTS, after)?;
    }
    Ok(())
}

/// Takes the cross-process guard lock, waiting up to [`LOCK_WAIT`].
fn acquire_lock() -> File {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .unwrap_or_else(|e| panic!("cannot open {LOCK}: {e}"));
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return file,
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => panic!(
                "another HostsGuard (in this or another process) held {LOCK} for {LOCK_WAIT:?}; \
                 a test must not hold two guards"
            ),
            Err(std::fs::TryLockError::Error(e)) => panic!("cannot lock {LOCK}: {e}"),
        }
    }
}

/// Starts the thread that cleans up on SIGINT/SIGTERM; returns once both are registered.
fn install_signal_watcher() {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("hosts-signal-watcher".into())
        .spawn(move || {
            use tokio::signal::unix::{SignalKind, signal};
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("signal watcher runtime");
            rt.block_on(async move {
                let mut int = signal(SignalKind::interrupt()).expect("register SIGINT");
                let mut term = signal(SignalKind::terminate()).expect("register SIGTERM");
                let _ = ready_tx.send(());
                let code = tokio::select! {
                    _ = int.recv() => 128 + libc::SIGINT,
                    _ = term.recv() => 128 + libc::SIGTERM,
                };
                // Hold the edit lock to the end: no guard can write after the cleanup.
                let _edit = EDIT.lock();
                let pid = std::process::id();
                if let Err(e) = rewrite(|lines| lines.retain(|l| marker_pid(l) != Some(pid))) {
                    eprintln!("HostsGuard: cannot clean {HOSTS} on signal: {e}");
                }
                std::process::exit(code);
            })
        })
        .expect("spawn signal watcher");
    ready_rx
        .recv()
        .expect("signal watcher failed to register its handlers");
}
