//! The faults, done to real servers by the kernel and the servers themselves (no mocks), each
//! at a recorded moment and healed at another:
//!
//! | fault | done by | healed by |
//! |-------|---------|-----------|
//! | `restart` | a clean shutdown: Redis SIGTERM (it closes its clients and exits), Postgres `pg_ctl stop -m fast` (every session told FATAL 57P01, then closed) | the same server started again on the same port, after the outage |
//! | `kill` | SIGKILL with requests in flight: `redis-server`; the postmaster and every backend at once (a crash: the kernel closes the connections, nobody says goodbye) | started again (Postgres: crash recovery) after the outage |
//! | `idle-kill` | with no traffic, the server closes every client connection: `CLIENT KILL TYPE normal`, `pg_terminate_backend` of every client backend | nothing to heal: traffic resumes after the idle window |
//! | `idle-drop` | with no traffic, in the namespace: the link goes down, the server is killed and started again while it cannot tell anyone (its FINs are lost; its orphaned sockets give up), the link comes up: every pooled connection is half-open, as after a NAT or firewall forgot it | the link up; traffic resumes after the idle window |
//! | `blackhole` | in the namespace, the link goes down with requests in flight: nothing arrives, nothing is refused | the link up after the outage (the connections survive: TCP retransmits) |
//! | `sigstop` | SIGSTOP to the server's processes: the kernel still accepts and acknowledges, nobody answers | SIGCONT after the outage |
//! | `failover` | two servers; the first (primary) is SIGKILLed for good | nothing: the second serves all along; the primary is started again after the round |
//!
//! Only the `Server` and `NetNs` here touch processes and links; the round (in `main.rs`)
//! decides when.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::netns::NetNs;
use crate::servers::{PG_USER, PgCluster, Place, RedisServer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Redis,
    Postgres,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Redis => "redis",
            ServerKind::Postgres => "postgres",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            ServerKind::Redis => "Redis",
            ServerKind::Postgres => "PostgreSQL",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Restart,
    Kill,
    IdleKill,
    IdleDrop,
    Blackhole,
    Stop,
    Failover,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::Restart,
        Fault::Kill,
        Fault::IdleKill,
        Fault::IdleDrop,
        Fault::Blackhole,
        Fault::Stop,
        Fault::Failover,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Restart => "restart",
            Fault::Kill => "kill",
            Fault::IdleKill => "idle-kill",
            Fault::IdleDrop => "idle-drop",
            Fault::Blackhole => "blackhole",
            Fault::Stop => "sigstop",
            Fault::Failover => "failover",
        }
    }

    pub fn parse(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Needs a network namespace (root).
    pub fn needs_netns(self) -> bool {
        matches!(self, Fault::IdleDrop | Fault::Blackhole)
    }

    /// Done while no request runs (the workers paused).
    pub fn idle(self) -> bool {
        matches!(self, Fault::IdleKill | Fault::IdleDrop)
    }

    /// What happens, in a few words, for the table's notes.
    pub fn what(self, kind: ServerKind) -> &'static str {
        match (self, kind) {
            (Fault::Restart, ServerKind::Redis) => {
                "redis-server SIGTERMed (clean shutdown), started again on the same port"
            }
            (Fault::Restart, ServerKind::Postgres) => {
                "`pg_ctl stop -m fast` (sessions told FATAL 57P01), started again"
            }
            (Fault::Kill, ServerKind::Redis) => {
                "redis-server SIGKILLed with requests in flight, started again"
            }
            (Fault::Kill, ServerKind::Postgres) => {
                "postmaster and every backend SIGKILLed with requests in flight, started again \
                 (crash recovery)"
            }
            (Fault::IdleKill, ServerKind::Redis) => {
                "no traffic; `CLIENT KILL TYPE normal` closes every pooled connection"
            }
            (Fault::IdleKill, ServerKind::Postgres) => {
                "no traffic; `pg_terminate_backend` of every client backend"
            }
            (Fault::IdleDrop, _) => {
                "no traffic; link down, server restarted unheard, link up: every pooled \
                 connection half-open"
            }
            (Fault::Blackhole, _) => "link down with requests in flight, then up",
            (Fault::Stop, _) => "server processes SIGSTOPped (the kernel still ACKs), then SIGCONT",
            (Fault::Failover, _) => "primary SIGKILLed for good; the secondary serves",
        }
    }
}

