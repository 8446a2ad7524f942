//! The real servers the comparison restarts: a `redis-server` child process and a throwaway
//! PostgreSQL cluster, both on a free port of 127.0.0.1. Each is killed and its directory
//! removed when dropped, also when the run failed. (The repo's tests have launchers of their
//! own in the workspace's testkit, `testkit/`, built around the test harness: they panic and
//! skip.)
//!
//! The face-off (`faceoff`) also starts them elsewhere ([`Place`]: an address inside a network
//! namespace, a password shared by two clusters), stops and continues their processes
//! (SIGSTOP/SIGCONT) and crashes them (SIGKILL of every process of the server).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A directory of its own under the system temp dir, for one server of this process.
fn fresh_dir(what: &str) -> Result<PathBuf, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "livepool-compare-{what}-{}-{nanos:x}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("bind a free loopback port: {e}"))
}

/// Runs `start` on `fixed` or, when `None`, on a free port, at most five times (a free port
/// can be taken by someone else before the server binds it); the last error otherwise.
fn on_a_port(
    fixed: Option<u16>,
    mut start: impl FnMut(u16) -> Result<(), String>,
) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..5 {
        let port = match fixed {
            Some(p) => p,
            None => free_port()?,
        };
        match start(port) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Where a server listens: by default 127.0.0.1 on a free port; or `ip` (and `port`) inside
/// the network namespace `netns` (its processes started through `ip netns exec`).
#[derive(Clone, Debug, Default)]
pub struct Place {
    pub netns: Option<String>,
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
}

impl Place {
    fn ip(&self) -> IpAddr {
        self.ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// `prog` as a command, inside the namespace when there is one.
    fn command(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(prog);
                c
            }
            None => Command::new(prog),
        }
    }
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`, `TERM`) to `pids` with one `kill` command.
pub fn signal(pids: &[u32], signal: &str) -> Result<(), String> {
    if pids.is_empty() {
        return Ok(());
    }
    let out = Command::new("kill")
        .args(["-s", signal, "--"])
        .args(pids.iter().map(u32::to_string))
        .output()
        .map_err(|e| format!("run kill: {e}"))?;
    if !out.status.success() {
        return Err(format!("kill -s {signal} {pids:?}: {}", text(&out)));
    }
    Ok(())
}

/// The processes whose parent is `parent` (from `/proc`).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid …`: the command name may hold spaces and parentheses.
        let ppid: u32 = stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == parent).then_some(pid)
    })
    .collect()
}

/// Whether `pid` is gone, reaped too: PostgreSQL refuses to start while the pid of its lock
/// file answers `kill(pid, 0)`, which a zombie does.
#[allow(dead_code)] // used by PgCluster::crash only
fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Polls (every 10 ms) until a TCP connect to `addr` succeeds or `limit` has passed.
fn wait_accepting(addr: SocketAddr, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A finished command's status and output, for an error.
pub fn text(out: &Output) -> String {
    format!(
        "{}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn last_lines(path: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// A `redis-server` child on 127.0.0.1 with no persistence.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    place: Place,
}

impl RedisServer {
    /// Starts `redis-server` (from PATH) on a free port and waits until it accepts.
    pub fn start() -> Result<RedisServer, String> {
        RedisServer::start_at(Place::default())
    }

    /// Starts `redis-server` at `place` and waits until it accepts (from this process: a
    /// server inside a namespace must be reachable from here).
    pub fn start_at(place: Place) -> Result<RedisServer, String> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            return Err(
                "redis-server is not on PATH (Debian: apt-get install redis-server)".into(),
            );
        }
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir: fresh_dir("redis")?,
            place,
        };
        on_a_port(server.place.port, |port| {
            server.port = port;
            server.spawn()?;
            if wait_accepting(server.addr(), Duration::from_secs(10)) {
                return Ok(());
            }
            server.kill();
            Err(format!(
                "redis-server on port {port} did not accept within 10 s; log:\n{}",
                last_lines(&server.log(), 20)
            ))
        })?;
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.place.ip(), self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Starts the process on this server's port; does not wait for it to accept.
    pub fn spawn(&mut self) -> Result<(), String> {
        let child = self
            .place
            .command("redis-server")
            .args(["--bind", &self.place.ip().to_string()])
            .args(["--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            // Not on loopback only in a namespace of this process: no password needed there.
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL (the kernel closes every connection) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An error with the log's tail if the process has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(status))) => Err(format!(
                "redis-server exited ({status}); log:\n{}",
                last_lines(&self.log(), 20)
            )),
            Some(Err(e)) => Err(format!("redis-server: {e}")),
            None => Err("redis-server is not running".into()),
        }
    }
}

