//! Opening one TCP connection to a [`Target`]: a literal socket address, or a host name that
//! is resolved again at every connect (so a DNS or `/etc/hosts` change is seen by the next
//! connection, never cached here), then every resolved address tried in order.
//!
//! # Time budget
//!
//! The `timeout` given to [`connect_tcp`] is one deadline for the whole call, name resolution
//! included. Each address gets `remaining / addresses left` of what is left when its attempt
//! starts (but at least [`MIN_ATTEMPT`], and never past the deadline), like hyper-util's split:
//! a blackholed first address cannot eat the whole budget, and an address that fails fast
//! (refused) hands its unused share on to the next ones. When the deadline has passed, the
//! remaining addresses are not tried and the error says so (and is a timeout).
//!
//! # Sequential, not staggered
//!
//! Attempts run one after another, not happy-eyeballs style. A pool opens connections off the
//! request path (and `min_idle` keeps some ready), so the extra latency of a dead first
//! address only costs its share of the budget; in exchange a slow but alive server (a
//! database under load, slow to accept) never receives two racing connects of which one is
//! thrown away, and the outcome (which address, which error) is deterministic.
//!
//! Socket options are set on each socket before its connect; an option the kernel refuses is
//! a `tracing::warn!`, not a failure.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// The smallest share of the budget an attempt gets while any budget is left (the deadline
/// still wins): a loopback or LAN connect completes well within it.
pub(crate) const MIN_ATTEMPT: Duration = Duration::from_millis(10);

/// Longest host name accepted (RFC 1035: 253 characters in text form).
const MAX_HOST_LEN: usize = 253;

/// Where to connect: a literal socket address, or a host name + port resolved at every connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A literal address: connected to as is, no resolution.
    Addr(SocketAddr),
    /// A host name and port, resolved (asynchronously) at every connect.
    Host {
        /// The host name as given (ASCII; no brackets, no port).
        host: String,
        /// The TCP port, never 0.
        port: u16,
    },
}

impl Target {
    /// Parses `"1.2.3.4:5"`, `"[::1]:5"` or `"name:port"`. Nothing is resolved here.
    ///
    /// Refused, with a message naming the input: a missing or invalid port (port 0 included),
    /// an IPv6 address without brackets, an empty or over-long host name, and host names with
    /// characters other than ASCII letters, digits, `-`, `_` and `.` (use the `xn--` form of
    /// an international name).
    pub(crate) fn parse(s: &str) -> Result<Target, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(format!("port 0 in {s:?} cannot be connected to"));
            }
            return Ok(Target::Addr(addr));
        }
        if let Some(rest) = s.strip_prefix('[') {
            let Some((inner, after)) = rest.split_once(']') else {
                return Err(format!("missing ']' in {s:?}"));
            };
            if inner.parse::<Ipv6Addr>().is_err() {
                return Err(format!("{inner:?} in {s:?} is not an IPv6 address"));
            }
            let Some(port) = after.strip_prefix(':') else {
                return Err(format!("missing port in {s:?} (expected \"[ipv6]:port\")"));
            };
            // A valid address and a valid port would have parsed as a SocketAddr above.
            return Err(port_error(s, port));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!("missing port in {s:?} (expected \"host:port\")"));
        };
        if host.contains(':') {
            return Err(format!(
                "{s:?} looks like an IPv6 address without brackets: write it as \"[{host}]:{port}\""
            ));
        }
        let port = parse_port(s, port)?;
        if host.is_empty() {
            return Err(format!("missing host in {s:?} (expected \"host:port\")"));
        }
        if host.len() > MAX_HOST_LEN {
            return Err(format!(
                "host name in {s:?} is longer than {MAX_HOST_LEN} characters"
            ));
        }
        if let Some(c) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!(
                "invalid character {c:?} in host name {host:?} (international names need their xn-- form)"
            ));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            // Cannot happen (it would have parsed as a SocketAddr), but stay literal if it does.
            return Ok(Target::Addr(SocketAddr::new(ip, port)));
        }
        Ok(Target::Host {
            host: host.to_owned(),
            port,
        })
    }
}

