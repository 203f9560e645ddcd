//! Graceful shutdown for downstream connections: one signal tells every connection to
//! finish what it is doing and close, and the listener waits until they all have.

use tokio::sync::watch;

/// Held by the listener.
pub struct Drain {
    tx: watch::Sender<bool>,
}

/// Held by each connection until it ends; the listener's wait ends when the last is dropped.
#[derive(Clone)]
pub struct DrainSignal {
    rx: watch::Receiver<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            tx: watch::Sender::new(false),
        }
    }
}

impl Drain {
    pub fn signal(&self) -> DrainSignal {
        DrainSignal {
            rx: self.tx.subscribe(),
        }
    }

    /// Tells every connection to drain and waits until all of them have ended.
    pub async fn drain(self) {
        self.tx.send_replace(true);
        self.tx.closed().await;
    }
}

impl DrainSignal {
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once the listener drains (or is gone).
    pub async fn draining(&mut self) {
        // An error means the listener is gone: draining as well.
        let _ = self.rx.wait_for(|d| *d).await;
    }
}
