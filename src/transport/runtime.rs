//! Whether the tokio runtime that a socket is registered with still runs, in one atomic
//! load.
//!
//! A socket is registered with the I/O driver of the runtime that was current when it was
//! opened. Once that runtime is dropped, every readiness wait on the socket fails, while a
//! peek still looks fine; a pool that outlives its runtime (a `static` shared by tests, each
//! with its own runtime) must not hand such a member out. Polling the socket's write
//! readiness finds it, but costs about 6 % of a checkout (a context, the coop budget, the
//! registration's readiness word). Instead, each runtime that opens sockets gets one flag,
//! shared by every socket opened on it, and a *sentinel* task spawned on that runtime clears
//! the flag when the runtime drops the task.
//!
//! Why that is enough: at shutdown tokio drops every task it owns (running or idle, polled
//! or never polled) before it shuts its I/O driver down, in both the current-thread and the
//! multi-thread scheduler. So a flag still set means the driver still runs (it may stop right
//! after the load: the same race as any other check). A sentinel spawned on a runtime that
//! is already shutting down is dropped at once, which clears its flag.
//!
//! The cost: one task per runtime (it never wakes), and one registry entry per runtime,
//! pruned when its runtime is gone and no socket of it is left.

use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::runtime::{Handle, Id};

/// The liveness of the runtime a socket was opened on.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeAlive(Arc<AtomicBool>);

/// Every runtime that has opened a socket, with its flag.
static RUNTIMES: Mutex<Vec<(Id, Weak<AtomicBool>)>> = Mutex::new(Vec::new());

/// Clears the flag when the runtime drops the sentinel task that holds it.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl RuntimeAlive {
    /// The flag of the current runtime (the one a socket opened now registers with), or
    /// `None` outside any runtime.
    pub(crate) fn current() -> Option<RuntimeAlive> {
        let handle = Handle::try_current().ok()?;
        let id = handle.id();
        let mut runtimes = RUNTIMES.lock();
        if let Some(flag) = runtimes
            .iter()
            .find(|(i, _)| *i == id)
            .and_then(|(_, w)| w.upgrade())
        {
            return Some(RuntimeAlive(flag));
        }
        // Drop the entries of runtimes that are gone and whose sockets are all closed (a
        // running runtime's sentinel holds its flag).
        runtimes.retain(|(_, w)| w.strong_count() > 0);
        let flag = Arc::new(AtomicBool::new(true));
        let guard = ClearOnDrop(flag.clone());
        // The guard is moved into the future, so dropping the task drops it even if the task
        // was never polled.
        drop(handle.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await
        }));
        runtimes.push((id, Arc::downgrade(&flag)));
        Some(RuntimeAlive(flag))
    }

    /// False once the runtime has dropped its tasks (its I/O driver is shut down or about
    /// to be).
    #[inline]
    pub(crate) fn is_alive(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(multi: bool) -> tokio::runtime::Runtime {
        if multi {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        }
    }

    #[test]
    fn no_runtime_no_flag() {
        assert!(RuntimeAlive::current().is_none());
    }

    #[test]
    fn the_flag_falls_when_the_runtime_is_dropped() {
        for multi in [false, true] {
            let rt = runtime(multi);
            let flag = rt.block_on(async { RuntimeAlive::current().unwrap() });
            // The same runtime shares one flag.
            let again = rt.block_on(async { RuntimeAlive::current().unwrap() });
            assert!(Arc::ptr_eq(&flag.0, &again.0), "multi: {multi}");
            assert!(flag.is_alive(), "multi: {multi}");
            drop(rt);
            assert!(!flag.is_alive(), "multi: {multi}: the runtime is gone");
        }
    }

    #[test]
    fn each_runtime_has_its_own_flag() {
        let a = runtime(false);
        let b = runtime(false);
        let fa = a.block_on(async { RuntimeAlive::current().unwrap() });
        let fb = b.block_on(async { RuntimeAlive::current().unwrap() });
        assert!(!Arc::ptr_eq(&fa.0, &fb.0));
        drop(a);
        assert!(!fa.is_alive());
        assert!(fb.is_alive(), "b still runs");
        drop(b);
        assert!(!fb.is_alive());
    }

    #[test]
    fn a_flag_taken_outside_block_on_still_follows_the_runtime() {
        // Through `Runtime::enter`, without ever running the runtime: the sentinel is never
        // polled, and its drop still clears the flag.
        let rt = runtime(false);
        let flag = {
            let _enter = rt.enter();
            RuntimeAlive::current().unwrap()
        };
        assert!(flag.is_alive());
        drop(rt);
        assert!(!flag.is_alive());
    }
}
