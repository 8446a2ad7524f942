//! The faults and their scheduler: every `--fault-every` ms a random server-side connection
//! (or, for `restart`, a server) gets one of the chosen faults.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};

use crate::state::{Chaos, DOWNTIME, Outage};

const RESTART_GAP: Duration = Duration::from_secs(4);

/// ...at most one per this (outage, ejections, return and recovery all fit in it).
const OUTAGE_GAP: Duration = Duration::from_secs(8);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    Fin,
    Rst,
    Garbage,
    Stall,
    Late,
    Restart,
}

impl Fault {
    pub(crate) const ALL: [Fault; 6] = [
        Self::Fin,
        Self::Rst,
        Self::Garbage,
        Self::Stall,
        Self::Late,
        Self::Restart,
    ];
    pub(crate) fn name(self) -> &'static str {
        ["fin", "rst", "garbage", "stall", "late", "restart"][self as usize]
    }
    /// The client's kernel sees these at once: a checkout after one is a stale handout.
    pub(crate) fn kernel_visible(self) -> bool {
        matches!(self, Self::Fin | Self::Rst | Self::Garbage | Self::Restart)
    }
}

/// Every `every`, applies a random enabled fault to a random unfaulted server-side connection
/// (of a random server); a `restart` goes to a random server through `restarts`.
pub(crate) async fn inject_faults(chaos: Arc<Chaos>, restarts: Vec<mpsc::Sender<()>>) {
    let (faults, every) = (&chaos.opts.faults, chaos.opts.fault_every);
    if faults.is_empty() {
        return;
    }
    let several = chaos.servers.len() > 1;
    // A restart takes an endpoint away for a while: at most one per gap, and none near the
    // end, so that the run ends with every endpoint recovered.
    let (gap, quiet_end) = if several {
        (OUTAGE_GAP, OUTAGE_GAP)
    } else {
        (RESTART_GAP, 2 * DOWNTIME)
    };
    let mut rng = fastrand::Rng::with_seed(chaos.opts.seed);
    let mut next_restart = Instant::now() + RESTART_GAP / 2;
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sleep_until(chaos.end) => return,
        }
        let mut fault = faults[rng.usize(..faults.len())];
        let near_end = chaos.end.saturating_duration_since(Instant::now()) < quiet_end;
        if fault == Fault::Restart && (Instant::now() < next_restart || near_end) {
            let others: Vec<_> = faults.iter().filter(|&&f| f != Fault::Restart).collect();
            if others.is_empty() {
                continue;
            }
            fault = *others[rng.usize(..others.len())];
        }
        if fault == Fault::Restart {
            next_restart = Instant::now() + gap;
            let srv = if several {
                rng.usize(..chaos.servers.len())
            } else {
                0
            };
            if !chaos.servers[srv].down.swap(true, Relaxed) && restarts[srv].try_send(()).is_ok() {
                chaos.injected[Fault::Restart as usize].fetch_add(1, Relaxed);
                chaos.outages.lock().unwrap().push(Outage {
                    server: srv,
                    down: Instant::now(),
                    back: None,
                });
            }
            continue;
        }
        // A random server among those with a connection to fault.
        let mut with_targets: Vec<_> = chaos
            .servers
            .iter()
            .map(|s| s.conns.lock().unwrap())
            .filter(|c| c.values().any(|c| !c.faulted))
            .collect();
        let conns = match with_targets.len() {
            0 => continue,
            1 => &mut with_targets[0],
            n => &mut with_targets[rng.usize(..n)],
        };
        let mut targets: Vec<_> = conns.values_mut().filter(|c| !c.faulted).collect();
        let i = rng.usize(..targets.len());
        targets[i].faulted = true;
        let _ = targets[i].tx.send(fault);
    }
}
