//! [`RedisConfig`]: how every connection is set up (credentials, database, protocol
//! version, client name, extra setup commands). It is also the session "as set up" that a
//! returned connection is brought back to.

use std::fmt;
use std::time::Duration;

/// How [`RedisConnection::setup`](crate::RedisConnection::setup) prepares a new connection: credentials, database, protocol
/// version and client name.
///
/// The password is a secret: `Debug` prints it as `"<redacted>"`, and it never appears in
/// errors or tracing output.
///
/// ```
/// use livepool_redis::RedisConfig;
///
/// let cfg = RedisConfig::new()
///     .username("app")
///     .password("hunter2")
///     .db(5)
///     .resp3(true)
///     .client_name("worker-1");
/// assert_eq!(cfg.db, 5);
/// let shown = format!("{cfg:?}");
/// assert!(shown.contains("<redacted>") && !shown.contains("hunter2"));
/// ```
///
/// Each setting is a public field, readable under its setter's name (`config.db`); the extra
/// setup commands are set with [`on_connect`](Self::on_connect()) only.
#[derive(Clone)]
pub struct RedisConfig {
    /// The ACL user (see [`username`](Self::username())).
    pub username: Option<String>,
    /// The password (see [`password`](Self::password())). `Debug` shows it redacted.
    pub password: Option<String>,
    /// The database `setup` selects (see [`db`](Self::db())).
    pub db: u32,
    /// Whether `setup` sends `HELLO 3` (see [`resp3`](Self::resp3())).
    pub resp3: bool,
    /// The name for `CLIENT SETNAME` (see [`client_name`](Self::client_name())).
    pub client_name: Option<String>,
    /// Extra commands of the setup, part of the session "as set up".
    on_connect: Vec<Vec<Vec<u8>>>,
    /// The reply deadline (see [`response_timeout`](Self::response_timeout())).
    pub response_timeout: Option<Duration>,
}

/// The default [`RedisConfig::response_timeout`]: the redis crate's own default.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            username: None,
            password: None,
            db: 0,
            resp3: false,
            client_name: None,
            on_connect: Vec::new(),
            response_timeout: Some(RESPONSE_TIMEOUT),
        }
    }
}

impl RedisConfig {
    /// No credentials, database 0, RESP2, no client name.
    ///
    /// ```
    /// let cfg = livepool_redis::RedisConfig::new();
    /// assert_eq!(cfg.db, 0);
    /// assert!(!cfg.resp3);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The ACL user to authenticate as (with [`password`](Self::password)); without one,
    /// the `default` user.
    ///
    /// ```
    /// let cfg = livepool_redis::RedisConfig::new().username("app").password("pw");
    /// assert_eq!(cfg.username.as_deref(), Some("app"));
    /// ```
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password (for `requirepass` or the ACL user). Authentication is sent only when a
    /// password is set.
    ///
    /// ```
    /// let cfg = livepool_redis::RedisConfig::new().password("pw");
    /// assert!(cfg.password.is_some());
    /// ```
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The database to `SELECT` after authenticating (0, the default, sends nothing).
    ///
    /// ```
    /// let cfg = livepool_redis::RedisConfig::new().db(3);
    /// assert_eq!(cfg.db, 3);
    /// ```
    pub fn db(mut self, db: u32) -> Self {
        self.db = db;
        self
    }

    /// Speak RESP3 (`HELLO 3`), which enables push frames such as client-tracking
    /// invalidations.
    ///
    /// ```
    /// let cfg = livepool_redis::RedisConfig::new().resp3(true);
    /// assert!(cfg.resp3);
    /// ```
    pub fn resp3(mut self, on: bool) -> Self {
        self.resp3 = on;
        self
    }

