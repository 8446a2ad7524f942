//! [`PgListener`]: notifications (`LISTEN`/`NOTIFY`) on a connection of its own, listened to
//! again by itself after a reconnect.
//!
//! The listener checks one connection out of a pool given to it and holds it. Its driver
//! forwards notifications to the listener (a pooled connection's driver drops them, as
//! tokio-postgres's does). When the connection ends — the server restarted, the session was
//! terminated, a ping went unanswered — the listener takes a new one from the pool (whose
//! breaker paces the attempts while the server is down), runs `LISTEN` for every channel
//! again, and reports the gap: notifications sent meanwhile are lost (PostgreSQL keeps none
//! for a session that is not connected), and a consumer that cares re-reads its state.
//!
//! A checked-out connection gets no heartbeat from the pool, so the listener pings it itself
//! (every `ping_interval`): a blackholed server is noticed within the interval plus the ping
//! timeout, not after the kernel's keepalive.

use std::fmt;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::Notification;

use crate::{Conn, Pool};

/// How many notifications wait for the listener before the next ones are dropped.
const QUEUE: usize = 1024;

/// What [`PgListener::recv`] returns.
#[derive(Debug)]
#[non_exhaustive]
pub enum ListenerMessage {
    /// A notification on one of the channels listened to.
    Notification(Notification),
    /// The connection was lost and is back, every channel listened to again; notifications
    /// sent in the `gap` were lost.
    Reconnected {
        /// From the moment the loss was noticed to the moment the channels were listened to
        /// again.
        gap: Duration,
    },
}

/// Why a listener call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ListenerError {
    /// No connection could be had from the pool (the server is down: the pool's error says
    /// why and, with the breaker open, when to try again).
    Connect(livepool::Error),
    /// `LISTEN` or `UNLISTEN` failed.
    Query(tokio_postgres::Error),
}

impl fmt::Display for ListenerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenerError::Connect(e) => write!(f, "listener cannot connect: {e}"),
            ListenerError::Query(e) => write!(f, "listener query failed: {e}"),
        }
    }
}

impl std::error::Error for ListenerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ListenerError::Connect(e) => Some(e),
            ListenerError::Query(e) => Some(e),
        }
    }
}

/// Notifications (`LISTEN`/`NOTIFY`) on a connection of its own, listened to again by itself
/// after a reconnect (sqlx's `PgListener` is the model).
///
/// It checks one connection out of the pool given to it and holds it; that connection's
/// driver forwards notifications to it (at most 1,024 wait; later ones are dropped until
/// [`PgListener::recv`] catches up). When the connection ends — a restart, a terminated
/// session, a ping unanswered — the next `recv` takes a new one from the pool (whose breaker
/// paces the attempts while the server is down), listens to every channel again and returns
/// [`ListenerMessage::Reconnected`] with the gap: PostgreSQL keeps no notifications for a
/// session that is gone, so a consumer that cares re-reads its state then. The listener pings
/// its connection itself every `ping` interval: the pool does not heartbeat a connection
/// that is checked out.
///
/// ```no_run
/// use livepool_postgres::{ListenerMessage, PgListener, Postgres};
/// # async fn f(config: livepool_postgres::tokio_postgres::Config) -> Result<(), Box<dyn std::error::Error>> {
/// // A pool of its own: the listener holds one of its connections.
/// let pool = livepool::Pool::builder("db.internal:5432")
///     .protocol(Postgres::new(config))
///     .max_size(1)
///     .build()?;
/// let mut listener = PgListener::new(pool);
/// listener.listen("jobs").await?;
/// loop {
///     match listener.recv().await {
///         Ok(ListenerMessage::Notification(n)) => println!("{}: {}", n.channel(), n.payload()),
///         Ok(ListenerMessage::Reconnected { gap }) => println!("lost {gap:?} of notifications"),
///         Ok(_) => {}
///         Err(e) => eprintln!("{e}; trying again"),
///     }
/// }
/// # }
/// ```
pub struct PgListener {
    pool: Pool,
    conn: Option<(Conn, mpsc::Receiver<Notification>)>,
    channels: Vec<String>,
    /// When the last connection was found gone (reported with the next reconnect).
    lost_at: Option<Instant>,
    /// A reconnect made by a call other than `recv` (`listen`), not reported yet.
    reconnected: Option<Duration>,
    /// The pool said when a connect may go through (its breaker is open): the next
    /// connect waits until then instead of failing again at once.
    retry_at: Option<Instant>,
    ping_interval: Duration,
    ping_timeout: Duration,
    next_ping: Instant,
}

