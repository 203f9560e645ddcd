//! Liveness: every event loop (each traffic worker, and the control runtime that serves the
//! admin API) ticks a heartbeat; `/healthz` fails while one of them has not ticked for the
//! stall bound, so a loop blocked by a bug, or a worker whose thread is gone, gets the pod
//! restarted instead of answering "ok" while it serves nothing.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How often a loop ticks.
const TICK: Duration = Duration::from_millis(500);

pub struct Heartbeats {
    start: Instant,
    stall: Duration,
    /// Milliseconds after `start` of each loop's last tick; `names[i]` says which loop.
    beats: Vec<AtomicU64>,
    names: Vec<String>,
}

impl Heartbeats {
    /// Heartbeats for loops named `names`; one that has not ticked for `stall` is stalled.
    pub fn new(names: Vec<String>, stall: Duration) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            stall,
            beats: names.iter().map(|_| AtomicU64::new(0)).collect(),
            names,
        })
    }

    /// Ticks loop `i` for as long as the loop runs it (spawn it on that loop).
    pub async fn beat(self: Arc<Self>, i: usize) {
        loop {
            let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.beats[i].store(ms, Ordering::Relaxed);
            tokio::time::sleep(TICK).await;
        }
    }

    /// The first loop that has not ticked within the stall bound, and for how long.
    pub fn stalled(&self) -> Option<(&str, Duration)> {
        let now = self.start.elapsed();
        self.beats.iter().zip(&self.names).find_map(|(b, name)| {
            let quiet = now.saturating_sub(Duration::from_millis(b.load(Ordering::Relaxed)));
            (quiet > self.stall).then_some((name.as_str(), quiet))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (up to 5 s) until `f` holds.
    fn eventually(what: &str, f: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_blocked_event_loop_is_reported_and_recovers() {
        let beats = Heartbeats::new(
            vec!["worker-0".into(), "control".into()],
            Duration::from_millis(1200),
        );
        let (block_tx, block_rx) = std::sync::mpsc::channel::<Duration>();
        let block_rx = std::sync::Mutex::new(block_rx);
        std::thread::scope(|s| {
            for i in 0..2 {
                let beats = beats.clone();
                let block_rx = &block_rx;
                s.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        tokio::spawn(beats.beat(i));
                        loop {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            // Worker 0 blocks its loop when told (a stand-in for a bug that
                            // blocks the runtime), then ends when told with zero.
                            if i == 0 {
                                match block_rx.lock().unwrap().try_recv() {
                                    Ok(d) if d.is_zero() => return,
                                    Ok(d) => std::thread::sleep(d),
                                    Err(_) => {}
                                }
                            } else if STOP.load(Ordering::Relaxed) {
                                return;
                            }
                        }
                    });
                });
            }
            eventually("both loops to tick", || beats.stalled().is_none());
            block_tx.send(Duration::from_secs(3)).unwrap();
            eventually("the blocked loop to be reported", || {
                beats.stalled().is_some_and(|(n, _)| n == "worker-0")
            });
            eventually("the loop to tick again once unblocked", || {
                beats.stalled().is_none()
            });
            block_tx.send(Duration::ZERO).unwrap();
            // A loop that has ended (its thread is gone) stays reported.
            eventually("the ended loop to be reported", || {
                beats.stalled().is_some()
            });
            STOP.store(true, Ordering::Relaxed);
        });
    }

    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
}
