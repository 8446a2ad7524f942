//! A network namespace of this process, for the faults a loopback server cannot have: a link
//! that goes down (a blackhole: nothing arrives, nothing is refused) and connections a
//! middlebox forgot (the server side gone while nothing could tell the client).
//!
//! Layout: namespace `livepool-faceoff-<pid>` with one end of a veth pair (`lpfo<pid>n`,
//! 10.a.b.2/30) and its loopback; the other end (`lpfo<pid>r`, 10.a.b.1/30) stays in the
//! root namespace, where the pools run; `a.b` comes from the process id. Servers started
//! inside listen on 10.a.b.2 and are reached through the pair.
//!
//! - **Link down** sets the namespace's end down. The root end loses its carrier but keeps
//!   its address and route (a route with `linkdown` is still used), so packets to 10.a.b.2
//!   are dropped by the pair instead of taking the default route; the neighbour entry is
//!   permanent, so no ARP failure turns the silence into "no route to host". Connects time
//!   out, sent data is retransmitted: a blackhole.
//! - **Link up** restores it; TCP retransmits, connections that survived carry on.
//! - Inside, `tcp_orphan_retries` is 1: a server killed while the link is down gives up its
//!   unacknowledged FIN within about a second, so after link up its old peers hold half-open
//!   connections (the next thing they send is answered with a reset).
//!
//! Cleanup: `Drop` kills what still runs inside (processes this program started there),
//! deletes the pair and the namespace; it runs on error and on Ctrl-C (the run's future is
//! dropped) as well. Namespaces left behind by a run that was SIGKILLed (their process id is
//! gone) are removed by the next run.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::servers::text;

const PREFIX: &str = "livepool-faceoff-";

/// Runs `ip ARGS`; an error with its output if it fails.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), text(&out)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why network namespaces cannot be used here, if they cannot.
pub fn unavailable() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        return Some("needs root (network namespaces)".into());
    }
    if ip(&["netns", "list"]).is_err() {
        return Some("needs root (network namespaces): `ip netns` does not work here".into());
    }
    None
}

pub struct NetNs {
    name: String,
    host_if: String,
    ns_if: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
}

impl NetNs {
    /// Creates the namespace, the pair, the addresses and the permanent neighbour entry.
    pub fn create() -> Result<NetNs, String> {
        remove_stale();
        let pid = std::process::id();
        let (a, b) = (((pid >> 8) & 0xff) as u8, (pid & 0xff) as u8);
        let ns = NetNs {
            name: format!("{PREFIX}{pid}"),
            host_if: format!("lpfo{pid}r"),
            ns_if: format!("lpfo{pid}n"),
            host_ip: Ipv4Addr::new(10, a, b, 1),
            ns_ip: Ipv4Addr::new(10, a, b, 2),
        };
        // From here on, Drop removes whatever was made.
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
            "netns",
            &ns.name,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ns.inside(&["addr", "add", &format!("{}/30", ns.ns_ip), "dev", &ns.ns_if])?;
        ns.inside(&["link", "set", &ns.ns_if, "up"])?;
        ns.inside(&["link", "set", "lo", "up"])?;
        let mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", ns.host_if));
        let host_mac = mac.map_err(|e| format!("{}'s address: {e}", ns.host_if))?;
        let ns_mac = ns.exec("cat", &[&format!("/sys/class/net/{}/address", ns.ns_if)])?;
        ip(&[
            "neigh",
            "replace",
            &ns.ns_ip.to_string(),
            "lladdr",
            ns_mac.trim(),
            "dev",
            &ns.host_if,
            "nud",
            "permanent",
        ])?;
        ns.inside(&[
            "neigh",
            "replace",
            &ns.host_ip.to_string(),
            "lladdr",
            host_mac.trim(),
            "dev",
            &ns.ns_if,
            "nud",
            "permanent",
        ])?;
        ns.exec("sysctl", &["-qw", "net.ipv4.tcp_orphan_retries=1"])?;
        // The route to the namespace must go through the pair, never the default route.
        let route = ip(&["route", "get", &ns.ns_ip.to_string()])?;
        if !route.contains(&format!("dev {}", ns.host_if)) {
            return Err(format!(
                "{} is not routed through {}: {route}",
                ns.ns_ip, ns.host_if
            ));
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The servers' address inside.
    pub fn ip(&self) -> Ipv4Addr {
        self.ns_ip
    }

    /// `ip ARGS` inside the namespace.
    fn inside(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `prog ARGS` inside the namespace and returns its output.
    pub fn exec(&self, prog: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, prog])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run ip netns exec {prog}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{prog} {} (in {}): {}",
                args.join(" "),
                self.name,
                text(&out)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The namespace's end of the pair down: a blackhole, both ways.
    pub fn link_down(&self) -> Result<(), String> {
        self.inside(&["link", "set", &self.ns_if, "down"]).map(drop)
    }

    /// And up again (inside, the routes come back with the link; ARP resolves the root end).
    pub fn link_up(&self) -> Result<(), String> {
        self.inside(&["link", "set", &self.ns_if, "up"]).map(drop)
    }

    /// TCP sockets inside on `port`: `(listening, others)` (others: connections, including
    /// the orphans of a killed server still retransmitting their FIN).
    pub fn sockets(&self, port: u16) -> Result<(usize, usize), String> {
        let filter = format!("( sport = :{port} )");
        let all = self.exec("ss", &["-Htan", &filter])?;
        let listening = all.lines().filter(|l| l.starts_with("LISTEN")).count();
        let others = all.lines().filter(|l| !l.trim().is_empty()).count() - listening;
        Ok((listening, others))
    }

    /// Waits until something listens on `port` inside (at most `limit`).
    pub fn wait_listening(&self, port: u16, limit: Duration) -> Result<(), String> {
        let end = Instant::now() + limit;
        loop {
            if self.sockets(port)?.0 > 0 {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(format!(
                    "nothing listens on port {port} in {} after {limit:?}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until no connection is left inside on `port` (the orphans gave up), at most
    /// `limit`; returns how many are left.
    pub fn wait_no_connections(&self, port: u16, limit: Duration) -> Result<usize, String> {
        let end = Instant::now() + limit;
        loop {
            let left = self.sockets(port)?.1;
            if left == 0 || Instant::now() > end {
                return Ok(left);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Kills the processes still inside `name` (started there by the run that made it).
fn kill_inside(name: &str) {
    let pids: Vec<u32> = ip(&["netns", "pids", name])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if !pids.is_empty() {
        let _ = crate::servers::signal(&pids, "CONT");
        let _ = crate::servers::signal(&pids, "KILL");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn remove(name: &str, host_if: &str) {
    kill_inside(name);
    // Deleting either end deletes the pair; the namespace's end goes with the namespace.
    let _ = Command::new("ip")
        .args(["link", "del", host_if])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = ip(&["netns", "del", name]);
}

/// Namespaces of earlier runs whose process is gone.
fn remove_stale() {
    let list = ip(&["netns", "list"]).unwrap_or_default();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing network namespace {name} left by an earlier run");
            remove(name, &format!("lpfo{pid}r"));
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        remove(&self.name, &self.host_if);
    }
}