/// The face-off's faults (the other binaries do not use them).
#[allow(dead_code)]
impl RedisServer {
    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM (Redis shuts down: it closes its clients and exits) and reap; SIGKILL if it is
    /// still there after 10 s.
    pub fn terminate(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let res = signal(&[child.id()], "TERM");
        let end = Instant::now() + Duration::from_secs(10);
        while res.is_ok() && Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        let _ = child.wait();
        res.and(Err(
            "redis-server did not exit within 10 s of SIGTERM".into()
        ))
    }

    /// SIGSTOP (`stop`) or SIGCONT (`!stop`) to the process: the kernel still accepts and
    /// acknowledges, nothing answers.
    pub fn pause(&self, stop: bool) -> Result<(), String> {
        let pid = self.pid().ok_or("redis-server is not running")?;
        signal(&[pid], if stop { "STOP" } else { "CONT" })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// The superuser `initdb` creates.
pub const PG_USER: &str = "compare";

/// A throwaway cluster (SCRAM-SHA-256 for everyone) started with `pg_ctl`; as root, `initdb`
/// and `pg_ctl` run as the `postgres` user.
pub struct PgCluster {
    base: PathBuf,
    pg_ctl: PathBuf,
    as_postgres: bool,
    port: u16,
    password: String,
    running: bool,
    place: Place,
    /// Processes stopped by `pause(true)`, continued before anything else is done to them.
    stopped: Vec<u32>,
}

impl PgCluster {
    /// `initdb` into a fresh directory, then `pg_ctl start` on a free port. Blocks.
    pub fn start() -> Result<PgCluster, String> {
        PgCluster::start_at(Place::default(), None)
    }

    /// `initdb` into a fresh directory, then `pg_ctl start` at `place`, with `password` for
    /// [`PG_USER`] (a fresh one when `None`). Blocks.
    pub fn start_at(place: Place, password: Option<&str>) -> Result<PgCluster, String> {
        let (initdb, pg_ctl) = find_pg_binaries().ok_or(
            "PostgreSQL's initdb and pg_ctl were found neither on PATH, nor by `pg_config \
             --bindir`, nor under /usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)",
        )?;
        let as_postgres = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if as_postgres
            && !Command::new("id")
                .arg("postgres")
                .output()
                .is_ok_and(|o| o.status.success())
        {
            return Err("running as root, and there is no `postgres` user to run initdb as".into());
        }
        let base = fresh_dir("pg")?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut cluster = PgCluster {
            base,
            pg_ctl,
            as_postgres,
            port: 0,
            password: password
                .map(str::to_string)
                .unwrap_or_else(|| format!("cmp-{}-{nanos:x}", std::process::id())),
            running: false,
            place,
            stopped: Vec::new(),
        };
        // From here on, Drop cleans up whatever happens.
        let pwfile = cluster.base.join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", cluster.password))
            .map_err(|e| format!("write {}: {e}", pwfile.display()))?;
        if as_postgres {
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.base)
                .output()
                .map_err(|e| format!("run chown: {e}"))?;
            if !out.status.success() {
                return Err(format!("chown failed: {}", text(&out)));
            }
        }
        let out = cluster
            .command(&initdb)
            .arg("-D")
            .arg(cluster.data())
            .args([
                "-U",
                PG_USER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("--no-sync")
            .output()
            .map_err(|e| format!("run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", text(&out)));
        }
        if !cluster.place.ip().is_loopback() {
            // initdb lets TCP in from loopback only; the clients of a server in a namespace
            // come from the other end of its link.
            use std::io::Write;
            let hba = cluster.data().join("pg_hba.conf");
            std::fs::OpenOptions::new()
                .append(true)
                .open(&hba)
                .and_then(|mut f| f.write_all(b"host all all 0.0.0.0/0 scram-sha-256\n"))
                .map_err(|e| format!("append to {}: {e}", hba.display()))?;
        }
        on_a_port(cluster.place.port, |port| {
            cluster.port = port;
            cluster.start_again()
        })?;
        Ok(cluster)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.place.ip(), self.port)
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The postmaster's process id (`postmaster.pid`'s first line) while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        if !self.running {
            return None;
        }
        let lock = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        lock.lines().next()?.trim().parse().ok()
    }

    /// The postmaster and its children (backends, background workers). Each is a process
    /// group of its own, so a signal to the postmaster's group would reach it alone.
    fn processes(&self) -> Result<Vec<u32>, String> {
        let pm = self
            .postmaster_pid()
            .ok_or("PostgreSQL is not running (no postmaster.pid)")?;
        let mut all = vec![pm];
        all.extend(children_of(pm));
        Ok(all)
    }

