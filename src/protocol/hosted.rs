//! Hosting a client that owns its stream and runs its own reader (tokio-postgres's
//! `Connection`, the redis crate's multiplexed driver, hyper's connection task).
//!
//! Such a client cannot live on the [`Protocol`] shape directly: it takes the byte stream
//! for good and reads it from a task of its own. [`Hosted`] adapts a [`Driven`] client to
//! the pool:
//!
//! - **The stream goes to the client, the socket stays with the pool.** The client gets the
//!   connection's [`Io`] (TLS included) and the pool keeps a detached handle on the same
//!   socket ([`Protocol::io`] of a hosted connection): its peek, its options, its addresses.
//!   The handle holds the socket object, so its descriptor number cannot be reused while the
//!   member lives, however the driver ends.
//! - **The pool never arms readiness on the socket.** tokio wakes only the latest waker
//!   registered through `poll_read_ready`; a pool that waited on the socket beside the
//!   driver could steal the driver's wake-up and hang it. So there is no idle watch on the
//!   socket: the checkout's peek is a raw `recv(MSG_PEEK | MSG_DONTWAIT)`, which registers
//!   nothing.
//! - **The driver's end is the eviction event.** The pool spawns the driver and watches its
//!   end: a peer close, a reset, a server's termination notice. The member is evicted at
//!   once, with the [`EvictReason`] the driver ended with, at a cost independent of the idle
//!   count. Bytes seen at checkout are the driver's business (a notification not yet read),
//!   not a reason to evict; an end of stream is still seen by the peek.
//! - **Heartbeats run through the client**, bounded by the pool's heartbeat timeout. A
//!   timeout evicts the member, and dropping it stops the driver, so that every handle of
//!   the client fails fast.
//! - **Clean return** is the driven client's call ([`Driven::is_clean`]); a connection whose
//!   driver ended is never returned.

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::{HeartbeatError, Protocol, SetupError};
use crate::io::Io;
use crate::stats::EvictReason;

/// A client that owns its byte stream and reads it from a driver of its own.
///
/// Implement it in an integration crate, then build a pool with
/// [`Hosted::new`]`(your_client)` as its protocol: `Pool<Hosted<D>>` hands out connections
/// that deref to [`Driven::Client`].
///
/// # Example
///
/// A line protocol whose client sends requests through a channel to a driver task that owns
/// the stream:
///
/// ```
/// use livepool::{Driven, Driver, EvictReason, HeartbeatError, Hosted, Io, SetupError};
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
/// use tokio::sync::{mpsc, oneshot};
///
/// #[derive(Debug)]
/// struct Lines;
///
/// /// The client: requests go to the driver, each with a channel for its reply line.
/// struct LineClient(mpsc::Sender<(String, oneshot::Sender<String>)>);
///
/// impl LineClient {
///     async fn call(&self, line: &str) -> Option<String> {
///         let (tx, rx) = oneshot::channel();
///         self.0.send((line.to_owned(), tx)).await.ok()?;
///         rx.await.ok()
///     }
/// }
///
/// impl Driven for Lines {
///     type Client = LineClient;
///
///     async fn connect(&self, io: Io) -> Result<(LineClient, Driver), SetupError> {
///         let (tx, mut rx) = mpsc::channel::<(String, oneshot::Sender<String>)>(16);
///         let driver = Driver::new(async move {
///             let mut io = BufReader::new(io);
///             while let Some((line, reply)) = rx.recv().await {
///                 if io.get_mut().write_all(format!("{line}\n").as_bytes()).await.is_err() {
///                     return EvictReason::IoError;
///                 }
///                 let mut answer = String::new();
///                 match io.read_line(&mut answer).await {
///                     Ok(0) => return EvictReason::PeerClosed,
///                     Ok(_) => { let _ = reply.send(answer); }
///                     Err(_) => return EvictReason::IoError,
///                 }
///             }
///             EvictReason::PoolClosed
///         });
///         Ok((LineClient(tx), driver))
///     }
///
///     fn has_heartbeat(&self) -> bool { true }
///
///     async fn heartbeat(&self, client: &LineClient) -> Result<(), HeartbeatError> {
///         match client.call("PING").await.as_deref() {
///             Some("PONG\n") => Ok(()),
///             Some(_) => Err(HeartbeatError::bad_reply("not PONG")),
///             None => Err(HeartbeatError::closed()),
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pool = livepool::Pool::builder("127.0.0.1:1")
///     .protocol(Hosted::new(Lines))
///     .build()
///     .unwrap();
/// # let _ = pool;
/// # }
/// ```
pub trait Driven: Send + Sync + 'static {
    /// The client the caller uses; `Conn<Hosted<Self>>` derefs to it.
    type Client: Send + Sync + 'static;

    /// Builds the client over the pool's stream (TLS done already, if configured), with its
    /// handshake, and returns it with its driver, which the pool spawns and watches. Runs
    /// for every new connection, refill included, within the connect timeout.
    ///
    /// # Errors
    /// A [`SetupError`] with the server's own words (never a secret); see
    /// [`Protocol::setup`] for what the pool makes of each kind.
    fn connect(
        &self,
        io: Io,
    ) -> impl Future<Output = Result<(Self::Client, Driver), SetupError>> + Send;

    /// True when [`Driven::heartbeat`] pings. Default: false.
    fn has_heartbeat(&self) -> bool {
        false
    }

    /// One round trip through the client. The pool bounds it with `heartbeat_timeout`; on
    /// a timeout the member is evicted and its driver stopped.
    ///
    /// # Errors
    /// Any error evicts the member.
    fn heartbeat(
        &self,
        client: &Self::Client,
    ) -> impl Future<Output = Result<(), HeartbeatError>> + Send {
        let _ = client;
        async { Ok(()) }
    }

    /// On return: true when the client's session is as set up, with nothing owed (no open
    /// transaction, no request in flight). Not called once the driver has ended. Default:
    /// true.
    fn is_clean(&self, client: &Self::Client) -> bool {
        let _ = client;
        true
    }

    /// On return, when [`Driven::is_clean`] said no: whether [`Driven::settle`] may bring
    /// the client back. Default: false (the connection is closed).
    fn can_settle(&self, client: &Self::Client) -> bool {
        let _ = client;
        false
    }

    /// Brings a returned client back to a clean state off the caller's path (see
    /// [`Protocol::settle`]); bounded by the pool's heartbeat timeout.
    ///
    /// # Errors
    /// The reason to evict the member with.
    fn settle(
        &self,
        client: &Self::Client,
    ) -> impl Future<Output = Result<(), EvictReason>> + Send {
        let _ = client;
        async { Err(EvictReason::NotClean) }
    }
}

