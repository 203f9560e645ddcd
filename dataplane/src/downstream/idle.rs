//! Idle keep-alive connections, parked. A plain HTTP/1.1 connection that has sent nothing
//! for a while after an answer gives up its task: one task per worker holds every such
//! connection as a slot (the socket, who it is, when it went quiet) and waits for their
//! next bytes together. The first byte gets the connection a task again.
//!
//! A task costs a connection about 1.3 KB (the connection's future, in tokio's cell); a
//! slot here about 200 bytes, beside the 256 bytes tokio's reactor keeps for any socket.
//! That is what makes ten thousand idle connections cheap. Waking a parked connection costs
//! a task spawn, once per request that comes after a pause of at least `IDLE_RELEASE`.
//!
//! Parked connections close, as in their tasks, when their header read timeout runs out
//! (counted from their last answer) and when the listener drains.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    task::{Context, Poll, Wake, Waker},
};

use slab::Slab;
use tokio::{
    net::TcpStream,
    sync::{Notify, mpsc},
    time::Instant,
};

use super::{drain::DrainSignal, http1::Resume};
use crate::proxy::ConnInfo;

/// A connection waiting for its next request.
pub struct Parked {
    pub io: TcpStream,
    pub info: ConnInfo,
    pub resume: Resume,
    /// Held while parked: the listener's drain waits for it like for a task.
    pub drain: DrainSignal,
}

/// Where connections are parked: the sending side of a worker's parking task.
#[derive(Clone)]
pub struct Parking {
    tx: mpsc::UnboundedSender<Parked>,
}

impl Parking {
    /// Parks `conn`; `false` when the parking task has ended (the listener drains): the
    /// connection is dropped, which closes it.
    pub fn park(&self, conn: Parked) -> bool {
        self.tx.send(conn).is_ok()
    }
}

/// The parking task's side: started once per worker, it ends when the listener drains.
pub struct Lot {
    rx: mpsc::UnboundedReceiver<Parked>,
}

/// A new parking lot and the handle connections park through.
pub fn lot() -> (Parking, Lot) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Parking { tx }, Lot { rx })
}

/// Slots whose socket may have become readable, and the parking task to tell.
#[derive(Default)]
struct Woken {
    keys: Mutex<Vec<usize>>,
    notify: Notify,
}

/// A slot's waker: it names the slot, nothing more.
struct SlotWaker {
    key: usize,
    woken: Arc<Woken>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.key);
        self.woken.notify.notify_one();
    }
}

struct Slot {
    conn: Parked,
    /// Made once per slot and kept: the reactor holds a clone while the socket waits.
    waker: Waker,
    /// Tells this occupant of the slot from a later one with the same key.
    generation: u32,
}

impl Lot {
    /// Holds parked connections until the listener drains, each at most `timeout` from
    /// when it went quiet; `wake` gets back those whose next bytes came.
    pub async fn run(
        mut self,
        wake: impl Fn(Parked),
        timeout: std::time::Duration,
        mut drain: DrainSignal,
    ) {
        let woken = Arc::new(Woken::default());
        let mut slots: Slab<Slot> = Slab::new();
        // Deadlines in the order connections parked: all share one timeout and park a
        // fixed time after their last answer, so this is (nearly) their order in time.
        let mut deadlines: VecDeque<(Instant, usize, u32)> = VecDeque::new();
        let mut generation = 0u32;
        let sleep = tokio::time::sleep(timeout);
        tokio::pin!(sleep);
        loop {
            let next_deadline = deadlines.front().map(|d| d.0);
            if let Some(at) = next_deadline {
                sleep.as_mut().reset(at);
            }
            tokio::select! {
                biased;
                () = drain.draining() => return,
                conn = self.rx.recv() => {
                    let Some(conn) = conn else { return };
                    generation = generation.wrapping_add(1);
                    let deadline = conn.resume.since + timeout;
                    let entry = slots.vacant_entry();
                    let key = entry.key();
                    let waker = Waker::from(Arc::new(SlotWaker { key, woken: woken.clone() }));
                    entry.insert(Slot { conn, waker, generation });
                    deadlines.push_back((deadline, key, generation));
                    poll_slot(&mut slots, key, &wake);
                }
                () = woken.notify.notified() => {
                    let keys = std::mem::take(
                        &mut *woken.keys.lock().unwrap_or_else(|p| p.into_inner()),
                    );
                    for key in keys {
                        poll_slot(&mut slots, key, &wake);
                    }
                }
                () = &mut sleep, if next_deadline.is_some() => {
                    let now = Instant::now();
                    while let Some(&(at, key, generation)) = deadlines.front() {
                        if at > now {
                            break;
                        }
                        deadlines.pop_front();
                        if slots.get(key).is_some_and(|s| s.generation == generation) {
                            // Closed, as an idle connection in its task would be.
                            slots.remove(key);
                        }
                    }
                }
            }
            // The deadline queue keeps entries of connections that woke up; shed them when
            // they are most of it, so a busy lot does not grow it without bound.
            if deadlines.len() > 64 && deadlines.len() > 2 * slots.len() {
                deadlines.retain(|&(_, key, generation)| {
                    slots.get(key).is_some_and(|s| s.generation == generation)
                });
            }
        }
    }
}

/// Polls slot `key`'s socket with the slot's waker: readable connections leave the lot for
/// `wake`; failed ones close.
fn poll_slot(slots: &mut Slab<Slot>, key: usize, wake: &impl Fn(Parked)) {
    let Some(slot) = slots.get(key) else {
        // Woken after it left (a stale wake): nothing to do.
        return;
    };
    let mut cx = Context::from_waker(&slot.waker);
    match slot.conn.io.poll_read_ready(&mut cx) {
        Poll::Pending => {}
        Poll::Ready(Ok(())) => {
            let mut conn = slots.remove(key).conn;
            conn.resume.ready = true;
            wake(conn);
        }
        // A socket error: the connection is gone.
        Poll::Ready(Err(_)) => {
            slots.remove(key);
        }
    }
}
