//! One request's hedges: when the next is due, and those in flight.
//!
//! The first hedge is due one delay after the request started, each further one a delay
//! after the previous was due, while some attempt is still out and the plan allows more.
//! A request that never hedges allocates nothing here; each hedge is one boxed attempt.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;

pub struct Hedges<F> {
    in_flight: Vec<Pin<Box<F>>>,
    /// When the next hedge is due; `None`: no more hedges.
    next_at: Option<Instant>,
    gap: Duration,
    left: u32,
}

impl<F> Hedges<F> {
    /// No hedge when `after` is `None`; else at most `max` hedges, `after` apart.
    pub fn new(started: Instant, after: Option<Duration>, max: u32) -> Self {
        Self {
            in_flight: Vec::new(),
            next_at: after.map(|d| started + d),
            gap: after.unwrap_or_default(),
            left: if after.is_some() { max } else { 0 },
        }
    }

    /// When the next hedge is due, if one may go: hedges back up an attempt in flight, so
    /// none goes while nothing is out (a retry decides then).
    pub fn due(&self, main_running: bool) -> Option<Instant> {
        if self.left == 0 || !(main_running || self.running()) {
            return None;
        }
        self.next_at
    }

    /// Sends a hedge; the next is due one delay later.
    pub fn launch(&mut self, attempt: F) {
        self.in_flight.push(Box::pin(attempt));
        self.left = self.left.saturating_sub(1);
        self.next_at = self.next_at.map(|at| at + self.gap);
    }

    /// No more hedges for this request (no endpoint left to try, or no budget): later ones
    /// would fare no better.
    pub fn stop(&mut self) {
        self.left = 0;
    }

    /// Whether a hedge is in flight.
    pub fn running(&self) -> bool {
        !self.in_flight.is_empty()
    }
}

impl<F: Future> Hedges<F> {
    /// The first hedge in flight to finish; pending while none has (and forever when none
    /// is in flight, so poll it only while [`running`](Self::running)).
    pub fn next_done(&mut self) -> impl Future<Output = F::Output> + '_ {
        std::future::poll_fn(move |cx: &mut Context<'_>| {
            let done = self.in_flight.iter_mut().enumerate().find_map(|(i, a)| {
                match a.as_mut().poll(cx) {
                    Poll::Ready(out) => Some((i, out)),
                    Poll::Pending => None,
                }
            });
            match done {
                Some((i, out)) => {
                    drop(self.in_flight.swap_remove(i));
                    Poll::Ready(out)
                }
                None => Poll::Pending,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    type Sleep = Pin<Box<dyn Future<Output = u32>>>;

    fn answers_after(id: u32, d: Duration) -> Sleep {
        Box::pin(async move {
            tokio::time::sleep(d).await;
            id
        })
    }

    #[tokio::test(start_paused = true)]
    async fn hedges_are_due_one_delay_apart_up_to_the_plan() {
        let t0 = Instant::now();
        let mut h: Hedges<Sleep> = Hedges::new(t0, Some(50 * MS), 3);
        assert_eq!(h.due(true), Some(t0 + 50 * MS));
        assert_eq!(h.due(false), None, "nothing in flight to back up");
        h.launch(answers_after(1, 1000 * MS));
        assert_eq!(h.due(false), Some(t0 + 100 * MS), "the hedge itself is out");
        h.launch(answers_after(2, 1000 * MS));
        h.launch(answers_after(3, 1000 * MS));
        assert_eq!(h.due(true), None, "three sent: no fourth");
    }

    #[tokio::test(start_paused = true)]
    async fn no_delay_no_hedges_and_stop_ends_them() {
        let t0 = Instant::now();
        let none: Hedges<Sleep> = Hedges::new(t0, None, 3);
        assert_eq!(none.due(true), None);
        let mut h: Hedges<Sleep> = Hedges::new(t0, Some(10 * MS), 2);
        h.stop();
        assert_eq!(h.due(true), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_hedge_to_answer_comes_out_first() {
        let mut h: Hedges<Sleep> = Hedges::new(Instant::now(), Some(MS), 3);
        h.launch(answers_after(1, 300 * MS));
        h.launch(answers_after(2, 100 * MS));
        h.launch(answers_after(3, 200 * MS));
        let mut order = Vec::new();
        while h.running() {
            order.push(h.next_done().await);
        }
        assert_eq!(order, [2, 3, 1]);
    }
}