/// A hosted client's reader: a future that runs for the connection's whole life and says,
/// when it ends, why (the peer closed, reset, a server's termination notice).
///
/// ```
/// use livepool::{Driver, EvictReason};
/// let driver = Driver::new(async { EvictReason::PeerClosed });
/// # let _ = driver;
/// ```
pub struct Driver(Pin<Box<dyn Future<Output = EvictReason> + Send>>);

impl Driver {
    /// Wraps the client's reader. Its output is the reason the member is evicted with.
    ///
    /// ```
    /// let d = livepool::Driver::new(async { livepool::EvictReason::Reset });
    /// # let _ = d;
    /// ```
    pub fn new(reader: impl Future<Output = EvictReason> + Send + 'static) -> Self {
        Driver(Box::pin(reader))
    }
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Driver")
    }
}

/// The end of a hosted connection's driver: set once, when it ends.
///
/// ```no_run
/// # async fn f(conn: livepool::Conn<livepool::Hosted<impl livepool::Driven>>) {
/// assert_eq!(conn.driver_end().reason(), None); // still running
/// # }
/// ```
#[derive(Clone, Default)]
pub struct DriverEnd(Arc<EndInner>);

#[derive(Default)]
struct EndInner {
    reason: OnceLock<EvictReason>,
    notify: Notify,
}

impl DriverEnd {
    /// Why the driver ended; `None` while it runs.
    ///
    /// ```
    /// assert_eq!(livepool::DriverEnd::default().reason(), None);
    /// ```
    pub fn reason(&self) -> Option<EvictReason> {
        self.0.reason.get().copied()
    }

    /// Resolves when the driver ends, with why.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    ///
    /// ```no_run
    /// # async fn f(end: livepool::DriverEnd) {
    /// let why = end.ended().await;
    /// # let _ = why;
    /// # }
    /// ```
    pub async fn ended(&self) -> EvictReason {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            // Registered before the state is read: `notify_waiters` stores nothing.
            notified.as_mut().enable();
            if let Some(r) = self.reason() {
                return r;
            }
            notified.await;
        }
    }

    fn set(&self, reason: EvictReason) {
        let _ = self.0.reason.set(reason);
        self.0.notify.notify_waiters();
    }
}

impl fmt::Debug for DriverEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DriverEnd").field(&self.reason()).finish()
    }
}

/// The [`Protocol`] of a pool whose connections are [`Driven`] clients.
///
/// ```
/// # use livepool::{Driven, Driver, EvictReason, Io, SetupError};
/// # #[derive(Debug)] struct MyClient;
/// # impl Driven for MyClient {
/// #     type Client = ();
/// #     async fn connect(&self, _io: Io) -> Result<((), Driver), SetupError> {
/// #         Ok(((), Driver::new(std::future::pending())))
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pool = livepool::Pool::builder("127.0.0.1:1")
///     .protocol(livepool::Hosted::new(MyClient))
///     .build()
///     .unwrap();
/// # let _ = pool;
/// # }
/// ```
#[derive(Debug)]
pub struct Hosted<D>(D);

