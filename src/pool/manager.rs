//! The deadpool `Manager`: `create` opens a connection through the breaker gate (connect,
//! TLS, the protocol's setup, all within the connect timeout); `recycle` runs the cheap checks
//! of an idle member, cheapest first, and lets the protocol read bytes that arrived while it
//! was idle.

use std::io;
use std::sync::Arc;

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::breaker::{Admit, Outcome};
use crate::io::Io;
use crate::member::state::Kind;
use crate::member::{Checkout, MAX_IDLE_READS, Member, Shared, read_idle_bytes};
use crate::pool::error::Error;
use crate::pool::shared::PoolShared;
use crate::protocol::{Protocol, SetupError};
use crate::stats::EvictReason;
use crate::transport::{self, Blame, Stream, blame};

/// Creates and recycles pooled members for deadpool.
pub(crate) struct Manager<P: Protocol> {
    pub(crate) shared: Arc<PoolShared>,
    pub(crate) protocol: Arc<P>,
    /// New members go to the reaper (its idle watch and its schedule). Replaced when
    /// the reaper is restarted; held while a new member is registered and sent, so that a
    /// restart's hand-over of the live members sees each member exactly once.
    pub(crate) watch_tx: Mutex<Option<mpsc::UnboundedSender<Arc<Shared<P>>>>>,
}

impl<P: Protocol> std::fmt::Debug for Manager<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// The first wait before connecting again to a server that said it is not ready.
const BUSY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(25);
/// The longest such wait.
const BUSY_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_millis(400);
/// At most this many attempts per connect (without a connect timeout: about 1.2 s).
const BUSY_TRIES: u32 = 6;

/// Why a new connection did not become a member.
enum OpenError {
    Connect(io::Error),
    #[cfg(feature = "tls")]
    Tls(io::Error),
    Setup(SetupError),
    Timeout,
}

impl<P: Protocol> deadpool::managed::Manager for Manager<P> {
    type Type = Member<P>;
    type Error = Error;

    async fn create(&self) -> Result<Member<P>, Error> {
        let shared = &self.shared;
        // Boxed: the connect (DNS, TCP, TLS, the protocol's setup) is most of the size of
        // deadpool's checkout future, which every checkout would otherwise build and move.
        let (sock, conn) = Box::pin(self.connect()).await?;
        let id = shared.next_id();
        let member = Arc::new(Shared::new(
            &sock,
            id,
            shared.clone(),
            self.protocol.clone(),
        ));
        let watch = self.watch_tx.lock();
        member.register();
        if let Some(tx) = &*watch {
            // A reaper that is gone is restarted by the next `get()`, and the new one is
            // handed every live member: a failed send loses nothing.
            let _ = tx.send(member.clone());
        }
        drop(watch);
        tracing::debug!(conn.id = id, endpoint = %shared.endpoint, "connected");
        Ok(Member {
            shared: member,
            conn: Some(Box::new(conn)),
        })
    }

    async fn recycle(&self, member: &mut Member<P>, _: &Metrics) -> RecycleResult<Error> {
        let sh = &member.shared;
        // Bytes that keep coming back after benign reads: the protocol is not draining them.
        let mut idle_reads = 0;
        let mut life = sh.life();
        let reason = loop {
            let mut st = sh.state();
            if st.kind() == Kind::Busy {
                // Boxed: rare (a heartbeat in flight), and its timer would double the size of
                // every checkout future.
                st = Box::pin(wait_for_busy(sh)).await;
            }
            let reason = match st.kind() {
                Kind::Idle => match sh.try_checkout(st, Instant::now()) {
                    Checkout::Got(conn) => {
                        member.conn = Some(conn);
                        return Ok(());
                    }
                    // The state moved on (a watcher or heartbeat took it): look again.
                    Checkout::Moved => continue,
                    // Bytes on an idle member: the protocol reads them and decides.
                    Checkout::Bytes => {
                        idle_reads += 1;
                        if idle_reads <= MAX_IDLE_READS {
                            if sh.begin_busy(st) {
                                Box::pin(read_idle_bytes(sh.clone(), true)).await;
                            }
                            continue;
                        }
                        EvictReason::UnexpectedData
                    }
                    Checkout::Dead(reason) => reason,
                },
                // Evicted in place (an empty entry: its drop records nothing) or condemned.
                Kind::Dead => sh.reason().unwrap_or(EvictReason::SocketError),
                // In use while in the idle queue cannot happen; refuse it rather than share it.
                _ => EvictReason::SocketError,
            };
            // deadpool drops the entry on an error: claim it first, so that the refill does
            // not revive it meanwhile; if the refill revived it already, look again.
            if sh.claim(life) {
                break reason;
            }
            life = sh.life();
        };
        sh.condemn(reason, Instant::now());
        Err(RecycleError::message(reason.as_str()))
    }
}

