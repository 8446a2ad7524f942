//! [`Balancer`]: one handle over several endpoints, each its own [`Pool`] with the same
//! settings and protocol, its own members, breaker, heartbeats and statistics.
//!
//! Selection is the power of two choices: two endpoints drawn at random among those not yet
//! tried for this `get()` (and, while there are any, among those whose breaker would let a
//! connect through: an endpoint whose open period has passed is a candidate again, and its
//! next connect is the breaker's probe),
//! and the one with the lower load wins: first an endpoint with an idle member (a checkout
//! there needs no connect), then the fewer connections in use plus callers waiting. Two
//! random choices keep most of the benefit of always taking the least loaded (the classic
//! result: the maximum load drops from log n / log log n to log log n) without every caller
//! piling onto the same endpoint between two snapshots.
//!
//! Keyed selection (`get_for`, for sharded caches): rendezvous hashing. Each endpoint scores
//! `hash(endpoint, key)` and the key goes to the highest score among the endpoints whose
//! breaker lets a connect through; when that one is down, to the next. So a key moves only
//! when its own endpoint is down (or removed), and comes back when it recovers; the keys of
//! the others stay where they are. The hash is std's SipHash with fixed keys: stable within
//! one build, not across Rust releases (keys move after an upgrade, as after a restart of a
//! cache ring).
//!
//! Failover: a `get()` that meets a refused or timed-out connect, a failed setup or an open
//! breaker on its endpoint moves on to the next choice, within the wait timeout of the
//! pools; when every endpoint failed, the error lists each one with its error
//! ([`Error::endpoint_errors`]). Other errors (the pool is full and stayed full, a local
//! resource ran out, the pool was closed) are returned as they are: another endpoint would
//! not help.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use crate::jitter::SplitMix64;
use crate::member::Conn;
use crate::pool::builder::{Builder, IntoAddr};
use crate::pool::error::{BuildError, Error};
use crate::pool::{Pool, Status};
use crate::protocol::{Protocol, Raw};
use crate::stats::Statistics;

/// Builds an endpoint's pool from the builder `Pool::builder(addr)` returns.
type Configure<P> = dyn Fn(Builder) -> Builder<P> + Send + Sync;

struct Inner<P: Protocol> {
    configure: Box<Configure<P>>,
    /// A snapshot that `get()` clones (an `Arc`); `add` and `remove` replace it.
    endpoints: RwLock<Arc<[Pool<P>]>>,
    rng: Mutex<SplitMix64>,
}

/// One handle over several endpoints (replicas, a primary and its standby, the addresses of
/// a service), each with its own [`Pool`]: `get()` picks an endpoint by load, prefers one
/// with an idle connection, and fails over when an endpoint is down.
///
/// Cheap to clone; every clone is the same balancer.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let balancer = livepool::Balancer::new(
///     ["10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"],
///     |b| b.max_size(8).min_idle(1),
/// )?;
/// let conn = balancer.get().await?;
/// println!("served by {}", conn.endpoint());
/// # Ok(()) }
/// ```
pub struct Balancer<P: Protocol = Raw> {
    inner: Arc<Inner<P>>,
}

impl<P: Protocol> Clone for Balancer<P> {
    fn clone(&self) -> Self {
        Balancer {
            inner: self.inner.clone(),
        }
    }
}

/// One endpoint's view in [`Balancer::endpoints`].
///
/// ```no_run
/// # fn f(b: livepool::Balancer) {
/// for e in b.endpoints() {
///     println!("{}: {} in use, breaker {:?}", e.endpoint, e.status.in_use, e.status.breaker);
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EndpointStatus {
    /// The endpoint as configured.
    pub endpoint: String,
    /// Its pool's occupancy and breaker.
    pub status: Status,
    /// Its pool's counters.
    pub statistics: Statistics,
}

impl Balancer {
    /// A balancer over `endpoints`, each endpoint's pool built by `configure` from
    /// `Pool::builder(endpoint)` (so every endpoint gets the same settings and protocol).
    /// Nothing connects here.
    ///
    /// # Errors
    /// The first endpoint's configuration error, if `configure` makes an invalid one.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let b = livepool::Balancer::new(["127.0.0.1:1", "127.0.0.2:1"], |b| b.max_size(4)).unwrap();
    /// assert_eq!(b.endpoints().len(), 2);
    /// # }
    /// ```
    pub fn new<P, A, F>(
        endpoints: impl IntoIterator<Item = A>,
        configure: F,
    ) -> Result<Balancer<P>, BuildError>
    where
        P: Protocol,
        A: IntoAddr,
        F: Fn(Builder) -> Builder<P> + Send + Sync + 'static,
    {
        let configure: Box<Configure<P>> = Box::new(configure);
        let pools = endpoints
            .into_iter()
            .map(|a| configure(Pool::builder(a)).build())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Balancer {
            inner: Arc::new(Inner {
                configure,
                endpoints: RwLock::new(pools.into()),
                rng: Mutex::new(SplitMix64(0x6a09_e667_f3bc_c908)),
            }),
        })
    }
}