    /// SIGSTOP (`stop`) or SIGCONT (`!stop`) to the postmaster and every child of it: the
    /// kernel still accepts and acknowledges, no process answers.
    pub fn pause(&mut self, stop: bool) -> Result<(), String> {
        if stop {
            let all = self.processes()?;
            signal(&all, "STOP")?;
            self.stopped = all;
            Ok(())
        } else {
            signal(&std::mem::take(&mut self.stopped), "CONT")
        }
    }

    /// `pg_ctl stop -m immediate`: the postmaster SIGQUITs every backend and exits without a
    /// shutdown checkpoint, as close to a crash as `pg_ctl` goes. Blocks until it is gone.
    pub fn kill(&mut self) -> Result<(), String> {
        self.stop("immediate")
    }

    /// `pg_ctl stop -m <mode>` (continued first if it was stopped); blocks until it is gone.
    fn stop(&mut self, mode: &str) -> Result<(), String> {
        let _ = self.pause(false);
        if !self.running {
            return Ok(());
        }
        let out = self.pg_ctl(&["-m", mode, "-w", "-t", "30", "stop"])?;
        if !out.status.success() {
            return Err(format!("pg_ctl stop -m {mode} failed: {}", text(&out)));
        }
        self.running = false;
        Ok(())
    }

    /// `pg_ctl start` on this cluster's port (crash recovery after `kill`). Blocks until the
    /// server is ready (at most 30 s).
    pub fn start_again(&mut self) -> Result<(), String> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses={} -c fsync=off",
            self.port,
            self.base.display(),
            self.place.ip()
        );
        let log = self.base.join("log");
        let log = log
            .to_str()
            .ok_or("temp dir path is not UTF-8")?
            .to_string();
        let out = self.pg_ctl(&["-o", &opts, "-l", &log, "-w", "-t", "30", "start"])?;
        if !out.status.success() {
            let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
            return Err(format!(
                "pg_ctl start on port {}: {}\n--- server log tail ---\n{}",
                self.port,
                text(&out),
                last_lines(&self.base.join("log"), 20)
            ));
        }
        self.running = true;
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output, String> {
        self.command(&self.pg_ctl)
            .arg("-D")
            .arg(self.data())
            .args(args)
            .output()
            .map_err(|e| format!("run pg_ctl: {e}"))
    }

    /// `prog` as a command, run as `postgres` when we are root (inside the namespace when
    /// there is one).
    fn command(&self, prog: &Path) -> Command {
        let mut cmd = if self.as_postgres {
            let mut c = self.place.command("runuser");
            c.args(["-u", "postgres", "--"]).arg(prog);
            c
        } else {
            self.place.command(prog)
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    fn data(&self) -> PathBuf {
        self.base.join("data")
    }
}

/// The face-off's faults (the other binaries do not use them).
#[allow(dead_code)]
impl PgCluster {
    /// Whether it was started and not stopped since (by this program).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// A crash: SIGKILL to the postmaster and every child at once (the kernel closes every
    /// connection), then waits until they are gone. `start_again` recovers.
    pub fn crash(&mut self) -> Result<(), String> {
        let _ = self.pause(false);
        let all = self.processes()?;
        signal(&all, "KILL")?;
        let end = Instant::now() + Duration::from_secs(10);
        while !all.iter().all(|&p| gone(p)) {
            if Instant::now() > end {
                return Err(format!(
                    "PostgreSQL processes {all:?} still there 10 s after SIGKILL"
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.running = false;
        Ok(())
    }

    /// `pg_ctl stop -m fast`: every session is told (FATAL 57P01) and closed, then the server
    /// shuts down cleanly. Blocks until it is gone.
    pub fn stop_fast(&mut self) -> Result<(), String> {
        self.stop("fast")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.pause(false);
        if self.running {
            let _ = self.pg_ctl(&["-m", "immediate", "-w", "-t", "30", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// `initdb` and `pg_ctl`: from PATH, else `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn find_pg_binaries() -> Option<(PathBuf, PathBuf)> {
    let both = |dir: &Path| {
        let (i, p) = (dir.join("initdb"), dir.join("pg_ctl"));
        (i.is_file() && p.is_file()).then_some((i, p))
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(found) = std::env::split_paths(&path).find_map(|d| both(&d)) {
        return Some(found);
    }
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        && out.status.success()
        && let Some(found) = both(Path::new(String::from_utf8_lossy(&out.stdout).trim()))
    {
        return Some(found);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions.into_iter().rev().find_map(|(_, bin)| both(&bin))
}