impl<P: Protocol> Manager<P> {
    /// A new connection through the breaker gate: connect, TLS, the protocol's setup, all
    /// within the connect timeout; the outcome is reported to the breaker.
    pub(crate) async fn connect(&self) -> Result<(Arc<crate::transport::Socket>, P::Conn), Error> {
        let shared = &self.shared;
        let now = Instant::now();
        // A configuration mistake seen less than a second ago: say it again, do not connect.
        if let Some(err) = shared.config_held(now) {
            return Err(err);
        }
        // The breaker gate: while it is open no connect is attempted at all.
        let (admit, seen) = shared.admit(now);
        let probe = match admit {
            Admit::Yes => None,
            Admit::Probe => Some(DropGuard::new(|| shared.probe_abandoned())),
            Admit::No { retry_after } => {
                return Err(Error::circuit_open(
                    shared.endpoint.clone(),
                    retry_after,
                    shared.last_error(),
                ));
            }
        };
        #[cfg(feature = "metrics")]
        let start = Instant::now();
        let cfg = &shared.config;
        let res = self
            .open_retrying(cfg.connect_timeout.map(|t| now + t))
            .await;
        #[cfg(feature = "metrics")]
        shared.metrics.connect(start.elapsed());
        let was_probe = probe.is_some();
        if let Some(p) = probe {
            p.disarm();
        }
        match res {
            Ok(opened) => {
                shared.report(Outcome::Success, None, seen);
                Ok(opened)
            }
            Err(e) => {
                let (err, io) = self.open_error(e);
                tracing::debug!(endpoint = %shared.endpoint, error = %err, "connect failed");
                if err.is_local_resource() {
                    // This process's failure, not the endpoint's: neither a failure nor a
                    // success for the breaker. A probe that never reached the endpoint
                    // decided nothing: hand it back so the next caller probes.
                    shared.local_resource_error(&io);
                    if was_probe {
                        shared.probe_abandoned();
                    }
                } else if err.is_config() {
                    // The server answered: the endpoint is up, this client is misconfigured.
                    // Not fed to the breaker (nor to a balancer's ejection); remembered, so
                    // that connects are paced while the mistake lasts. A probe decided
                    // nothing about the endpoint: hand it back.
                    shared.config_error(&io);
                    if was_probe {
                        shared.probe_abandoned();
                    }
                } else {
                    shared
                        .stats
                        .connect_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    shared.report(Outcome::Failure, Some(&io), seen);
                }
                Err(err)
            }
        }
    }

    /// Revives a husk with a connection opened by `connect` and hands it to the reaper.
    /// Returns the connection if the husk was dropped (a checkout popped it) meanwhile.
    pub(crate) fn revive(
        &self,
        husk: &Arc<Shared<P>>,
        sock: &Arc<crate::transport::Socket>,
        conn: Box<P::Conn>,
    ) -> Result<(), Box<P::Conn>> {
        let shared = &self.shared;
        let id = shared.next_id();
        let watch = self.watch_tx.lock();
        husk.revive(sock, conn, id)?;
        if let Some(tx) = &*watch {
            let _ = tx.send(husk.clone());
        }
        drop(watch);
        tracing::debug!(
            conn.id = id,
            endpoint = %shared.endpoint,
            "connected, into the entry of an evicted member"
        );
        Ok(())
    }