impl<P: Protocol> Balancer<P> {
    /// Checks out a connection from one endpoint (see the type's docs for how it is chosen);
    /// [`Conn::endpoint`] says which.
    ///
    /// # Errors
    /// [`Error::is_all_endpoints`] when every endpoint failed (each one's error in
    /// [`Error::endpoint_errors`]) or there is none; otherwise the chosen endpoint's error
    /// when failing over would not help (see the type's docs).
    ///
    /// # Cancel safety
    /// As [`Pool::get`].
    ///
    /// ```no_run
    /// # async fn f(b: livepool::Balancer) {
    /// match b.get().await {
    ///     Ok(conn) => println!("{}", conn.endpoint()),
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// # }
    /// ```
    pub async fn get(&self) -> Result<Conn<P>, Error> {
        let pools = self.inner.endpoints.read().clone();
        let mut tried = vec![false; pools.len()];
        let order = std::iter::from_fn(|| {
            let i = self.pick(&pools, &tried)?;
            tried[i] = true;
            Some(i)
        });
        self.try_in_order(&pools, order).await
    }

    /// Checks out a connection from the endpoint that owns `key` (rendezvous hashing, see the
    /// type's docs), or from the next one in the key's order while that one is down.
    ///
    /// # Errors
    /// As [`Balancer::get`].
    ///
    /// ```no_run
    /// # async fn f(b: livepool::Balancer) {
    /// let conn = b.get_for("user:42").await.unwrap();
    /// println!("user:42 lives on {}", conn.endpoint());
    /// # }
    /// ```
    pub async fn get_for<K: Hash + ?Sized>(&self, key: &K) -> Result<Conn<P>, Error> {
        let pools = self.inner.endpoints.read().clone();
        let mut order: Vec<(u64, usize)> = pools
            .iter()
            .enumerate()
            .map(|(i, p)| (rendezvous(p.endpoint(), key), i))
            .collect();
        order.sort_unstable_by(|a, b| b.cmp(a));
        // Those that would let a connect through first, each group in the key's order.
        let (up, down): (Vec<usize>, Vec<usize>) = order
            .into_iter()
            .map(|(_, i)| i)
            .partition(|&i| !pools[i].breaker_refuses());
        self.try_in_order(&pools, up.into_iter().chain(down)).await
    }

    /// Tries `order` one after the other, failing over as `get` does.
    async fn try_in_order(
        &self,
        pools: &[Pool<P>],
        order: impl Iterator<Item = usize>,
    ) -> Result<Conn<P>, Error> {
        let deadline = pools
            .first()
            .and_then(|p| p.wait_timeout())
            .map(|t| Instant::now() + t);
        let mut failures = Vec::new();
        for i in order {
            match checkout(&pools[i], deadline).await {
                Ok(conn) => return Ok(conn),
                Err(e) if fails_over(&e) => {
                    tracing::debug!(endpoint = pools[i].endpoint(), error = %e, "failing over");
                    failures.push(e);
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::all_endpoints(failures))
    }

    /// The endpoint to try next, or `None` when all were tried.
    fn pick(&self, pools: &[Pool<P>], tried: &[bool]) -> Option<usize> {
        let mut candidates: Vec<usize> = (0..pools.len())
            .filter(|&i| !tried[i] && !pools[i].breaker_refuses())
            .collect();
        if candidates.is_empty() {
            // Only refusing breakers left: try them too (each fails fast), so that the error
            // names every endpoint.
            candidates = (0..pools.len()).filter(|&i| !tried[i]).collect();
        }
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let (a, b) = {
                    let mut rng = self.inner.rng.lock();
                    let a = (rng.next_u64() % n as u64) as usize;
                    let b = (rng.next_u64() % (n as u64 - 1)) as usize;
                    (a, if b >= a { b + 1 } else { b })
                };
                let (a, b) = (candidates[a], candidates[b]);
                Some(if load(&pools[b]) < load(&pools[a]) {
                    b
                } else {
                    a
                })
            }
        }
    }