/// Parses a port, naming `s` in the error.
fn parse_port(s: &str, port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err(format!("missing port in {s:?}"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(format!("port 0 in {s:?} cannot be connected to")),
        Ok(p) => Ok(p),
        Err(_) => Err(format!(
            "invalid port {port:?} in {s:?} (expected 1 to 65535)"
        )),
    }
}

/// The error for a bracketed IPv6 address with a bad port (the address itself is valid).
fn port_error(s: &str, port: &str) -> String {
    match parse_port(s, port) {
        Err(e) => e,
        Ok(_) => format!("cannot parse {s:?} as \"[ipv6]:port\""),
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Target::Addr(addr)
    }
}

impl fmt::Display for Target {
    /// `"db.local:5432"`, `"127.0.0.1:5432"`, `"[::1]:5432"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// The socket options of every new TCP connection, set before it connects (Unix sockets
/// have none). A field of [`PoolConfig`](crate::PoolConfig).
///
/// ```
/// use std::time::Duration;
/// let tcp = livepool::TcpOptions {
///     keepalive: Some(Duration::from_secs(30)),
///     user_timeout: Some(Duration::from_secs(10)),
///     ..livepool::TcpOptions::default()
/// };
/// let b = livepool::Pool::builder("127.0.0.1:6379").tcp(tcp);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    /// `TCP_NODELAY`.
    ///
    /// Default: true (request/response traffic: Nagle's algorithm adds up to 40 ms per
    /// small request).
    pub nodelay: bool,
    /// TCP keepalive idle time (`TCP_KEEPIDLE`, with `SO_KEEPALIVE` on) before the first
    /// probe; `None` leaves keepalive off. Not zero, at most 32,767 s.
    ///
    /// Default: 60 s (finds a blackholed idle peer in about 90 s instead of Linux's
    /// 2 h 11 min).
    pub keepalive: Option<Duration>,
    /// Time between keepalive probes (`TCP_KEEPINTVL`). Not zero, at most 32,767 s.
    ///
    /// Default: 10 s.
    pub keepalive_interval: Duration,
    /// Unanswered keepalive probes before the kernel drops the connection (`TCP_KEEPCNT`),
    /// 1 to 127. Linux ignores it when `user_timeout` is set.
    ///
    /// Default: 3.
    pub keepalive_retries: u32,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the kernel
    /// drops the connection; also bounds connect retries. `None` keeps the kernel's
    /// ~15 min. At least 1 ms.
    ///
    /// Default: 30 s (keepalive pauses while data is unacknowledged; this bounds that).
    pub user_timeout: Option<Duration>,
}

impl Default for TcpOptions {
    /// The defaults each field's documentation gives.
    ///
    /// ```
    /// assert!(livepool::TcpOptions::default().nodelay);
    /// ```
    fn default() -> Self {
        TcpOptions {
            nodelay: true,
            keepalive: Some(Duration::from_secs(60)),
            keepalive_interval: Duration::from_secs(10),
            keepalive_retries: 3,
            user_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// What went wrong, beyond the target.
#[derive(Debug)]
enum Failure {
    /// The resolver failed.
    Resolve(io::Error),
    /// The budget ran out while resolving.
    ResolveTimeout(Duration),
    /// The resolver answered with no address.
    NoAddress,
    /// Every attempted address failed (or the budget ran out before some were tried).
    Attempts {
        /// Each address tried, in order, with its error text.
        tried: Vec<(SocketAddr, String)>,
        /// The last attempt's error; `None` when it timed out.
        last: Option<io::Error>,
        /// Addresses not tried because the budget ran out (then this is a timeout).
        skipped: usize,
        /// The whole budget, for the message when addresses were skipped.
        budget: Option<Duration>,
    },
}

/// A failed [`connect_tcp`]: names the target and every address tried with its error, e.g.
/// `"db.local:5432: 127.0.0.2:5432: connection refused (os error 111); 127.0.0.3:5432: timed
/// out after 2.5s"`, `"db.local:5432: name resolution failed: …"` or `"db.local:5432
/// resolves to no address"`. For a literal address the address is not repeated:
/// `"127.0.0.1:1: connection refused (os error 111)"`.
///
/// The full text is the `Display`; there is no separate `source` (it would repeat it).
#[derive(Debug)]
pub(crate) struct ConnectError {
    target: Target,
    failure: Failure,
}

impl ConnectError {
    /// The kind of the last attempt's error; `TimedOut` when the budget ran out (the last
    /// attempt timed out, addresses were left untried, or resolution took it all). A resolver
    /// error keeps its own kind; an empty answer is `InvalidInput`, as in std.
    pub(crate) fn kind(&self) -> io::ErrorKind {
        match &self.failure {
            Failure::Resolve(e) => e.kind(),
            Failure::ResolveTimeout(_) => io::ErrorKind::TimedOut,
            Failure::NoAddress => io::ErrorKind::InvalidInput,
            Failure::Attempts { last, skipped, .. } => match last {
                Some(e) if *skipped == 0 => e.kind(),
                _ => io::ErrorKind::TimedOut,
            },
        }
    }

    /// True when the budget ran out (see [`ConnectError::kind`]).
    #[cfg(test)]
    pub(crate) fn is_timeout(&self) -> bool {
        self.kind() == io::ErrorKind::TimedOut
    }

    /// Each address tried, in order, with its error text (empty when resolution failed).
    #[cfg(test)]
    pub(crate) fn tried(&self) -> &[(SocketAddr, String)] {
        match &self.failure {
            Failure::Attempts { tried, .. } => tried,
            _ => &[],
        }
    }

    /// As an `io::Error`: for a literal address whose single attempt failed with an
    /// `io::Error`, that error unchanged (its `raw_os_error` kept); otherwise a new error of
    /// [`ConnectError::kind`] carrying the full message.
    pub(crate) fn into_io(self) -> io::Error {
        let kind = self.kind();
        let message = self.to_string();
        match self {
            ConnectError {
                target: Target::Addr(_),
                failure:
                    Failure::Attempts {
                        tried,
                        last: Some(e),
                        skipped: 0,
                        ..
                    },
            } if tried.len() == 1 => e,
            // Keep a local resource failure's OS error reachable (as the source) for the
            // breaker's classification, under the full message.
            ConnectError {
                failure: Failure::Resolve(e),
                ..
            }
            | ConnectError {
                failure: Failure::Attempts { last: Some(e), .. },
                ..
            } if matches!(super::blame(&e), super::Blame::Local(_)) => {
                io::Error::new(kind, Caused { message, source: e })
            }
            _ => io::Error::new(kind, message),
        }
    }
}

/// A message with the `io::Error` it is about as its source.
#[derive(Debug)]
struct Caused {
    message: String,
    source: io::Error,
}

impl fmt::Display for Caused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Caused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = &self.target;
        match &self.failure {
            Failure::Resolve(e) => write!(f, "{target}: name resolution failed: {e}"),
            Failure::ResolveTimeout(t) => {
                write!(f, "{target}: name resolution timed out after {t:?}")
            }
            Failure::NoAddress => write!(f, "{target} resolves to no address"),
            Failure::Attempts {
                tried,
                skipped,
                budget,
                ..
            } => {
                write!(f, "{target}:")?;
                let literal = matches!(target, Target::Addr(_));
                for (i, (addr, err)) in tried.iter().enumerate() {
                    let sep = if i == 0 { " " } else { "; " };
                    if literal && tried.len() == 1 {
                        write!(f, "{sep}{err}")?;
                    } else {
                        write!(f, "{sep}{addr}: {err}")?;
                    }
                }
                if *skipped > 0 {
                    let sep = if tried.is_empty() { " " } else { "; " };
                    let s = if *skipped == 1 { "" } else { "es" };
                    write!(f, "{sep}{skipped} more address{s} not tried")?;
                    if let Some(b) = budget {
                        write!(f, ": connect budget of {b:?} used up")?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// Resolves `target` (a host name asynchronously with `tokio::net::lookup_host`, at every
/// call: never cached, never blocking a runtime thread), then tries every address in the
/// resolver's order (duplicates dropped) until one connects. `timeout` is the deadline of the
/// whole call, resolution included, split over the addresses as the module docs describe;
/// `None` leaves each attempt to the kernel (and `TCP_USER_TIMEOUT`).
///
/// If the deadline passes during resolution, the blocking `getaddrinfo` keeps running on
/// tokio's blocking pool until it returns; its answer is discarded.
pub(crate) async fn connect_tcp(
    target: &Target,
    opts: &TcpOptions,
    timeout: Option<Duration>,
) -> Result<TcpStream, ConnectError> {
    // A timeout too large to add to now is no bound at all.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let addrs = match target {
        Target::Addr(a) => vec![*a],
        Target::Host { host, port } => {
            let fail = |failure| ConnectError {
                target: target.clone(),
                failure,
            };
            let lookup = tokio::net::lookup_host((host.as_str(), *port));
            let resolved = match deadline {
                Some(d) => match tokio::time::timeout_at(d, lookup).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(fail(Failure::ResolveTimeout(timeout.unwrap_or_default())));
                    }
                },
                None => lookup.await,
            };
            let mut addrs: Vec<SocketAddr> = Vec::new();
            for a in resolved.map_err(|e| fail(Failure::Resolve(e)))? {
                if !addrs.contains(&a) {
                    addrs.push(a);
                }
            }
            if addrs.is_empty() {
                return Err(fail(Failure::NoAddress));
            }
            addrs
        }
    };
    connect_addrs(target, &addrs, opts, deadline, timeout).await
}

/// Tries `addrs` in order within `deadline` (see the module docs for the split).
async fn connect_addrs(
    target: &Target,
    addrs: &[SocketAddr],
    opts: &TcpOptions,
    deadline: Option<Instant>,
    budget: Option<Duration>,
) -> Result<TcpStream, ConnectError> {
    let mut tried = Vec::with_capacity(addrs.len());
    let mut last = None;
    let mut skipped = 0;
    for (i, &addr) in addrs.iter().enumerate() {
        let share = match deadline {
            None => None,
            Some(d) => {
                let remaining = d.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    skipped = addrs.len() - i;
                    break;
                }
                let left = u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
                Some((remaining / left).max(MIN_ATTEMPT).min(remaining))
            }
        };
        match connect_one(addr, opts, share).await {
            Ok(stream) => {
                if !tried.is_empty() {
                    tracing::debug!(
                        peer.target = %target,
                        peer.addr = %addr,
                        failed = tried.len(),
                        "connected after failed attempts"
                    );
                }
                return Ok(stream);
            }
            Err(Attempt::Io(e)) => {
                tried.push((addr, e.to_string()));
                last = Some(e);
            }
            Err(Attempt::TimedOut(t)) => {
                tried.push((addr, format!("timed out after {t:?}")));
                last = None;
            }
        }
    }
    Err(ConnectError {
        target: target.clone(),
        failure: Failure::Attempts {
            tried,
            last,
            skipped,
            budget,
        },
    })
}

/// How one attempt failed.
enum Attempt {
    Io(io::Error),
    TimedOut(Duration),
}

/// One socket with the options set, connected to `addr` within `timeout`.
async fn connect_one(
    addr: SocketAddr,
    opts: &TcpOptions,
    timeout: Option<Duration>,
) -> Result<TcpStream, Attempt> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(Attempt::Io)?;
    set_options(&socket, addr, opts);
    let connecting = socket.connect(addr);
    match timeout {
        Some(t) => match tokio::time::timeout(t, connecting).await {
            Ok(r) => r.map_err(Attempt::Io),
            Err(_) => Err(Attempt::TimedOut(t)),
        },
        None => connecting.await.map_err(Attempt::Io),
    }
}

/// Sets `opts` on `socket`; a refused option is warned about, not fatal.
fn set_options(socket: &TcpSocket, addr: SocketAddr, opts: &TcpOptions) {
    let s = SockRef::from(socket);
    let warn = |what: &str, r: io::Result<()>| {
        if let Err(e) = r {
            tracing::warn!(option = what, peer.addr = %addr, error = %e, "failed to set socket option");
        }
    };
    if opts.nodelay {
        warn("tcp_nodelay", s.set_tcp_nodelay(true));
    }
    if let Some(time) = opts.keepalive {
        let ka = TcpKeepalive::new()
            .with_time(time)
            .with_interval(opts.keepalive_interval)
            .with_retries(opts.keepalive_retries);
        warn("tcp_keepalive", s.set_tcp_keepalive(&ka));
    }
    if let Some(uto) = opts.user_timeout {
        warn("tcp_user_timeout", s.set_tcp_user_timeout(Some(uto)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::net::TcpListener;

    fn opts() -> TcpOptions {
        TcpOptions::default()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A loopback port nothing listens on (bound, then closed).
    fn closed_port(ip: &str) -> SocketAddr {
        let l = std::net::TcpListener::bind(addr(&format!("{ip}:0"))).unwrap();
        l.local_addr().unwrap()
    }

    /// A listener whose accept queue is full: further SYNs get no answer (Linux drops them),
    /// so a connect to it hangs until its timeout. Returns the listener and the filler.
    async fn full_listener() -> (TcpListener, TcpStream) {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(addr("127.0.0.1:0")).unwrap();
        // Backlog 0: Linux queues one connection.
        let listener = sock.listen(0).unwrap();
        let filler = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (listener, filler)
    }

    #[test]
    fn connect_parse_forms() {
        assert_eq!(
            Target::parse("1.2.3.4:5"),
            Ok(Target::Addr(addr("1.2.3.4:5")))
        );
        assert_eq!(Target::parse("[::1]:5"), Ok(Target::Addr(addr("[::1]:5"))));
        assert_eq!(
            Target::parse("db.local:5432"),
            Ok(Target::Host {
                host: "db.local".into(),
                port: 5432
            })
        );
        assert_eq!(
            Target::parse("my_host-1:65535"),
            Ok(Target::Host {
                host: "my_host-1".into(),
                port: 65535
            })
        );
        for s in ["db.local:5432", "127.0.0.1:5432", "[::1]:5432"] {
            assert_eq!(Target::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn connect_parse_errors() {
        let err = |s: &str| Target::parse(s).unwrap_err();
        assert!(err("::1").contains("without brackets"), "{}", err("::1"));
        assert!(
            err("::1:5432").contains("\"[::1]:5432\""),
            "{}",
            err("::1:5432")
        );
        assert!(err("fe80::1").contains("without brackets"));
        assert!(err("db.local").contains("missing port"));
        assert!(err("db.local:").contains("missing port"));
        assert!(err("1.2.3.4").contains("missing port"));
        assert!(err("[::1]").contains("missing port"));
        assert!(err("[::1]5").contains("missing port"));
        assert!(err("[::1:5").contains("missing ']'"));
        assert!(err("[nope]:5").contains("not an IPv6 address"));
        assert!(err("[::1]:x").contains("invalid port"));
        assert!(err("db:65536").contains("invalid port"));
        assert!(err("db:-1").contains("invalid port"));
        assert!(err("db:0").contains("port 0"));
        assert!(err("1.2.3.4:0").contains("port 0"));
        assert!(err("[::1]:0").contains("port 0"));
        assert!(err(":5432").contains("missing host"));
        assert!(err("").contains("missing port"));
        assert!(err("d b:1").contains("invalid character ' '"));
        assert!(err("bücher.de:1").contains("xn--"));
        assert!(err(&format!("{}:1", "a".repeat(254))).contains("longer than"));
    }

    #[tokio::test]
    async fn connect_refused_literal_keeps_os_error() {
        let target = Target::parse("127.0.0.1:1").unwrap();
        let e = connect_tcp(&target, &opts(), Some(Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        assert!(!e.is_timeout());
        assert_eq!(e.tried().len(), 1);
        assert_eq!(e.tried()[0].0, addr("127.0.0.1:1"));
        assert!(e.to_string().starts_with("127.0.0.1:1: "), "{e}");
        assert!(!e.to_string().contains("127.0.0.1:1: 127.0.0.1:1"), "{e}");
        let io = e.into_io();
        assert_eq!(io.raw_os_error(), Some(libc::ECONNREFUSED));
    }

    #[tokio::test]
    async fn connect_second_address_after_refusal() {
        let listener = TcpListener::bind("127.0.0.3:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        let bad = closed_port("127.0.0.2");
        let target = Target::parse(&format!("two.test:{}", good.port())).unwrap();
        let stream = connect_addrs(
            &target,
            &[bad, good],
            &opts(),
            Some(Instant::now() + Duration::from_secs(5)),
            Some(Duration::from_secs(5)),
        )
        .await
        .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), good);
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, stream.local_addr().unwrap());
    }

    #[tokio::test]
    async fn connect_all_refused_names_each_address() {
        let a = closed_port("127.0.0.2");
        let b = closed_port("127.0.0.3");
        let target = Target::Host {
            host: "two.test".into(),
            port: a.port(),
        };
        let e = connect_addrs(&target, &[a, b], &opts(), None, None)
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("two.test:{}: {a}: ", a.port())),
            "{msg}"
        );
        assert!(msg.contains(&format!("; {b}: ")), "{msg}");
        assert_eq!(msg.matches("refused").count(), 2, "{msg}");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(
            e.tried().iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![a, b]
        );
        // Several addresses: the full message, not one of the errors.
        let io = e.into_io();
        assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(io.raw_os_error(), None);
        assert_eq!(io.to_string(), msg);
    }

    #[tokio::test]
    async fn connect_zero_budget_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target::Addr(listener.local_addr().unwrap());
        let e = connect_tcp(&target, &opts(), Some(Duration::ZERO))
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.tried().is_empty());
        assert!(e.to_string().contains("not tried"), "{e}");
        assert_eq!(e.into_io().kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn connect_unanswered_attempt_times_out() {
        let (listener, _filler) = full_listener().await;
        let target = Target::Addr(listener.local_addr().unwrap());
        let e = connect_tcp(&target, &opts(), Some(Duration::from_millis(50)))
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert_eq!(e.tried().len(), 1);
        assert!(e.tried()[0].1.starts_with("timed out after"), "{e}");
        let io = e.into_io();
        assert_eq!(io.kind(), io::ErrorKind::TimedOut);
        assert!(io.to_string().contains("timed out after"), "{io}");
    }

    #[tokio::test]
    async fn connect_budget_split_over_addresses() {
        // The first address never answers; the second listens. With a split budget the
        // first attempt gives up after its share and the second still gets the rest.
        let (full, _filler) = full_listener().await;
        let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        let target = Target::Host {
            host: "split.test".into(),
            port: good.port(),
        };
        let budget = Duration::from_millis(400);
        let stream = connect_addrs(
            &target,
            &[full.local_addr().unwrap(), good],
            &opts(),
            Some(Instant::now() + budget),
            Some(budget),
        )
        .await
        .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), good);
    }

    #[tokio::test]
    async fn connect_host_resolved_on_loopback() {
        // "localhost" comes from /etc/hosts: no traffic leaves the machine.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Target::parse(&format!("localhost:{port}")).unwrap();
        let stream = connect_tcp(&target, &opts(), Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(stream.peer_addr().unwrap().ip().is_loopback());
        assert!(stream.nodelay().unwrap());
    }

    #[tokio::test]
    async fn connect_huge_timeout_is_unbounded() {
        let target = Target::parse("127.0.0.1:1").unwrap();
        let e = connect_tcp(&target, &opts(), Some(Duration::MAX))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }
}