    /// `open`, again with backoff while the server says it is not ready (starting up,
    /// loading, busy), until `deadline` (the connect timeout) or `BUSY_TRIES` attempts.
    /// The caller reports the whole as one outcome.
    async fn open_retrying(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(Arc<crate::transport::Socket>, P::Conn), OpenError> {
        let mut backoff = BUSY_BACKOFF;
        for attempt in 1.. {
            let res = match deadline {
                Some(d) => tokio::time::timeout_at(d, self.open())
                    .await
                    .unwrap_or(Err(OpenError::Timeout)),
                None => self.open().await,
            };
            let Err(OpenError::Setup(e)) = &res else {
                return res;
            };
            let retry_at = Instant::now() + backoff;
            if !e.is_busy() || attempt >= BUSY_TRIES || deadline.is_some_and(|d| retry_at >= d) {
                return res;
            }
            tracing::debug!(
                endpoint = %self.shared.endpoint,
                error = %e,
                retry_in = ?backoff,
                "server not ready: connecting again"
            );
            tokio::time::sleep_until(retry_at).await;
            backoff = (backoff * 2).min(BUSY_BACKOFF_MAX);
        }
        unreachable!("the loop returns")
    }

    /// Connect, TLS handshake, protocol setup.
    async fn open(&self) -> Result<(Arc<crate::transport::Socket>, P::Conn), OpenError> {
        let cfg = &self.shared.config;
        // The connect timeout bounds the whole of `open`; each address gets its share of it.
        let sock = transport::open(&cfg.endpoint, &cfg.tcp, cfg.connect_timeout)
            .await
            .map_err(OpenError::Connect)?;
        let sock = Arc::new(sock);
        let stream = self.secure(sock.clone()).await?;
        let io = Io::new(stream);
        let mut conn = self.protocol.setup(io).await.map_err(OpenError::Setup)?;
        P::io_mut(&mut conn).clear_pending();
        Ok((sock, conn))
    }

    #[cfg(feature = "tls")]
    async fn secure(&self, sock: Arc<crate::transport::Socket>) -> Result<Stream, OpenError> {
        match &self.shared.config.tls {
            Some(tls) => crate::transport::tls::handshake(sock, tls)
                .await
                .map(Stream::Tls)
                .map_err(OpenError::Tls),
            None => Ok(Stream::Plain(sock)),
        }
    }

    #[cfg(not(feature = "tls"))]
    async fn secure(&self, sock: Arc<crate::transport::Socket>) -> Result<Stream, OpenError> {
        Ok(Stream::Plain(sock))
    }

    /// The caller's error and the `io::Error` the breaker records as the last error.
    fn open_error(&self, e: OpenError) -> (Error, io::Error) {
        let endpoint = self.shared.endpoint.clone();
        let timeout = || {
            let t = self.shared.config.connect_timeout.unwrap_or_default();
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect, TLS and setup did not finish within {t:?}"),
            )
        };
        match e {
            OpenError::Connect(io) => {
                let timed_out = io.kind() == io::ErrorKind::TimedOut;
                let copy = io::Error::new(io.kind(), io.to_string());
                let copy = match io.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => copy,
                };
                // The socket, a buffer or a local port could not be had: this process's
                // failure. (Classified for the connect, where those are allocated.)
                if let Blame::Local(cause) = blame(&io) {
                    (Error::local_resource(endpoint, cause, io), copy)
                } else if timed_out {
                    (Error::connect_timeout(endpoint, io), copy)
                } else {
                    (Error::connect(endpoint, io), copy)
                }
            }
            OpenError::Timeout => (Error::connect_timeout(endpoint, timeout()), timeout()),
            #[cfg(feature = "tls")]
            OpenError::Tls(e) if crate::transport::tls::is_config_error(&e) => {
                let text = format!("TLS handshake failed: {e}");
                (
                    Error::config(
                        endpoint,
                        Box::new(io::Error::new(e.kind(), text.clone())),
                        None,
                    ),
                    io::Error::new(e.kind(), text),
                )
            }
            #[cfg(feature = "tls")]
            OpenError::Tls(e) => {
                let text = format!("TLS handshake failed: {e}");
                (
                    Error::setup(
                        endpoint,
                        SetupError::io(io::Error::new(e.kind(), text.clone())),
                    ),
                    io::Error::new(e.kind(), text),
                )
            }
            OpenError::Setup(s) => {
                let io = io::Error::new(s.io_kind(), format!("setup failed: {s}"));
                if s.is_config() {
                    (Error::config(endpoint, Box::new(s), None), io)
                } else if s.is_busy() {
                    (Error::server_busy(endpoint, s), io)
                } else {
                    (Error::setup(endpoint, s), io)
                }
            }
        }
    }
}

