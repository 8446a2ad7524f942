//! Opening one TCP connection: resolve at every connect, try every address in order within
//! the connect timeout, set the socket options. (Placeholder until the DNS work lands.)

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// Where to connect: a literal socket address, or a host name and port resolved at every
/// connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Addr(SocketAddr),
    Host { host: String, port: u16 },
}

impl Target {
    pub(crate) fn parse(s: &str) -> Result<Target, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Target::Addr(a));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} has no port (expected host:port)"))?;
        if host.is_empty() || host.contains(':') {
            return Err(format!(
                "{s:?} is not host:port (an IPv6 address needs brackets: [::1]:port)"
            ));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("{s:?} has no valid port"))?;
        Ok(Target::Host {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(a) => a.fmt(f),
            Target::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// TCP socket options applied to every new connection.
#[derive(Clone, Debug)]
pub(crate) struct TcpOptions {
    pub(crate) nodelay: bool,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_retries: u32,
    pub(crate) user_timeout: Option<Duration>,
}

/// A failed connect: the target and every address tried, with its error.
#[derive(Debug)]
pub(crate) struct ConnectError {
    target: String,
    tried: Vec<(Option<SocketAddr>, io::Error)>,
    single: bool,
}

impl ConnectError {
    pub(crate) fn single(e: io::Error) -> Self {
        ConnectError {
            target: String::new(),
            tried: vec![(None, e)],
            single: true,
        }
    }

    pub(crate) fn kind(&self) -> io::ErrorKind {
        self.tried
            .last()
            .map_or(io::ErrorKind::NotFound, |(_, e)| e.kind())
    }

    pub(crate) fn is_timeout(&self) -> bool {
        self.kind() == io::ErrorKind::TimedOut
    }

    /// The error as an `io::Error`: the original one for a single attempt.
    pub(crate) fn into_io(mut self) -> io::Error {
        if self.single && self.tried.len() == 1 {
            return self.tried.pop().expect("one attempt").1;
        }
        io::Error::new(self.kind(), self.to_string())
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.target.is_empty() {
            write!(f, "{}", self.target)?;
            if self.tried.is_empty() {
                return f.write_str(" resolves to no address");
            }
            f.write_str(": ")?;
        }
        for (i, (addr, e)) in self.tried.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            match addr {
                Some(a) => write!(f, "{a}: {e}")?,
                None => write!(f, "{e}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConnectError {}

/// Resolves `target` (for a host name: asynchronously, at every call) and tries each address
/// in order; each attempt gets an even share of what is left of `timeout`.
pub(crate) async fn connect_tcp(
    target: &Target,
    opts: &TcpOptions,
    timeout: Option<Duration>,
) -> Result<TcpStream, ConnectError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let addrs: Vec<SocketAddr> = match target {
        Target::Addr(a) => {
            return attempt(*a, opts, deadline)
                .await
                .map_err(ConnectError::single);
        }
        Target::Host { host, port } => {
            let lookup = tokio::net::lookup_host((host.as_str(), *port));
            let res = match deadline {
                Some(d) => tokio::time::timeout_at(d, lookup)
                    .await
                    .unwrap_or_else(|_| {
                        Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "name resolution did not finish within the connect timeout",
                        ))
                    }),
                None => lookup.await,
            };
            match res {
                Ok(it) => it.collect(),
                Err(e) => {
                    return Err(ConnectError {
                        target: target.to_string(),
                        tried: vec![(
                            None,
                            io::Error::new(e.kind(), format!("name resolution failed: {e}")),
                        )],
                        single: false,
                    });
                }
            }
        }
    };
    let mut tried = Vec::new();
    let n = addrs.len();
    for (i, addr) in addrs.into_iter().enumerate() {
        let share = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Instant::now() + (left / (n - i) as u32).max(Duration::from_millis(10))
        });
        match attempt(addr, opts, share).await {
            Ok(s) => return Ok(s),
            Err(e) => tried.push((Some(addr), e)),
        }
    }
    Err(ConnectError {
        target: target.to_string(),
        tried,
        single: false,
    })
}

async fn attempt(
    addr: SocketAddr,
    opts: &TcpOptions,
    deadline: Option<Instant>,
) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    set_options(&SockRef::from(&socket), opts);
    let connecting = socket.connect(addr);
    match deadline {
        Some(d) => tokio::time::timeout_at(d, connecting).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer within the connect timeout",
            )
        })?,
        None => connecting.await,
    }
}

/// Sets the TCP options; a failed option is warned about, not fatal.
fn set_options(s: &SockRef<'_>, opts: &TcpOptions) {
    let warn = |what: &str, r: io::Result<()>| {
        if let Err(e) = r {
            tracing::warn!(option = what, error = %e, "failed to set socket option");
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
