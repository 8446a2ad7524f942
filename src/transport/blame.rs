//! Whose fault a failed connect, setup or heartbeat is: the endpoint's (evidence for the
//! breaker and a balancer's ejection) or this process's (a local resource ran out: counted
//! on its own, never fed to the breaker). Decided from the OS error code, here, next to the
//! connects that meet it; the pool and the reaper ask before they report to the breaker.

use std::io;

/// Whose fault an I/O error is, for the breaker (see the breaker module's docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Blame {
    /// Evidence about the endpoint (or the path to it).
    Endpoint,
    /// This process ran out of a resource; the text names it
    /// (`"too many open files"`, …).
    Local(&'static str),
}

/// The local resource an OS error code says is exhausted, if it is one.
fn local_cause(code: i32) -> Option<&'static str> {
    match code {
        libc::EMFILE => Some("too many open files"),
        libc::ENFILE => Some("too many open files in the system"),
        libc::ENOBUFS => Some("no buffer space"),
        libc::ENOMEM => Some("out of memory"),
        libc::EADDRNOTAVAIL => Some("no local address or port available"),
        _ => None,
    }
}

/// Classifies an I/O error from a connect, a setup or a heartbeat: the one place that says
/// whether it counts against the endpoint.
///
/// Looks at the OS error code of `e` and of any `io::Error` it wraps (an error that
/// carries a message around the original, as for a host name with several addresses).
pub(crate) fn blame(e: &io::Error) -> Blame {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(cause) = io.raw_os_error().and_then(local_cause) {
                return Blame::Local(cause);
            }
            if let Some(inner) = io.get_ref() {
                cur = Some(inner);
                continue;
            }
        }
        cur = err.source();
    }
    Blame::Endpoint
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    #[test]
    fn local_resource_errors_are_not_the_endpoints_fault() {
        for (code, text) in [
            (libc::EMFILE, "too many open files"),
            (libc::ENFILE, "too many open files in the system"),
            (libc::ENOBUFS, "no buffer space"),
            (libc::ENOMEM, "out of memory"),
            (libc::EADDRNOTAVAIL, "no local address or port available"),
        ] {
            let e = io::Error::from_raw_os_error(code);
            assert_eq!(blame(&e), Blame::Local(text), "{e}");
            // Wrapped in a message (a host name's error), the code is still found.
            let wrapped = io::Error::other(Wrap(e));
            assert_eq!(blame(&wrapped), Blame::Local(text));
        }
        for code in [
            libc::ECONNREFUSED,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ECONNRESET,
        ] {
            let e = io::Error::from_raw_os_error(code);
            assert_eq!(blame(&e), Blame::Endpoint, "{e}");
        }
        assert_eq!(blame(&io::Error::other("setup failed")), Blame::Endpoint);
        assert_eq!(
            blame(&io::Error::new(io::ErrorKind::TimedOut, "no answer")),
            Blame::Endpoint
        );
    }

    #[derive(Debug)]
    struct Wrap(io::Error);

    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "db.local:1: {}", self.0)
        }
    }

    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
