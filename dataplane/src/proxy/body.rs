//! The proxy's body types: [`ProxyBody`], which every body it sends or returns is, and
//! wrappers: one counts bytes as they stream through, without buffering; one sends
//! frames already read before the rest of a body; one bounds a response body by the route's
//! deadline.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use prometheus_client::metrics::counter::Counter;

/// What a body's failure is, whichever side it came from.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the proxy sends or returns.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

pub struct Counted<B> {
    inner: B,
    counter: Counter,
    /// A second count: this body's own, for its access-log record.
    own: Option<Counter>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, counter: Counter) -> Self {
        Self {
            inner,
            counter,
            own: None,
        }
    }

    /// Counts into `own` too.
    pub fn also(mut self, own: Option<Counter>) -> Self {
        self.own = own;
        self
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.counter.inc_by(data.len() as u64);
            if let Some(own) = &self.own {
                own.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body bounded by the route's deadline, holding the pool's breaker slot until
/// it ends. The timer is only armed when the body has to wait, so a body that is ready at
/// once costs no allocation.
pub struct Bounded<B> {
    inner: B,
    deadline: Option<tokio::time::Instant>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    permit: Option<crate::breaker::Permit>,
}

impl<B> Bounded<B> {
    pub fn new(
        inner: B,
        deadline: Option<tokio::time::Instant>,
        permit: crate::breaker::Permit,
    ) -> Self {
        Self {
            inner,
            deadline,
            sleep: None,
            permit: Some(permit),
        }
    }
}

impl<B> Body for Bounded<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if !matches!(frame, Some(Ok(_))) {
                    // Done (or broken): free the pool's slot now.
                    this.permit = None;
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if let Some(deadline) = this.deadline {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if sleep.as_mut().poll(cx).is_ready() {
                        this.permit = None;
                        this.deadline = None;
                        return Poll::Ready(Some(Err(
                            "the route timeout passed while the response body was streaming".into(),
                        )));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

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
}

/// A request body that keeps its [`Pace`] up to date as it is polled.
pub struct Paced<B> {
    inner: B,
    pace: Pace,
}

impl<B> Paced<B> {
    pub fn new(inner: B, pace: Pace) -> Self {
        Self { inner, pace }
    }
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        self.pace.set(match &polled {
            Poll::Pending => Pace::WAITING,
            Poll::Ready(Some(Err(_))) => Pace::FAILED,
            Poll::Ready(_) => Pace::FLOWING,
        });
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Frames already read from a body, then the rest of it.
pub struct Prefixed<B> {
    read: std::collections::VecDeque<Frame<Bytes>>,
    rest: B,
}

impl<B> Prefixed<B> {
    pub fn new(read: Vec<Frame<Bytes>>, rest: B) -> Self {
        Self {
            read: read.into(),
            rest,
        }
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(f) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }
}

/// A request body as the listener hands it over: hyper's, one read whole with its head
/// (Parapet's own HTTP/1.1 codec, `downstream::http1`, for bodies of a known length that
/// fit its buffer; taken by the first poll), or none at all.
pub enum DownstreamBody {
    Hyper(hyper::body::Incoming),
    Full(Option<Bytes>),
    Empty,
}

impl Body for DownstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Hyper(b) => Pin::new(b).poll_frame(cx),
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::Full(b) => b.is_none(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Empty => SizeHint::with_exact(0),
        }
    }
}
