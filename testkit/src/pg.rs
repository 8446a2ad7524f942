//! A throwaway PostgreSQL cluster per test: `initdb` into a fresh directory under the system
//! temp dir, `pg_ctl start` on a free loopback port, stopped and removed on drop (also when
//! the test panicked). As root, `initdb` and `pg_ctl` run as the `postgres` user.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// The superuser created by `initdb`.
const USER: &str = "livepool";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A running (or stopped) throwaway cluster. Authentication is SCRAM-SHA-256 for everyone.
pub struct PgCluster {
    /// Holds `data/`, `pwfile`, `log` and the Unix socket.
    base: PathBuf,
    initdb: PathBuf,
    pg_ctl: PathBuf,
    as_postgres: bool,
    port: u16,
    /// The network namespace the server runs in (`None`: this process's) and the address it
    /// listens on.
    netns: Option<String>,
    ip: std::net::Ipv4Addr,
    password: String,
    running: bool,
}

impl PgCluster {
    /// Creates and starts a cluster. `None` (after `skip_without` printed why) when the
    /// PostgreSQL binaries are not installed.
    pub async fn start() -> Option<PgCluster> {
        Self::start_at(None, std::net::Ipv4Addr::LOCALHOST).await
    }

    /// Creates and starts a cluster whose server runs in network namespace `netns`,
    /// listening on `ip` (an address of that namespace): for blackholing it (root only; the
    /// caller made the namespace).
    pub async fn start_in(netns: &str, ip: std::net::Ipv4Addr) -> Option<PgCluster> {
        Self::start_at(Some(netns.to_owned()), ip).await
    }

    async fn start_at(netns: Option<String>, ip: std::net::Ipv4Addr) -> Option<PgCluster> {
        let Some((initdb, pg_ctl)) = find_binaries() else {
            crate::skip_without(false, "PostgreSQL (initdb, pg_ctl)");
            return None;
        };
        let as_postgres = is_root();
        if as_postgres && !user_exists("postgres") {
            crate::skip_without(false, "a `postgres` user to run initdb as when root");
            return None;
        }
        let cluster = tokio::task::spawn_blocking(move || {
            PgCluster::create(initdb, pg_ctl, as_postgres, netns, ip)
        })
        .await
        .expect("cluster setup thread");
        Some(cluster)
    }

