//! The face-off's worker loop and its oracle, the same for every pool.
//!
//! A [`Subject`] is one pool (with one configuration) behind one function: send a request
//! carrying a token, return the reply's text. [`drive`] runs `tasks` workers against it,
//! each in a closed loop: a unique token per request (`<lane>-<worker>-<n>`), the request
//! under a deadline, the outcome judged here and nowhere else:
//! - **ok**: the reply is the token;
//! - **wrong**: a reply that is not the token (a stale or crossed reply: the worst outcome);
//! - **failed**: an error (a clean failure: the caller knows);
//! - **hung**: the deadline passed first (the caller waited for nothing).
//!
//! Every outcome is recorded with its start and end (milliseconds since the run's `t0`), so
//! that the figures of a fault ([`Figures::of`]) and the timeline pictures come from the same
//! record. Workers pause while [`Control::pause`] is on (idle faults: no traffic at all),
//! stop on [`Control::stop`], and stop by themselves after `max_requests` each.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// A request's reply text, or the error's text.
pub type Reply<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// One pool under test, in one configuration.
pub trait Subject: Send + Sync + 'static {
    /// The row's name, such as `deadpool-redis` or `bb8-postgres (test_on_check_out)`.
    fn name(&self) -> String;
    /// One request: check a connection out, send `token` so that the reply must carry it
    /// (`ECHO`, `SELECT $1`), return the reply's text, give the connection back.
    fn request<'a>(&'a self, token: &'a str) -> Reply<'a>;
    /// Connect attempts so far (successful or not), as far as the pool (or a wrapper around
    /// its manager) can count them.
    fn connects(&self) -> u64;
    /// Connections the pool holds open now (idle and in use), as the pool itself counts
    /// them; `None` when it cannot say. An idle fault is *known* when this drops.
    fn open(&self) -> Option<usize>;
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ok,
    Failed,
    Hung,
    Wrong,
}

/// One request, in milliseconds since the run's `t0`.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub start_ms: u32,
    pub end_ms: u32,
    pub kind: Kind,
}

/// What the workers share with the orchestration.
#[derive(Default)]
pub struct Control {
    pub stop: AtomicBool,
    pub pause: AtomicBool,
}

