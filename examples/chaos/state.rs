//! What the servers, the fault scheduler, the workload and the report share: the request
//! format, each embedded server's connections and counters, the outages and the oracles' tallies.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use livepool::{Conn, FramePing};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::faults::Fault;
use crate::opts::Opts;

pub(crate) const REQUEST: u8 = b'R';

pub(crate) const REQ_LEN: usize = 16;

pub(crate) const DOWNTIME: Duration = Duration::from_secs(1);

/// With several endpoints, a `restart` is an outage of one server this long...
pub(crate) const OUTAGE: Duration = Duration::from_secs(3);

/// A server-side connection the scheduler may fault.
pub(crate) struct ServerConn {
    pub(crate) tx: mpsc::UnboundedSender<Fault>,
    pub(crate) faulted: bool,
}

/// One embedded server (one endpoint): its connections, faults and requests.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    /// The endpoint's name in the pool and the balancer (`addr` as text).
    pub(crate) name: String,
    pub(crate) conns: Mutex<HashMap<u64, ServerConn>>,
    /// Client address (as the server sees it) → the last fault applied to it, and when.
    pub(crate) faulted: Mutex<HashMap<SocketAddr, (Fault, Instant)>>,
    pub(crate) down: AtomicBool,
    /// Requests whose connection came from this endpoint.
    pub(crate) ok: AtomicU64,
    pub(crate) failed: AtomicU64,
}

impl Server {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Server {
            addr,
            name: addr.to_string(),
            conns: Mutex::default(),
            faulted: Mutex::default(),
            down: AtomicBool::new(false),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

/// An endpoint outage (`restart` with several endpoints): which server, down when, back when.
pub(crate) struct Outage {
    pub(crate) server: usize,
    pub(crate) down: Instant,
    pub(crate) back: Option<Instant>,
}

/// Shared by the servers, the fault scheduler and the workload.
pub(crate) struct Chaos {
    pub(crate) opts: Opts,
    pub(crate) end: Instant,
    pub(crate) servers: Vec<Server>,
    pub(crate) injected: [AtomicU64; 6],
    pub(crate) outages: Mutex<Vec<Outage>>,
    pub(crate) next_token: AtomicU64,
    pub(crate) ok: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) failures: Mutex<BTreeMap<&'static str, u64>>,
    pub(crate) stale: Mutex<Vec<String>>,
    pub(crate) leaks: AtomicU64,
}

impl Chaos {
    pub(crate) fn record(&self, srv: usize, peer: SocketAddr, fault: Fault) {
        self.servers[srv]
            .faulted
            .lock()
            .unwrap()
            .insert(peer, (fault, Instant::now()));
        if fault != Fault::Restart {
            self.injected[fault as usize].fetch_add(1, Relaxed);
        }
    }

    /// The server behind a connection's endpoint.
    pub(crate) fn server_of(&self, conn: &Conn<FramePing>) -> usize {
        let name = conn.endpoint();
        self.servers
            .iter()
            .position(|s| s.name == name)
            .unwrap_or(0)
    }

    /// How long a `restart` keeps its server down.
    pub(crate) fn downtime(&self) -> Duration {
        if self.servers.len() > 1 {
            OUTAGE
        } else {
            DOWNTIME
        }
    }
}