    fn create(
        initdb: PathBuf,
        pg_ctl: PathBuf,
        as_postgres: bool,
        netns: Option<String>,
        ip: std::net::Ipv4Addr,
    ) -> PgCluster {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir().join(format!("livepool-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("create cluster dir");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let password = format!("lp-{}-{n}-{nanos:x}", std::process::id());
        let mut cluster = PgCluster {
            base,
            initdb,
            pg_ctl,
            as_postgres,
            port: 0,
            netns,
            ip,
            password,
            running: false,
        };
        // From here on, Drop cleans up whatever happens.
        std::fs::write(cluster.pwfile(), format!("{}\n", cluster.password)).expect("write pwfile");
        if as_postgres {
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.base)
                .output()
                .expect("run chown");
            assert!(out.status.success(), "chown failed: {}", text(&out));
        }
        let mut initdb = cluster.command(&cluster.initdb);
        initdb
            .arg("-D")
            .arg(cluster.data())
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", cluster.pwfile().display()))
            .arg("--no-sync");
        let out = initdb.output().expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", text(&out));

        if cluster.netns.is_some() {
            // Clients come from the other end of the namespace's link, not from loopback.
            let hba = cluster.data().join("pg_hba.conf");
            let mut lines = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
            lines.push_str("host all all samenet scram-sha-256\n");
            std::fs::write(&hba, lines).expect("write pg_hba.conf");
        }
        // A free port can be taken by someone else before the server binds it: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            match cluster.launch() {
                Ok(()) => return cluster,
                Err(e) => last = e,
            }
        }
        panic!(
            "could not start PostgreSQL: {last}\n--- server log tail ---\n{}",
            cluster.log_tail()
        );
    }

    /// The server's loopback TCP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }

    /// The superuser name.
    pub fn user(&self) -> &str {
        USER
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Stops the server (fast mode: sessions get FATAL 57P01 and are closed). Blocks.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let out = self.pg_ctl_run(&["-m", "fast", "-w", "-t", "30", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}\n--- server log tail ---\n{}",
            text(&out),
            self.log_tail()
        );
        self.running = false;
    }

    /// Starts a stopped server again on the same port. Blocks.
    pub fn start_again(&mut self) {
        if let Err(e) = self.launch() {
            panic!(
                "could not restart PostgreSQL: {e}\n--- server log tail ---\n{}",
                self.log_tail()
            );
        }
    }

    /// Turns TLS on with this certificate and key (PEM files) and makes it required for TCP
    /// connections (`hostssl` only in `pg_hba.conf`), then restarts the server. Blocks.
    pub fn require_tls(&mut self, cert: &Path, key: &Path) {
        let data = self.data();
        std::fs::copy(cert, data.join("server.crt")).expect("copy the certificate");
        std::fs::copy(key, data.join("server.key")).expect("copy the key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod the key");
        if self.as_postgres {
            let out = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"))
                .output()
                .expect("run chown");
            assert!(out.status.success(), "chown failed: {}", text(&out));
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        use std::io::Write as _;
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'"
        )
        .expect("write postgresql.conf");
        let hba = std::fs::read_to_string(data.join("pg_hba.conf")).expect("read pg_hba.conf");
        let hba: String = hba
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        self.restart();
    }

    /// Stops (fast mode) and starts the server again on the same port. Blocks.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    fn launch(&mut self) -> Result<(), String> {
        assert!(!self.running, "server already running");
        let opts = format!(
            "-p {} -k {} -c listen_addresses={} -c fsync=off",
            self.port,
            self.base.display(),
            self.ip
        );
        let log = self.base.join("log");
        let log = log.to_str().expect("utf-8 temp path");
        let out = self.pg_ctl_run(&["-o", &opts, "-l", log, "-w", "-t", "30", "start"]);
        if !out.status.success() {
            // Make sure nothing half-started is left behind before the next attempt.
            let _ = self.pg_ctl_run(&["-m", "immediate", "-w", "stop"]);
            return Err(format!(
                "pg_ctl start on port {}: {}",
                self.port,
                text(&out)
            ));
        }
        self.running = true;
        let addr = self.addr();
        let reachable = match &self.netns {
            Some(ns) => {
                crate::netns::Netns::exec_in(ns, move || std::net::TcpStream::connect(addr).is_ok())
            }
            None => std::net::TcpStream::connect(addr).is_ok(),
        };
        if !reachable {
            self.stop();
            return Err(format!("server does not accept TCP on {}", self.addr()));
        }
        Ok(())
    }

    fn pg_ctl_run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(&self.pg_ctl);
        cmd.arg("-D").arg(self.data()).args(args);
        cmd.output().expect("run pg_ctl")
    }

    /// `prog` as a command: in the server's network namespace if it has one, as `postgres`
    /// when we are root.
    fn command(&self, prog: &Path) -> Command {
        let mut words: Vec<std::ffi::OsString> = Vec::new();
        if let Some(ns) = &self.netns {
            words.extend(["ip", "netns", "exec", ns.as_str()].map(Into::into));
        }
        if self.as_postgres {
            words.extend(["runuser", "-u", "postgres", "--"].map(Into::into));
        }
        words.push(prog.into());
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..]);
        cmd.stdin(Stdio::null());
        cmd
    }

    fn data(&self) -> PathBuf {
        self.base.join("data")
    }

    fn pwfile(&self) -> PathBuf {
        self.base.join("pwfile")
    }

    /// The last 40 lines of the server log.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.base.join("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let out = self.pg_ctl_run(&["-m", "fast", "-w", "-t", "30", "stop"]);
            if !out.status.success() {
                let _ = self.pg_ctl_run(&["-m", "immediate", "-w", "stop"]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `initdb` and `pg_ctl`: from PATH, else `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn find_binaries() -> Option<(PathBuf, PathBuf)> {
    let both = |dir: &Path| {
        let (i, p) = (dir.join("initdb"), dir.join("pg_ctl"));
        (i.is_file() && p.is_file()).then_some((i, p))
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let on_path = |name: &str| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file());
    if let (Some(i), Some(p)) = (on_path("initdb"), on_path("pg_ctl")) {
        return Some((i, p));
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