impl PgListener {
    /// A listener on connections from `pool` (give it a pool of its own: it holds one
    /// connection for as long as it lives). It connects on the first call that needs it.
    ///
    /// ```no_run
    /// # fn f(pool: livepool_postgres::Pool) {
    /// let listener = livepool_postgres::PgListener::new(pool);
    /// # let _ = listener;
    /// # }
    /// ```
    pub fn new(pool: Pool) -> Self {
        PgListener {
            pool,
            conn: None,
            channels: Vec::new(),
            lost_at: None,
            reconnected: None,
            retry_at: None,
            // The pool's default heartbeat interval and timeout.
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(5),
            next_ping: Instant::now(),
        }
    }

    /// How often the listener pings its connection, and how long it waits for the answer
    /// before taking the connection for lost. Both must be above zero.
    ///
    /// Default: every 30 s, 5 s timeout.
    ///
    /// ```no_run
    /// # fn f(pool: livepool_postgres::Pool) {
    /// use std::time::Duration;
    /// let listener = livepool_postgres::PgListener::new(pool)
    ///     .ping(Duration::from_secs(10), Duration::from_secs(2));
    /// # let _ = listener;
    /// # }
    /// ```
    pub fn ping(mut self, interval: Duration, timeout: Duration) -> Self {
        self.ping_interval = interval.max(Duration::from_millis(1));
        self.ping_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Listens to `channel` (now, and again after every reconnect).
    ///
    /// # Errors
    /// [`ListenerError::Connect`] if no connection could be had, [`ListenerError::Query`] if
    /// the server refused `LISTEN`.
    ///
    /// # Cancel safety
    /// Dropped while it connects, the call records nothing: a connection it took goes back
    /// to the pool, and the next call connects again. Dropped once `LISTEN` is queued, the
    /// server may still run it: [`recv`](Self::recv) then returns the channel's
    /// notifications, but the channel is not recorded, so it is not listened to again after a
    /// reconnect. Call `listen` again to record it (`LISTEN` twice is harmless).
    ///
    /// ```no_run
    /// # async fn f(mut l: livepool_postgres::PgListener) -> Result<(), livepool_postgres::ListenerError> {
    /// l.listen("jobs").await?;
    /// # Ok(()) }
    /// ```
    pub async fn listen(&mut self, channel: &str) -> Result<(), ListenerError> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        if self.channels.iter().any(|c| c == channel) {
            return Ok(());
        }
        let conn = &self.conn.as_ref().expect("connected above").0;
        conn.batch_execute(&format!("LISTEN {}", quote(channel)))
            .await
            .map_err(ListenerError::Query)?;
        self.channels.push(channel.to_owned());
        Ok(())
    }

    /// Stops listening to `channel`.
    ///
    /// # Errors
    /// [`ListenerError::Query`] if the server refused `UNLISTEN` (the channel is forgotten
    /// anyway: it is not listened to again after a reconnect).
    ///
    /// # Cancel safety
    /// The first poll forgets the channel (it is not listened to again after a reconnect)
    /// and, when connected, queues `UNLISTEN`: the server runs it even if the call is then
    /// dropped. Notifications on the channel already queued are still returned by
    /// [`recv`](Self::recv).
    ///
    /// ```no_run
    /// # async fn f(mut l: livepool_postgres::PgListener) -> Result<(), livepool_postgres::ListenerError> {
    /// l.unlisten("jobs").await?;
    /// # Ok(()) }
    /// ```
    pub async fn unlisten(&mut self, channel: &str) -> Result<(), ListenerError> {
        self.channels.retain(|c| c != channel);
        if let Some((conn, _)) = &self.conn {
            conn.batch_execute(&format!("UNLISTEN {}", quote(channel)))
                .await
                .map_err(ListenerError::Query)?;
        }
        Ok(())
    }

