//! A real `redis-server` child process for tests: free loopback ports, optional
//! `requirepass`, an ACL user and TLS; killed and reaped on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::skip_without;

/// How to start the server.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    password: Option<String>,
    acl_user: Option<(String, String)>,
    tls: bool,
    extra: Vec<String>,
}

impl RedisOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// `--requirepass`: the `default` user's password.
    pub fn password(mut self, pw: &str) -> Self {
        self.password = Some(pw.to_string());
        self
    }

    /// An ACL user with every permission on every key: `user NAME on >PW ~* +@all`.
    pub fn acl_user(mut self, name: &str, pw: &str) -> Self {
        self.acl_user = Some((name.to_string(), pw.to_string()));
        self
    }

    /// TLS only: `--port 0 --tls-port P` with a fresh self-signed certificate.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// One more command-line word (such as `--timeout`, then `5`).
    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.to_string());
        self
    }
}

/// A `redis-server` child on 127.0.0.1, killed (SIGKILL) and reaped on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    opts: RedisOptions,
    dir: PathBuf,
    certs: Option<crate::tls::TestCerts>,
}

impl RedisServer {
    /// A plain server with no password. `None` when `redis-server` is not installed.
    pub async fn start() -> Option<RedisServer> {
        RedisServer::start_with(RedisOptions::new()).await
    }

    /// Starts a server on a free port and waits (at most 10 s) until it answers `PING`;
    /// panics with its log otherwise. `None` when `redis-server` is not installed (after
    /// `skip_without` printed why, or panicked under `LIVEPOOL_REQUIRE_ALL=1`).
    pub async fn start_with(opts: RedisOptions) -> Option<RedisServer> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if skip_without(installed, "redis-server") {
            return None;
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "livepool-redis-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let certs = opts.tls.then(crate::tls::TestCerts::new);
        let mut server = RedisServer {
            child: None,
            port: 0,
            opts,
            dir,
            certs,
        };
        // A free port can be taken by someone else before redis binds it: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            server.port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("bind a free loopback port")
                .port();
            match server.launch().await {
                Ok(()) => return Some(server),
                Err(e) => last = e,
            }
        }
        panic!("could not start redis-server: {last}");
    }

    /// The address of its (plain or TLS) port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn is_tls(&self) -> bool {
        self.opts.tls
    }

    /// The `requirepass` password, if any.
    pub fn password(&self) -> Option<&str> {
        self.opts.password.as_deref()
    }

    /// The certificate the TLS port presents (and that `certs().client_config()` trusts).
    pub fn certs(&self) -> &crate::tls::TestCerts {
        self.certs.as_ref().expect("server started without tls")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |words: &[&str]| a.extend(words.iter().map(|w| w.to_string()));
        push(&["--bind", "127.0.0.1"]);
        push(&["--save", "", "--appendonly", "no", "--daemonize", "no"]);
        // DEBUG SLEEP stalls the server for the heartbeat-timeout tests.
        push(&["--enable-debug-command", "yes"]);
        push(&["--dir", &self.dir.display().to_string()]);
        push(&["--logfile", &self.log_path().display().to_string()]);
        let port = self.port.to_string();
        if self.opts.tls {
            let c = self.certs();
            push(&["--port", "0", "--tls-port", &port]);
            push(&["--tls-cert-file", &c.cert_path().display().to_string()]);
            push(&["--tls-key-file", &c.key_path().display().to_string()]);
            push(&["--tls-ca-cert-file", &c.cert_path().display().to_string()]);
            push(&["--tls-auth-clients", "no"]);
        } else {
            push(&["--port", &port]);
        }
        if let Some(pw) = &self.opts.password {
            push(&["--requirepass", pw]);
        }
        if let Some((name, pw)) = &self.opts.acl_user {
            push(&["--user", name, "on", &format!(">{pw}"), "~*", "&*", "+@all"]);
        }
        a.extend(self.opts.extra.iter().cloned());
        a
    }

    async fn launch(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "redis-server already running");
        let child = Command::new("redis-server")
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        self.child = Some(child);
        let res = self.wait_ready().await;
        if res.is_err() {
            self.stop();
        }
        res
    }

    /// Waits (at most 10 s) until the server answers PING (`+PONG`, or `-NOAUTH` when a
    /// password is required: either way it is serving).
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "redis-server on port {} exited: {status}; log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            if let Ok(Some(line)) =
                tokio::time::timeout(Duration::from_secs(1), self.raw_ping()).await
                && (line == "+PONG" || line.starts_with("-NOAUTH"))
            {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "redis-server on port {} did not answer PING within 10 s; log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            // Polling a process that is starting up: the next try, not a wait for an event.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One PING on a fresh connection; the first reply line.
    async fn raw_ping(&self) -> Option<String> {
        if self.opts.tls {
            let mut s = self.certs().connect(self.addr()).await.ok()?;
            return ping_line(&mut s).await;
        }
        let mut s = TcpStream::connect(self.addr()).await.ok()?;
        ping_line(&mut s).await
    }

    /// Kills the server (SIGKILL: the kernel closes every connection) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port, same options.
    pub async fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.launch().await {
            panic!("restarting redis-server on port {}: {e}", self.port);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn ping_line<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Option<String> {
    s.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
    s.flush().await.ok()?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 256];
    while !got.ends_with(b"\r\n") {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 || got.len() > 4096 {
            return None;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&got[..got.len() - 2]).into_owned();
    Some(line)
}