/// Waits (bounded by the heartbeat timeout) until the reaper's job on this member finishes;
/// returns the state after it. If the waiting `get()` is cancelled here, deadpool drops the
/// member; it is counted as `Cancelled`.
async fn wait_for_busy<P: Protocol>(sh: &Shared<P>) -> crate::member::state::State {
    let deadline = Instant::now() + sh.pool.config.heartbeat_timeout;
    // If this wait is cancelled, deadpool drops the member: say why.
    let cancelled = DropGuard::new(|| sh.condemn(EvictReason::Cancelled, Instant::now()));
    let st = loop {
        let notified = sh.notify.notified();
        tokio::pin!(notified);
        // Register before re-reading the state: notify_waiters stores nothing.
        notified.as_mut().enable();
        let st = sh.state();
        if st.kind() != Kind::Busy {
            break st;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            sh.condemn(EvictReason::HeartbeatTimeout, Instant::now());
            sh.state.kill_if(st);
            break sh.state();
        }
    };
    cancelled.disarm();
    st
}

/// Runs its closure on drop unless disarmed: the one drop guard of the crate.
pub(crate) struct DropGuard<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> DropGuard<F> {
    pub(crate) fn new(f: F) -> Self {
        DropGuard(Some(f))
    }

    /// The guarded work finished: do nothing on drop.
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for DropGuard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    //! `recycle` on real sockets (a listener on 127.0.0.1:0): every case it decides, and
    //! what it leaves behind (the reason stored, the entry claimed, the eviction recorded
    //! once).

    use std::pin::pin;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use deadpool::managed::Manager as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::io::Io;
    use crate::pool::config::{Config, PoolConfig};
    use crate::protocol::{IdleVerdict, Raw};
    use crate::stats::Events;
    use crate::transport::Endpoint;

    /// A manager for `protocol` connecting to a fresh listener, with the default settings
    /// as `tweak` leaves them.
    async fn manager<P: Protocol>(
        protocol: P,
        tweak: impl FnOnce(&mut PoolConfig),
    ) -> (Manager<P>, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut settings = PoolConfig::default();
        tweak(&mut settings);
        let cfg = Config::new(Endpoint::parse(&addr).unwrap(), settings, false);
        let manager = Manager {
            shared: Arc::new(PoolShared::new(cfg)),
            protocol: Arc::new(protocol),
            watch_tx: Mutex::new(None),
        };
        (manager, listener)
    }

    /// A new member, returned idle the way a clean `Conn` is, and the server's end of its
    /// connection.
    async fn idle_member<P: Protocol>(
        m: &Manager<P>,
        listener: &TcpListener,
    ) -> (Member<P>, TcpStream) {
        let (member, accepted) = tokio::join!(m.create(), listener.accept());
        let mut member = member.unwrap();
        let sh = &member.shared;
        sh.put_conn(member.conn.take().unwrap());
        sh.release(sh.pool.ns(Instant::now()));
        assert_eq!(sh.state().kind(), Kind::Idle);
        (member, accepted.unwrap().0)
    }

