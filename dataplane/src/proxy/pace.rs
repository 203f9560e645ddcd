//! How a streamed request body is coming along, shared between the body (as it is read)
//! and the attempt that sends it (which puts a timeout or a failure down to the client
//! when the client is the one holding it up).

/// Where a streamed request body stands, as the upstream side last saw it: so a timeout or
/// a broken send can be put down to the client when the client is the one holding it up.
#[derive(Clone, Debug, Default)]
pub struct Pace(std::sync::Arc<std::sync::atomic::AtomicU8>);

impl Pace {
    const FLOWING: u8 = 0;
    const WAITING: u8 = 1;
    const FAILED: u8 = 2;

    /// The upstream side is waiting for the client's next bytes.
    pub fn waiting_on_client(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) == Self::WAITING
    }

    /// The client's body broke (reset, truncated, badly framed).
    pub fn client_failed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) == Self::FAILED
    }

    fn set(&self, state: u8) {
        self.0.store(state, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn waiting(&self) {
        self.set(Self::WAITING);
    }

    pub fn flowing(&self) {
        self.set(Self::FLOWING);
    }

    pub fn failed(&self) {
        self.set(Self::FAILED);
    }
}