    /// Each endpoint with its pool's status and statistics.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let b = livepool::Balancer::new(["127.0.0.1:1"], |b| b).unwrap();
    /// assert_eq!(b.endpoints()[0].endpoint, "127.0.0.1:1");
    /// # }
    /// ```
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.inner
            .endpoints
            .read()
            .iter()
            .map(|p| EndpointStatus {
                endpoint: p.endpoint().to_string(),
                status: p.status(),
                statistics: p.statistics(),
            })
            .collect()
    }

    /// The pool of one endpoint (for its events, or to resize it), by its name as
    /// configured.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let b = livepool::Balancer::new(["127.0.0.1:1"], |b| b).unwrap();
    /// let _events = b.pool("127.0.0.1:1").unwrap().events();
    /// assert!(b.pool("127.0.0.9:1").is_none());
    /// # }
    /// ```
    pub fn pool(&self, endpoint: &str) -> Option<Pool<P>> {
        self.inner
            .endpoints
            .read()
            .iter()
            .find(|p| p.endpoint() == endpoint)
            .cloned()
    }

    /// Adds an endpoint, its pool built like the others'. Nothing connects here (unless
    /// `min_idle` asks for it). Adding one that is there already does nothing.
    ///
    /// # Errors
    /// Its configuration error, if any.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let b = livepool::Balancer::new(["127.0.0.1:1"], |b| b).unwrap();
    /// b.add("127.0.0.2:1").unwrap();
    /// assert_eq!(b.endpoints().len(), 2);
    /// # }
    /// ```
    pub fn add(&self, endpoint: impl IntoAddr) -> Result<(), BuildError> {
        let pool = (self.inner.configure)(Pool::builder(endpoint)).build()?;
        let mut eps = self.inner.endpoints.write();
        if eps.iter().any(|p| p.endpoint() == pool.endpoint()) {
            pool.close();
            return Ok(());
        }
        let mut v = eps.to_vec();
        v.push(pool);
        *eps = v.into();
        Ok(())
    }

    /// Removes an endpoint and drains its pool: no new checkouts, idle members closed at
    /// once, checked-out ones closed when they are returned. True if it was there.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let b = livepool::Balancer::new(["127.0.0.1:1", "127.0.0.2:1"], |b| b).unwrap();
    /// assert!(b.remove("127.0.0.1:1"));
    /// assert!(!b.remove("127.0.0.1:1"));
    /// assert_eq!(b.endpoints().len(), 1);
    /// # }
    /// ```
    pub fn remove(&self, endpoint: &str) -> bool {
        let mut eps = self.inner.endpoints.write();
        let Some(i) = eps.iter().position(|p| p.endpoint() == endpoint) else {
            return false;
        };
        let mut v = eps.to_vec();
        let pool = v.remove(i);
        *eps = v.into();
        drop(eps);
        pool.close();
        true
    }
}

/// One endpoint's `get()`, cut short at the caller's deadline.
async fn checkout<P: Protocol>(
    pool: &Pool<P>,
    deadline: Option<Instant>,
) -> Result<Conn<P>, Error> {
    match deadline {
        Some(d) => match tokio::time::timeout_at(d, pool.get()).await {
            Ok(res) => res,
            // The wait timeout ran out during this endpoint's connect: what it did is the
            // answer, not the time.
            Err(_) => Err(pool.timeout_error()),
        },
        None => pool.get().await,
    }
}

/// The rendezvous score of `key` on `endpoint`.
fn rendezvous<K: Hash + ?Sized>(endpoint: &str, key: &K) -> u64 {
    // `new()` is keyed the same in every instance (unlike a `HashMap`'s `RandomState`).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    endpoint.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

/// Whether another endpoint could do better than this error.
fn fails_over(e: &Error) -> bool {
    e.is_connect() || e.is_setup() || e.is_circuit_open()
}

/// The load order of an endpoint: one with an idle member first, then fewer in use plus
/// waiting.
fn load<P: Protocol>(pool: &Pool<P>) -> (bool, usize) {
    let s = pool.status();
    (s.idle == 0, s.in_use + s.waiting)
}

impl<P: Protocol> std::fmt::Debug for Balancer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_choices_are_distinct_and_cover_every_candidate() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let b = Balancer::new(["127.0.0.1:1", "127.0.0.2:1", "127.0.0.3:1"], |b| b).unwrap();
            let pools = b.inner.endpoints.read().clone();
            let mut seen = [0usize; 3];
            for _ in 0..300 {
                seen[b.pick(&pools, &[false; 3]).unwrap()] += 1;
            }
            // Equal loads: every endpoint is chosen, roughly a third each.
            assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
            assert_eq!(b.pick(&pools, &[true, false, true]), Some(1));
            assert_eq!(b.pick(&pools, &[true; 3]), None);
        });
    }

    /// `get()` can be spawned.
    const _: fn(&Balancer) = |b| {
        fn send<T: Send>(_: T) {}
        send(b.get());
    };

    #[test]
    fn an_empty_balancer_says_so() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let b = Balancer::new(Vec::<&str>::new(), |b| b).unwrap();
            let e = b.get().await.unwrap_err();
            assert!(e.is_all_endpoints());
            assert!(e.endpoint_errors().is_empty());
            assert_eq!(e.to_string(), "the balancer has no endpoint");
        });
    }
}