    /// Waits until the member's socket is readable: bytes or the peer's close have arrived
    /// (readiness, not a sleep).
    async fn arrived<P: Protocol>(member: &Member<P>) {
        let sock = member
            .shared
            .socket()
            .expect("the connection is in the slot");
        sock.ready(Interest::READABLE).await.unwrap();
    }

    async fn recycle<P: Protocol>(m: &Manager<P>, member: &mut Member<P>) -> Result<(), String> {
        m.recycle(member, &Metrics::default())
            .await
            .map_err(|e| match e {
                RecycleError::Message(text) => text.into_owned(),
                RecycleError::Backend(e) => e.to_string(),
            })
    }

    /// The eviction events delivered so far.
    fn evictions(events: &mut Events) -> Vec<EvictReason> {
        std::iter::from_fn(|| events.try_recv().unwrap().map(|ev| ev.reason)).collect()
    }

    /// A refused member: its reason stored and its entry claimed, so that the refill cannot
    /// revive it while deadpool drops it (a new connection is refused, not put into it).
    async fn assert_refused<P: Protocol>(
        m: &Manager<P>,
        member: &Member<P>,
        res: Result<(), String>,
        reason: EvictReason,
    ) {
        assert_eq!(res, Err(reason.as_str().to_string()));
        assert_eq!(member.shared.reason(), Some(reason));
        assert!(member.conn.is_none());
        let (sock, conn) = m.connect().await.unwrap();
        assert!(
            m.revive(&member.shared, &sock, Box::new(conn)).is_err(),
            "a claimed entry must not be revived"
        );
    }

    #[tokio::test]
    async fn a_clean_idle_member_is_handed_out() {
        let (m, listener) = manager(Raw, |_| {}).await;
        let (mut member, mut server) = idle_member(&m, &listener).await;
        let life = member.shared.life();
        assert_eq!(recycle(&m, &mut member).await, Ok(()));
        assert_eq!(member.shared.state().kind(), Kind::InUse);
        assert_eq!(member.shared.reason(), None);
        // The connection is the caller's now, and it works.
        member
            .conn
            .as_mut()
            .unwrap()
            .write_all(b"ping")
            .await
            .unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        // Not claimed: a later eviction in place leaves a husk the refill may revive.
        assert!(member.shared.claim(life));
    }

    #[tokio::test]
    async fn a_member_the_peer_closed_is_refused() {
        let (m, listener) = manager(Raw, |_| {}).await;
        let mut events = m.shared.stats.subscribe();
        let (mut member, server) = idle_member(&m, &listener).await;
        drop(server);
        arrived(&member).await;
        let res = recycle(&m, &mut member).await;
        assert_refused(&m, &member, res, EvictReason::PeerClosed).await;
        // Recorded once, by deadpool's drop of the entry.
        assert_eq!(evictions(&mut events), []);
        drop(member);
        assert_eq!(evictions(&mut events), [EvictReason::PeerClosed]);
    }

    #[tokio::test]
    async fn a_member_the_peer_reset_is_refused() {
        let (m, listener) = manager(Raw, |_| {}).await;
        let (mut member, server) = idle_member(&m, &listener).await;
        // Linger 0: the close sends a reset.
        socket2::SockRef::from(&server)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(server);
        arrived(&member).await;
        let res = recycle(&m, &mut member).await;
        assert_refused(&m, &member, res, EvictReason::Reset).await;
    }