/// Runs `tasks` workers against `subject` until `control.stop` (or `max_requests` each) and
/// returns every outcome, oldest first.
pub async fn drive(
    subject: Arc<dyn Subject>,
    lane: usize,
    tasks: usize,
    deadline: Duration,
    max_requests: u64,
    t0: Instant,
    control: Arc<Control>,
) -> Vec<Outcome> {
    let record = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..tasks {
        let (subject, control, record) = (subject.clone(), control.clone(), record.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while n < max_requests && !control.stop.load(Ordering::Relaxed) {
                if control.pause.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                n += 1;
                let token = format!("{lane}-{w}-{n}");
                let start = t0.elapsed();
                let kind = match tokio::time::timeout(deadline, subject.request(&token)).await {
                    Err(_) => Kind::Hung,
                    Ok(Err(_)) => Kind::Failed,
                    Ok(Ok(reply)) if reply == token => Kind::Ok,
                    Ok(Ok(_)) => Kind::Wrong,
                };
                let end = t0.elapsed();
                record.lock().push(Outcome {
                    start_ms: start.as_millis() as u32,
                    end_ms: end.as_millis() as u32,
                    kind,
                });
                if kind == Kind::Failed {
                    // A pool failing fast while the server is down: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let mut all = std::mem::take(&mut *record.lock());
    all.sort_by_key(|o| (o.end_ms, o.start_ms));
    all
}

/// The figures of one pool through one fault.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub ok: u64,
    pub failed: u64,
    pub hung: u64,
    pub wrong: u64,
    /// From the fault to the end of the first failed request that ended after it.
    pub first_failure_ms: Option<u32>,
    /// From the heal to the end of the first ok request that started after it.
    pub first_ok_after_heal_ms: Option<u32>,
}

impl Figures {
    /// The figures of the requests that ended from `fault_ms` on; recovery is counted from
    /// `heal_ms`.
    pub fn of(outcomes: &[Outcome], fault_ms: u32, heal_ms: u32) -> Figures {
        let mut f = Figures::default();
        for o in outcomes.iter().filter(|o| o.end_ms >= fault_ms) {
            match o.kind {
                Kind::Ok => f.ok += 1,
                Kind::Failed => f.failed += 1,
                Kind::Hung => f.hung += 1,
                Kind::Wrong => f.wrong += 1,
            }
            if o.kind == Kind::Failed && f.first_failure_ms.is_none() {
                f.first_failure_ms = Some(o.end_ms - fault_ms);
            }
            if o.kind == Kind::Ok && o.start_ms >= heal_ms {
                let after = o.end_ms - heal_ms;
                f.first_ok_after_heal_ms =
                    Some(f.first_ok_after_heal_ms.map_or(after, |a| a.min(after)));
            }
        }
        f
    }

    /// Whether the pool got through the fault as a caller needs: no wrong reply, no
    /// request past its deadline, and served again after the heal.
    pub fn healthy(&self) -> bool {
        self.wrong == 0 && self.hung == 0 && self.first_ok_after_heal_ms.is_some()
    }
}

/// Requests per `bucket_ms` by how they ended (by their end time): `(ok, failed, hung,
/// wrong)` per bucket, from 0 to `until_ms`.
pub fn timeline(outcomes: &[Outcome], bucket_ms: u32, until_ms: u32) -> Vec<[u32; 4]> {
    let mut buckets = vec![[0u32; 4]; (until_ms / bucket_ms + 1) as usize];
    for o in outcomes.iter().filter(|o| o.end_ms <= until_ms) {
        let b = &mut buckets[(o.end_ms / bucket_ms) as usize];
        let i = match o.kind {
            Kind::Ok => 0,
            Kind::Failed => 1,
            Kind::Hung => 2,
            Kind::Wrong => 3,
        };
        b[i] += 1;
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A pool broken on purpose: once `broken` is set, every other reply is the previous
    /// request's token (a stale reply) and every other request never answers.
    struct Broken {
        broken: AtomicBool,
        n: AtomicU64,
        last: Mutex<String>,
    }

    impl Subject for Broken {
        fn name(&self) -> String {
            "broken on purpose".into()
        }
        fn request<'a>(&'a self, token: &'a str) -> Reply<'a> {
            Box::pin(async move {
                let previous = std::mem::replace(&mut *self.last.lock(), token.to_string());
                if !self.broken.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    return Ok(token.to_string());
                }
                if self.n.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                    Ok(previous)
                } else {
                    std::future::pending().await
                }
            })
        }
        fn connects(&self) -> u64 {
            1
        }
        fn open(&self) -> Option<usize> {
            Some(1)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_broken_on_purpose_is_reported_as_broken() {
        let subject = Arc::new(Broken {
            broken: AtomicBool::new(false),
            n: AtomicU64::new(0),
            last: Mutex::new(String::new()),
        });
        let control = Arc::new(Control::default());
        let t0 = Instant::now();
        let run = tokio::spawn(drive(
            subject.clone(),
            0,
            1,
            Duration::from_millis(100),
            50,
            t0,
            control.clone(),
        ));
        // Healthy for a while, then broken.
        tokio::time::sleep(Duration::from_millis(20)).await;
        subject.broken.store(true, Ordering::Relaxed);
        let fault_ms = t0.elapsed().as_millis() as u32;
        tokio::time::sleep(Duration::from_millis(500)).await;
        control.stop.store(true, Ordering::Relaxed);
        let outcomes = run.await.unwrap();
        let f = Figures::of(&outcomes, fault_ms, fault_ms);
        assert!(f.wrong > 0, "stale replies must be seen: {f:?}");
        assert!(f.hung > 0, "hangs must be seen: {f:?}");
        assert!(!f.healthy());
        let t = timeline(&outcomes, 100, 600);
        assert!(t.iter().any(|b| b[3] > 0) && t.iter().any(|b| b[2] > 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_pool_is_reported_healthy() {
        let subject = Arc::new(Broken {
            broken: AtomicBool::new(false),
            n: AtomicU64::new(0),
            last: Mutex::new(String::new()),
        });
        let control = Arc::new(Control::default());
        let t0 = Instant::now();
        let run = tokio::spawn(drive(
            subject,
            0,
            2,
            Duration::from_millis(100),
            20,
            t0,
            control,
        ));
        let outcomes = run.await.unwrap();
        assert_eq!(
            outcomes.len(),
            40,
            "stops by itself after max_requests each"
        );
        let f = Figures::of(&outcomes, 0, 0);
        assert_eq!((f.ok, f.wrong, f.hung, f.failed), (40, 0, 0, 0));
        assert!(f.healthy());
    }
}