    /// The channels listened to.
    ///
    /// ```no_run
    /// # fn f(l: livepool_postgres::PgListener) {
    /// println!("{:?}", l.channels());
    /// # }
    /// ```
    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    /// The next notification; after a lost connection, first a
    /// [`ListenerMessage::Reconnected`] once a new one listens again.
    ///
    /// # Errors
    /// [`ListenerError::Connect`] while no connection can be had (call again: the pool's
    /// breaker paces the attempts, and the next call waits out the
    /// [`livepool::Error::retry_after`] it gave, so a loop calling again does not spin), [`ListenerError::Query`] if `LISTEN` failed on the new connection.
    ///
    /// # Cancel safety
    /// Cancel safe: a notification leaves the queue only when `recv` returns it. Dropped
    /// during a reconnect, the call keeps no connection (one it took goes back to the pool);
    /// the next call starts the reconnect over and still reports the gap, counted from the
    /// loss. Dropped during a ping, the ping's answer is dropped and the next call pings
    /// again.
    ///
    /// ```no_run
    /// # async fn f(mut l: livepool_postgres::PgListener) {
    /// if let Ok(livepool_postgres::ListenerMessage::Notification(n)) = l.recv().await {
    ///     println!("{}", n.payload());
    /// }
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Result<ListenerMessage, ListenerError> {
        loop {
            if self.conn.is_none() {
                self.connect().await?;
            }
            if let Some(gap) = self.reconnected.take() {
                return Ok(ListenerMessage::Reconnected { gap });
            }
            let (conn, rx) = self.conn.as_mut().expect("connected above");
            let end = conn.driver_end().clone();
            let lost = tokio::select! {
                biased;
                n = rx.recv() => match n {
                    Some(n) => return Ok(ListenerMessage::Notification(n)),
                    None => true,
                },
                _ = end.ended() => true,
                _ = tokio::time::sleep_until(self.next_ping) => {
                    let ping = tokio::time::timeout(self.ping_timeout, conn.check_connection()).await;
                    self.next_ping = Instant::now() + self.ping_interval;
                    !matches!(ping, Ok(Ok(())))
                }
            };
            if lost {
                tracing::debug!(
                    channels = self.channels.len(),
                    "listener lost its connection"
                );
                self.lost_at.get_or_insert_with(Instant::now);
                if let Some((mut conn, _)) = self.conn.take() {
                    conn.mark_broken();
                }
            }
        }
    }

    /// Takes a connection from the pool, has its driver forward notifications here, and
    /// listens to every channel on it.
    /// A reconnect (after a loss) is reported by the next `recv`, whichever call made it.
    async fn connect(&mut self) -> Result<(), ListenerError> {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
            self.retry_at = None;
        }
        let conn = match self.pool.get().await {
            Ok(conn) => conn,
            Err(e) => {
                self.retry_at = e.retry_after().map(|d| Instant::now() + d);
                return Err(ListenerError::Connect(e));
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        *conn
            .notifications
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        for channel in &self.channels {
            if let Err(e) = conn
                .batch_execute(&format!("LISTEN {}", quote(channel)))
                .await
            {
                let mut conn = conn;
                conn.mark_broken();
                return Err(ListenerError::Query(e));
            }
        }
        self.next_ping = Instant::now() + self.ping_interval;
        self.conn = Some((conn, rx));
        if let Some(lost) = self.lost_at.take() {
            self.reconnected = Some(lost.elapsed());
        }
        Ok(())
    }
}

impl Drop for PgListener {
    fn drop(&mut self) {
        // The connection goes back to the pool (reset: UNLISTEN *); its notifications go
        // nowhere from now on.
        if let Some((conn, _)) = &self.conn {
            *conn
                .notifications
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
    }
}

impl fmt::Debug for PgListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgListener")
            .field("channels", &self.channels)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

/// A channel name as an SQL identifier.
fn quote(channel: &str) -> String {
    format!("\"{}\"", channel.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    #[test]
    fn channel_names_are_quoted_identifiers() {
        assert_eq!(super::quote("jobs"), "\"jobs\"");
        assert_eq!(
            super::quote("a\"; DROP TABLE t; --"),
            "\"a\"\"; DROP TABLE t; --\""
        );
    }
}
