//! Stopping a test `redis-server` with SIGSTOP (the kernel still accepts its connections and
//! acknowledges what is sent; nobody reads or answers) and letting it go on with SIGCONT. The
//! guard always resumes it, a failed assertion included, so that nothing is left stopped.
//!
//! Feature `redis` (livepool-redis's tests turn it on).

use std::process::Command;

use crate::redis_admin::text;
use crate::redis_server::RedisServer;
use crate::wait_until;

/// The server's process id, from its own `INFO server` (read before stopping it).
pub async fn server_pid(server: &RedisServer) -> u32 {
    let info = text(&server.admin_cmd(&[b"INFO", b"server"]).await);
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix("process_id:"))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no process_id in INFO server:\n{info}"))
}

/// `kill -s <signal> -- <pid>`.
fn signal(pid: u32, signal: &str) -> Result<(), String> {
    let out = Command::new("kill")
        .args(["-s", signal, "--", &pid.to_string()])
        .output()
        .map_err(|e| format!("run kill: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "kill -s {signal} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The process's state letter in `/proc/<pid>/stat` (`T`: stopped by a signal).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S …": the command may hold spaces and parentheses; the state follows
    // the last ')'.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// A stopped server; resumed when dropped.
pub struct Stopped {
    pid: u32,
}

impl Stopped {
    /// SIGSTOPs `pid` and returns once the kernel reports it stopped: from then on nothing
    /// it was sent is answered until the guard is dropped.
    pub async fn stop(pid: u32) -> Stopped {
        signal(pid, "STOP").unwrap_or_else(|e| panic!("{e}"));
        let guard = Stopped { pid };
        wait_until(10, "the server stopped (state T)", || {
            state(pid) == Some('T')
        })
        .await;
        guard
    }

    /// SIGCONT now (the same as dropping the guard), and returns once the kernel reports it
    /// running again.
    pub async fn resume(self) {
        let pid = self.pid;
        drop(self);
        wait_until(10, "the server resumed", || state(pid) != Some('T')).await;
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Err(e) = signal(self.pid, "CONT") {
            // Never a second panic while unwinding; the server's own drop kills it anyway.
            eprintln!("could not resume redis-server {}: {e}", self.pid);
        }
    }
}
