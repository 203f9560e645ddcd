//! The response body of a logged request: counts the bytes that go to the client and sends
//! the record when the body ends, fails, or is dropped (the client went away, or the
//! connection's codec stopped reading it once all it declared was sent). Bytes sent and the
//! total duration are only known then.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::time::Instant;

use super::{record::Record, writer::Sink};
use crate::proxy::body::{BoxError, ProxyBody};

pub struct Logged {
    inner: ProxyBody,
    /// Until it is sent.
    record: Option<Box<Record>>,
    sink: Arc<Sink>,
}

impl Logged {
    pub fn wrap(inner: ProxyBody, record: Box<Record>, sink: Arc<Sink>) -> ProxyBody {
        Logged {
            inner,
            record: Some(record),
            sink,
        }
        .boxed()
    }

    fn end(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.ended = Some(Instant::now());
            self.sink.send(r);
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(r)) = (frame.data_ref(), self.record.as_mut()) {
                    r.bytes_sent += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.end();
                }
            }
            Poll::Ready(None | Some(Err(_))) => self.end(),
            Poll::Pending => {}
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

impl Drop for Logged {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::{BodyExt as _, StreamBody};

    use super::*;
    use crate::{
        accesslog::{AccessLog, Destination, Field, Format},
        metrics::AccessLogMetrics,
    };

    fn body(chunks: &[&'static [u8]]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures::stream::iter(frames)).boxed()
    }

    fn record(rid: &'static str) -> Box<Record> {
        let req = http::Request::get("/").body(()).unwrap();
        let rid = http::HeaderValue::from_static(rid);
        Record::arrive(
            &req,
            "127.0.0.1:1".parse().unwrap(),
            None,
            Instant::now(),
            &rid,
        )
    }

    #[tokio::test]
    async fn the_record_leaves_when_the_body_ends_or_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let counters = AccessLogMetrics::default();
        let log = AccessLog::start(
            Format::Text(vec![Field::RequestId, Field::BytesSent]),
            Destination::File(path.clone()),
            8,
            counters.clone(),
        )
        .unwrap();
        let mut whole = Logged::wrap(body(&[b"abc", b"defg"]), record("whole"), log.sink.clone());
        while let Some(f) = whole.frame().await {
            f.unwrap();
        }
        let mut cut = Logged::wrap(body(&[b"abc", b"defg"]), record("cut"), log.sink.clone());
        cut.frame().await.unwrap().unwrap();
        drop(cut);
        // Sent already: dropping the finished body sends nothing more.
        drop(whole);
        log.close(Duration::from_secs(5));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "request_id=whole bytes_sent=7\nrequest_id=cut bytes_sent=3\n"
        );
        assert_eq!(counters.written.get(), 2);
    }
}