    #[tokio::test]
    async fn a_member_evicted_in_place_is_refused_and_recorded_once() {
        let (m, listener) = manager(Raw, |c| c.min_idle = 1).await;
        let mut events = m.shared.stats.subscribe();
        let (mut member, _server) = idle_member(&m, &listener).await;
        let sh = member.shared.clone();
        assert!(sh.evict_in_place(sh.state(), EvictReason::HeartbeatFailed));
        assert_eq!(evictions(&mut events), [EvictReason::HeartbeatFailed]);
        assert_eq!((m.shared.husks(), m.shared.members()), (1, 0));
        assert!(m.shared.has_husks(), "offered to the refill");
        let res = recycle(&m, &mut member).await;
        assert_refused(&m, &member, res, EvictReason::HeartbeatFailed).await;
        drop(member);
        assert_eq!(m.shared.husks(), 0);
        assert_eq!(evictions(&mut events), [], "recorded when it was evicted");
    }

    #[tokio::test]
    async fn a_member_evicted_after_a_checkout_claimed_it_is_not_offered_to_the_refill() {
        let (m, listener) = manager(Raw, |c| c.min_idle = 1).await;
        let mut events = m.shared.stats.subscribe();
        let (member, _server) = idle_member(&m, &listener).await;
        let sh = member.shared.clone();
        // A checkout found it dead and claimed it; the idle watch evicts it before deadpool
        // drops the entry.
        assert!(sh.claim(sh.life()));
        assert!(sh.evict_in_place(sh.state(), EvictReason::PeerClosed));
        assert_eq!(evictions(&mut events), [EvictReason::PeerClosed]);
        assert_eq!(m.shared.husks(), 1);
        assert!(
            !m.shared.has_husks(),
            "deadpool drops it next: nothing to revive"
        );
        drop(member);
        assert_eq!(m.shared.husks(), 0);
        assert_eq!(evictions(&mut events), [], "recorded once");
    }

    #[tokio::test]
    async fn a_husk_revived_before_the_checkout_claims_it_is_handed_out() {
        let (m, listener) = manager(Raw, |c| c.min_idle = 1).await;
        let (mut member, _server) = idle_member(&m, &listener).await;
        let sh = member.shared.clone();
        assert!(sh.evict_in_place(sh.state(), EvictReason::HeartbeatFailed));
        let (sock, conn) = m.connect().await.unwrap();
        m.revive(&sh, &sock, Box::new(conn)).unwrap();
        assert_eq!((sh.life(), m.shared.husks(), m.shared.members()), (1, 0, 1));
        assert_eq!(recycle(&m, &mut member).await, Ok(()));
        assert_eq!(sh.state().kind(), Kind::InUse);
        assert_eq!(sh.reason(), None, "a revival clears the old life's reason");
    }

    #[tokio::test]
    async fn bytes_the_protocol_rejects_evict_the_member() {
        let (m, listener) = manager(Raw, |_| {}).await;
        let mut events = m.shared.stats.subscribe();
        let (mut member, mut server) = idle_member(&m, &listener).await;
        server.write_all(b"unasked").await.unwrap();
        arrived(&member).await;
        let res = recycle(&m, &mut member).await;
        // The raw protocol's idle read evicted it in place; the checkout claimed the husk.
        assert_refused(&m, &member, res, EvictReason::UnexpectedData).await;
        assert_eq!(m.shared.husks(), 1);
        assert_eq!(evictions(&mut events), [EvictReason::UnexpectedData]);
        drop(member);
        assert_eq!(m.shared.husks(), 0);
        assert_eq!(evictions(&mut events), []);
    }

    /// Reads what arrived while idle and keeps the member; with `drain: false` it keeps the
    /// member without reading (a protocol that does not drain what arrives).
    struct Keep {
        drain: bool,
    }

    impl Protocol for Keep {
        type Conn = Io;

        fn io(conn: &Io) -> &Io {
            conn
        }

        fn io_mut(conn: &mut Io) -> &mut Io {
            conn
        }

        async fn setup(&self, io: Io) -> Result<Io, SetupError> {
            Ok(io)
        }

        async fn idle_bytes(&self, conn: &mut Io) -> IdleVerdict {
            if self.drain {
                let mut buf = [0u8; 64];
                if !matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {
                    return IdleVerdict::Evict(EvictReason::PeerClosed);
                }
            }
            IdleVerdict::Keep
        }
    }