impl<D: Driven> Hosted<D> {
    /// Hosts `client` connections in a pool.
    ///
    /// ```
    /// # use livepool::{Driven, Driver, Io, SetupError};
    /// # struct C;
    /// # impl Driven for C { type Client = ();
    /// #   async fn connect(&self, _io: Io) -> Result<((), Driver), SetupError> { unimplemented!() } }
    /// let protocol = livepool::Hosted::new(C);
    /// # let _ = protocol;
    /// ```
    pub fn new(client: D) -> Self {
        Hosted(client)
    }

    /// The driven client's configuration.
    ///
    /// ```
    /// # use livepool::{Driven, Driver, Io, SetupError};
    /// # struct C;
    /// # impl Driven for C { type Client = ();
    /// #   async fn connect(&self, _io: Io) -> Result<((), Driver), SetupError> { unimplemented!() } }
    /// let protocol = livepool::Hosted::new(C);
    /// let _c: &C = protocol.get_ref();
    /// ```
    pub fn get_ref(&self) -> &D {
        &self.0
    }
}

/// A hosted connection: the client, the pool's handle on its socket, its driver's end.
/// Derefs to the client. Dropping it stops the driver (and so closes the connection).
pub struct HostedConn<C> {
    client: C,
    io: Io,
    end: DriverEnd,
    driver: AbortHandle,
}

impl<C> HostedConn<C> {
    /// The driver's end: why it ended, or a future that resolves when it does.
    ///
    /// ```no_run
    /// # async fn f(conn: livepool::Conn<livepool::Hosted<impl livepool::Driven>>) {
    /// if let Some(why) = conn.driver_end().reason() { eprintln!("connection gone: {why}"); }
    /// # }
    /// ```
    pub fn driver_end(&self) -> &DriverEnd {
        &self.end
    }

    /// The pool's handle on the connection (addresses, TLS, socket options); its bytes
    /// belong to the client.
    ///
    /// ```no_run
    /// # async fn f(conn: livepool::Conn<livepool::Hosted<impl livepool::Driven>>) {
    /// println!("{:?}", conn.io().peer_addr());
    /// # }
    /// ```
    pub fn io(&self) -> &Io {
        &self.io
    }
}

impl<C> Deref for HostedConn<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.client
    }
}

impl<C> DerefMut for HostedConn<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.client
    }
}

impl<C> Drop for HostedConn<C> {
    fn drop(&mut self) {
        self.driver.abort();
        // An aborted driver never reports: whoever waits for the end (the member's watch)
        // hears that the connection is gone.
        self.end.set(EvictReason::PoolClosed);
    }
}

impl<C> fmt::Debug for HostedConn<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostedConn")
            .field("io", &self.io)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl<D: Driven> Protocol for Hosted<D> {
    type Conn = HostedConn<D::Client>;

    fn io(conn: &Self::Conn) -> &Io {
        &conn.io
    }

    fn io_mut(conn: &mut Self::Conn) -> &mut Io {
        &mut conn.io
    }

    async fn setup(&self, io: Io) -> Result<Self::Conn, SetupError> {
        let handle = io.detached();
        let (client, driver) = self.0.connect(io).await?;
        let end = DriverEnd::default();
        let set = end.clone();
        // No await between the spawn and the connection that stops the driver on drop.
        let task = tokio::spawn(async move { set.set(driver.0.await) });
        Ok(HostedConn {
            client,
            io: handle,
            end,
            driver: task.abort_handle(),
        })
    }

    fn has_heartbeat(&self) -> bool {
        self.0.has_heartbeat()
    }

    async fn heartbeat(&self, conn: &mut Self::Conn) -> Result<(), HeartbeatError> {
        if conn.end.reason().is_some() {
            return Err(HeartbeatError::closed());
        }
        self.0.heartbeat(&conn.client).await
    }

    fn is_clean(&self, conn: &Self::Conn) -> bool {
        conn.end.reason().is_none() && self.0.is_clean(&conn.client)
    }

    fn can_settle(&self, conn: &Self::Conn) -> bool {
        conn.end.reason().is_none() && self.0.can_settle(&conn.client)
    }

    async fn settle(&self, conn: &mut Self::Conn) -> Result<(), EvictReason> {
        if let Some(reason) = conn.end.reason() {
            return Err(reason);
        }
        self.0.settle(&conn.client).await
    }

    fn driver(conn: &Self::Conn) -> Option<&DriverEnd> {
        Some(&conn.end)
    }
}