/// One server of the run, with the operations the faults need. Blocking methods are called
/// through `block_in_place` from the round.
pub enum Server {
    Redis(RedisServer),
    Postgres(PgCluster),
}

impl Server {
    /// Starts one (blocks). A Postgres cluster gets `password` when given.
    pub fn start(kind: ServerKind, place: Place, password: Option<&str>) -> Result<Server, String> {
        Ok(match kind {
            ServerKind::Redis => Server::Redis(RedisServer::start_at(place)?),
            ServerKind::Postgres => Server::Postgres(PgCluster::start_at(place, password)?),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Server::Redis(s) => s.addr(),
            Server::Postgres(s) => s.addr(),
        }
    }

    pub fn password(&self) -> &str {
        match self {
            Server::Redis(_) => "",
            Server::Postgres(s) => s.password(),
        }
    }

    /// SIGKILL of every process of the server (blocks until gone).
    fn crash(&mut self) -> Result<(), String> {
        match self {
            Server::Redis(s) => {
                s.kill();
                Ok(())
            }
            Server::Postgres(s) => s.crash(),
        }
    }

    /// A clean shutdown (blocks until gone).
    fn shut_down(&mut self) -> Result<(), String> {
        match self {
            Server::Redis(s) => s.terminate(),
            Server::Postgres(s) => s.stop_fast(),
        }
    }

    /// Starts the process again on its port. Postgres: blocks until ready. Redis: only the
    /// spawn (wait with `wait_accepting` or the namespace's `wait_listening`).
    fn start_again(&mut self) -> Result<(), String> {
        match self {
            Server::Redis(s) => s.spawn(),
            Server::Postgres(s) => s.start_again(),
        }
    }

    fn pause(&mut self, stop: bool) -> Result<(), String> {
        match self {
            Server::Redis(s) => s.pause(stop),
            Server::Postgres(s) => s.pause(stop),
        }
    }

    /// Running again whatever happened (after a round, also one that failed half-way):
    /// continued if stopped, started if gone. Blocks.
    pub fn ensure_up(&mut self) -> Result<(), String> {
        let _ = self.pause(false);
        let down = match self {
            Server::Redis(s) => s.check_running().is_err(),
            Server::Postgres(s) => !s.is_running(),
        };
        if down {
            self.start_again()?;
        }
        Ok(())
    }

    /// Closes every client connection from the server's side; returns how many it closed.
    async fn kill_clients(&self) -> Result<u64, String> {
        match self {
            Server::Redis(s) => {
                let client = redis::Client::open(format!("redis://{}", s.addr()).as_str())
                    .map_err(|e| format!("admin client: {e}"))?;
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| format!("admin connection: {e}"))?;
                redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("normal")
                    .arg("SKIPME")
                    .arg("yes")
                    .query_async::<u64>(&mut conn)
                    .await
                    .map_err(|e| format!("CLIENT KILL: {e}"))
            }
            Server::Postgres(s) => {
                use livepool_postgres::tokio_postgres::{self, NoTls, SimpleQueryMessage};
                let addr = s.addr();
                let mut config = tokio_postgres::Config::new();
                config
                    .host(addr.ip().to_string())
                    .port(addr.port())
                    .user(PG_USER)
                    .password(s.password())
                    .dbname("postgres");
                let (client, conn) = config
                    .connect(NoTls)
                    .await
                    .map_err(|e| format!("admin connection: {e}"))?;
                let driver = tokio::spawn(conn);
                let rows = client
                    .simple_query(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                    )
                    .await
                    .map_err(|e| format!("pg_terminate_backend: {e}"))?;
                drop(client);
                let _ = driver.await;
                Ok(rows
                    .iter()
                    .find_map(|m| match m {
                        SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
                        _ => None,
                    })
                    .unwrap_or(0))
            }
        }
    }
}