    #[tokio::test]
    async fn bytes_the_protocol_reads_and_keeps_leave_the_member_to_hand_out() {
        let (m, listener) = manager(Keep { drain: true }, |_| {}).await;
        let (mut member, mut server) = idle_member(&m, &listener).await;
        server.write_all(b"+push\r\n").await.unwrap();
        arrived(&member).await;
        assert_eq!(recycle(&m, &mut member).await, Ok(()));
        assert_eq!(member.shared.state().kind(), Kind::InUse);
        assert_eq!(m.shared.stats.idle_reads_kept.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn bytes_the_protocol_never_drains_evict_after_max_idle_reads() {
        let (m, listener) = manager(Keep { drain: false }, |_| {}).await;
        let (mut member, mut server) = idle_member(&m, &listener).await;
        server.write_all(b"stuck").await.unwrap();
        arrived(&member).await;
        let res = recycle(&m, &mut member).await;
        assert_refused(&m, &member, res, EvictReason::UnexpectedData).await;
        assert_eq!(
            m.shared.stats.idle_reads_kept.load(Relaxed),
            u64::from(MAX_IDLE_READS)
        );
    }

    #[tokio::test]
    async fn a_member_past_its_lifetime_is_refused() {
        let (m, listener) = manager(Raw, |c| {
            c.max_lifetime = Some(Duration::from_secs(60));
            c.lifetime_jitter = 0.0;
        })
        .await;
        let (mut member, _server) = idle_member(&m, &listener).await;
        // Paused once the sockets are up: from here the clock moves only when told.
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(61)).await;
        let res = recycle(&m, &mut member).await;
        assert_refused(&m, &member, res, EvictReason::MaxLifetime).await;
    }

    #[tokio::test]
    async fn a_member_idle_too_long_is_refused_above_min_idle_only() {
        let (m, listener) = manager(Raw, |c| {
            c.idle_timeout = Some(Duration::from_secs(60));
            c.max_lifetime = None;
        })
        .await;
        let (mut kept, _s1) = idle_member(&m, &listener).await;
        let (mut member, _s2) = idle_member(&m, &listener).await;
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(61)).await;
        // Two members above `min_idle` 0: the first one checked goes.
        let res = recycle(&m, &mut member).await;
        assert_refused(&m, &member, res, EvictReason::IdleTimeout).await;
        drop(member);
        // One left, and `min_idle` 1 keeps it however long it idled.
        m.shared.set_min_idle(1);
        assert_eq!(recycle(&m, &mut kept).await, Ok(()));
    }

    #[tokio::test]
    async fn a_checkout_waits_for_the_reapers_job_and_then_decides() {
        let (m, listener) = manager(Raw, |_| {}).await;
        let (mut member, _server) = idle_member(&m, &listener).await;
        let sh = member.shared.clone();
        // A heartbeat holds the member.
        assert!(sh.begin_busy(sh.state()));
        let metrics = Metrics::default();
        let mut checkout = pin!(m.recycle(&mut member, &metrics));
        assert!(futures_util::poll!(checkout.as_mut()).is_pending());
        // The heartbeat found it alive.
        sh.end_busy(None);
        assert!(checkout.await.is_ok());
        assert_eq!(sh.state().kind(), Kind::InUse);
    }

    #[tokio::test]
    async fn a_checkout_that_outwaits_the_heartbeat_timeout_refuses_the_member() {
        let (m, listener) = manager(Raw, |c| c.heartbeat_timeout = Duration::from_secs(5)).await;
        let (mut member, _server) = idle_member(&m, &listener).await;
        let sh = member.shared.clone();
        assert!(sh.begin_busy(sh.state()));
        // The heartbeat never ends; the paused clock jumps to the timeout once the checkout
        // waits for nothing else.
        tokio::time::pause();
        let res = recycle(&m, &mut member).await;
        assert_refused(&m, &member, res, EvictReason::HeartbeatTimeout).await;
        assert_eq!(sh.state().kind(), Kind::Dead);
    }
}