    /// A name for `CLIENT SETNAME` (shown by `CLIENT LIST`).
    ///
    /// ```
    /// let cfg = livepool_redis::RedisConfig::new().client_name("worker-1");
    /// assert_eq!(cfg.client_name.as_deref(), Some("worker-1"));
    /// ```
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
        self
    }

    /// One more command of every connection's setup (after AUTH/HELLO and before SELECT),
    /// for session state that every caller should find: `CLIENT TRACKING on` (client-side
    /// caching; its invalidation pushes need `resp3(true)` and are benign on an idle
    /// member), `CLIENT NO-EVICT on`, … An error reply fails the setup. The same commands
    /// sent by a caller change the session and make the connection not clean.
    ///
    /// ```
    /// let cfg = livepool_redis::RedisConfig::new()
    ///     .resp3(true)
    ///     .on_connect(&["CLIENT", "TRACKING", "on"]);
    /// # let _ = cfg;
    /// ```
    pub fn on_connect(mut self, args: &[&str]) -> Self {
        self.on_connect
            .push(args.iter().map(|a| a.as_bytes().to_vec()).collect());
        self
    }

    /// How long a command's reply may take before the call fails with a timeout
    /// (`RedisError::is_timeout`); `None` waits as long as the server takes. A blocking
    /// command (`BLPOP k 5`, `XREAD BLOCK 5000`, `WAIT`) gets its own timeout on top, so it is
    /// never cut short; one that may block forever (`BLPOP k 0`) is not bounded.
    ///
    /// A call that timed out costs no reconnect and hands no late reply to anyone: the
    /// reply is still owed, and is read and dropped off the caller's path when the
    /// connection goes back (or by the holder's next call), within one more response
    /// timeout; a server that does not answer that either gets the connection closed then.
    /// Against a blackholed or stopped server this is what turns a hang into a clean
    /// failure.
    ///
    /// It bounds a new connection's setup too (in a pool, a setup with nothing else to send
    /// sends `PING`): a server that accepts connections but does not answer fails each
    /// connect at this timeout, counted toward the pool's circuit breaker, which then
    /// fails callers at once (see the crate docs, "A server that does not answer").
    ///
    /// Default: 500 ms (the redis crate's own default).
    ///
    /// ```
    /// use std::time::Duration;
    /// let cfg = livepool_redis::RedisConfig::new().response_timeout(Duration::from_secs(2));
    /// assert_eq!(cfg.response_timeout, Some(Duration::from_secs(2)));
    /// assert_eq!(livepool_redis::RedisConfig::new().response_timeout, Some(Duration::from_millis(500)));
    /// ```
    pub fn response_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.response_timeout = timeout.into();
        self
    }

    /// Replaces every occurrence of the password in `text` (belt and braces: servers do not
    /// echo passwords, but an error message must never carry one).
    /// The commands of a connection's setup, in order, each with a name for messages:
    /// `HELLO 3 [AUTH user pass] [SETNAME name]` when RESP3 is configured, else
    /// `AUTH [user] pass` (when a password is set) and `CLIENT SETNAME`; then the
    /// [`on_connect`](Self::on_connect) commands, then `SELECT db` when the database is not 0.
    pub(crate) fn setup_steps(&self) -> Vec<(&'static str, Vec<Vec<u8>>)> {
        let b = |s: &str| s.as_bytes().to_vec();
        let mut steps: Vec<(&'static str, Vec<Vec<u8>>)> = Vec::new();
        if self.resp3 {
            let mut hello = vec![b("HELLO"), b("3")];
            if let Some(pw) = &self.password {
                let user = self.username.as_deref().unwrap_or("default");
                hello.extend([b("AUTH"), b(user), b(pw)]);
            }
            if let Some(name) = &self.client_name {
                hello.extend([b("SETNAME"), b(name)]);
            }
            steps.push(("HELLO", hello));
        } else {
            if let Some(pw) = &self.password {
                let mut auth = vec![b("AUTH")];
                if let Some(user) = &self.username {
                    auth.push(b(user));
                }
                auth.push(b(pw));
                steps.push(("AUTH", auth));
            }
            if let Some(name) = &self.client_name {
                steps.push(("CLIENT SETNAME", vec![b("CLIENT"), b("SETNAME"), b(name)]));
            }
        }
        for cmd in &self.on_connect {
            steps.push(("on_connect", cmd.clone()));
        }
        if self.db != 0 {
            steps.push((
                "SELECT",
                vec![b("SELECT"), self.db.to_string().into_bytes()],
            ));
        }
        steps
    }

    pub(crate) fn scrub(&self, text: String) -> String {
        match &self.password {
            Some(p) if !p.is_empty() && text.contains(p.as_str()) => {
                text.replace(p.as_str(), "<redacted>")
            }
            _ => text,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("resp3", &self.resp3)
            .field("client_name", &self.client_name)
            .field("on_connect", &self.on_connect.len())
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}