/// Polls a TCP connect to `addr` every 5 ms until one succeeds (at most `limit`).
async fn wait_accepting(addr: SocketAddr, limit: Duration) -> Result<(), String> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        let attempt = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), attempt).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!(
        "{addr} does not accept TCP {limit:?} after its start"
    ))
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// When a fault was done and healed, in milliseconds since the round's `t0`, and what
/// happened (for the notes).
pub struct Marks {
    pub fault_ms: u32,
    pub heal_ms: u32,
    pub note: String,
}

/// What a fault acts on.
pub struct Target<'a> {
    pub server: &'a mut Server,
    /// The namespace `server` runs in (`idle-drop`, `blackhole`).
    pub netns: Option<&'a NetNs>,
}

/// Does `fault` to the target and heals it after `outage`; returns the moments. For the idle
/// faults the workers are paused already and the round keeps them paused after the return.
pub async fn inject(
    fault: Fault,
    target: Target<'_>,
    t0: Instant,
    outage: Duration,
) -> Result<Marks, String> {
    let ms = |t: Instant| t.duration_since(t0).as_millis() as u32;
    let Target { server, netns } = target;
    let need_ns = || netns.ok_or_else(|| format!("{}: no network namespace", fault.name()));
    let start = Instant::now();
    let secs = |d: Duration| format!("{:.3} s", d.as_secs_f64());
    match fault {
        Fault::Restart | Fault::Kill => {
            if fault == Fault::Restart {
                blocking(|| server.shut_down())?;
            } else {
                blocking(|| server.crash())?;
            }
            let gone = start.elapsed();
            tokio::time::sleep_until(start + outage).await;
            let addr = server.addr();
            blocking(|| server.start_again())?;
            wait_accepting(addr, Duration::from_secs(30)).await?;
            let heal = Instant::now();
            Ok(Marks {
                fault_ms: ms(start),
                heal_ms: ms(heal),
                note: format!(
                    "gone {} after the signal; accepting again {} after it",
                    secs(gone),
                    secs(heal - start)
                ),
            })
        }
        Fault::IdleKill => {
            let closed = server.kill_clients().await?;
            Ok(Marks {
                fault_ms: ms(start),
                heal_ms: ms(start),
                note: format!(
                    "the server closed {closed} connection(s) in {}",
                    secs(start.elapsed())
                ),
            })
        }
        Fault::IdleDrop => {
            let ns = need_ns()?;
            let port = server.addr().port();
            blocking(|| ns.link_down())?;
            let res = async {
                blocking(|| server.crash())?;
                blocking(|| server.start_again())?;
                blocking(|| ns.wait_listening(port, Duration::from_secs(30)))?;
                let left = blocking(|| ns.wait_no_connections(port, Duration::from_secs(10)))?;
                tokio::time::sleep_until(start + outage).await;
                Ok::<_, String>(left)
            }
            .await;
            // Up again whatever happened.
            blocking(|| ns.link_up())?;
            let left = res?;
            let heal = Instant::now();
            let mut note = format!(
                "link down, server restarted inside, link up {} after the fault",
                secs(heal - start)
            );
            if left > 0 {
                note += &format!(
                    "; {left} of its old connections still there at link up (their FIN may \
                     reach the client)"
                );
            }
            Ok(Marks {
                fault_ms: ms(start),
                heal_ms: ms(heal),
                note,
            })
        }
        Fault::Blackhole => {
            let ns = need_ns()?;
            blocking(|| ns.link_down())?;
            tokio::time::sleep_until(start + outage).await;
            blocking(|| ns.link_up())?;
            let heal = Instant::now();
            Ok(Marks {
                fault_ms: ms(start),
                heal_ms: ms(heal),
                note: format!("link down for {}", secs(heal - start)),
            })
        }
        Fault::Stop => {
            blocking(|| server.pause(true))?;
            tokio::time::sleep_until(start + outage).await;
            blocking(|| server.pause(false))?;
            let heal = Instant::now();
            Ok(Marks {
                fault_ms: ms(start),
                heal_ms: ms(heal),
                note: format!("stopped for {}", secs(heal - start)),
            })
        }
        Fault::Failover => {
            blocking(|| server.crash())?;
            Ok(Marks {
                fault_ms: ms(start),
                heal_ms: ms(start),
                note: format!("primary gone {} after the SIGKILL", secs(start.elapsed())),
            })
        }
    }
}
