//! What the request side leaves for the access log: a [`Record`] filled in three steps
//! (when the request arrives, when its stages are done, when its response body ends), and
//! the [`Tally`] the forward stage keeps of its attempts. Nothing here formats: values are
//! kept as they are (header values, addresses, instants) and turned into text by the
//! writer, off the request path.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use http::{HeaderMap, HeaderValue, Method, Request, Uri, Version, header};
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use super::field::Field;
use crate::{
    cache::CacheStatus, endpoint::EndpointHandle, proxy::TlsSession, snapshot::ClusterRuntime,
};

/// One request as the access log sees it.
pub struct Record {
    /// Wall-clock time the request arrived (the `time` field).
    pub time: SystemTime,
    /// The same moment on the monotonic clock, which the durations count from.
    pub started: Instant,
    pub client: SocketAddr,
    pub method: Method,
    pub uri: Uri,
    pub host: Option<HeaderValue>,
    pub version: Version,
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    pub forwarded_for: Option<HeaderValue>,
    pub trace_id: Option<TraceId>,
    pub tls: Option<Arc<TlsSession>>,
    /// The answer's status; 499 while there is none (the client went away first).
    pub status: u16,
    pub route: Option<Arc<str>>,
    pub key_id: Option<Arc<str>>,
    /// The client's `x-request-id`, or the one made for it.
    pub request_id: HeaderValue,
    pub cache: Option<CacheStatus>,
    pub rate_limit: Option<RateLimited>,
    /// The forward stage's attempts, and the request body's bytes.
    pub tally: Tally,
    /// Response body bytes handed to the connection.
    pub bytes_sent: u64,
    /// When the response body ended, or was dropped.
    pub ended: Option<Instant>,
}

/// nginx's status for a request whose client closed the connection before the answer.
pub const CLIENT_CLOSED: u16 = 499;

impl Record {
    /// What is known when the request arrives. Clones of header values and the URI share
    /// the request's buffers: nothing is copied.
    pub fn arrive<B>(
        req: &Request<B>,
        client: SocketAddr,
        tls: Option<&Arc<TlsSession>>,
        started: Instant,
        request_id: &HeaderValue,
    ) -> Box<Record> {
        let h = req.headers();
        Box::new(Record {
            time: SystemTime::now(),
            started,
            client,
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: h.get(header::HOST).cloned(),
            version: req.version(),
            user_agent: h.get(header::USER_AGENT).cloned(),
            referer: h.get(header::REFERER).cloned(),
            forwarded_for: h.get("x-forwarded-for").cloned(),
            trace_id: trace_id(h),
            tls: tls.cloned(),
            status: CLIENT_CLOSED,
            route: None,
            key_id: None,
            request_id: request_id.clone(),
            cache: None,
            rate_limit: None,
            tally: Tally::default(),
            bytes_sent: 0,
            ended: None,
        })
    }

    /// The field's value. `upstream`: the tally's last attempt, taken out of it.
    pub fn value<'a>(&'a self, field: Field, upstream: &'a Upstream) -> Value<'a> {
        use Value::{Absent, Bytes, Millis, Number, Text};
        let header =
            |v: &'a Option<HeaderValue>| v.as_ref().map_or(Absent, |v| Bytes(v.as_bytes()));
        let text = |v: &'a Option<Arc<str>>| v.as_deref().map_or(Absent, Text);
        match field {
            Field::Time => Value::Time(self.time),
            Field::Client => Value::Ip(self.client.ip().to_canonical()),
            Field::ClientPort => Number(self.client.port().into()),
            Field::Method => Text(self.method.as_str()),
            Field::Authority => match (&self.host, self.uri.authority()) {
                (Some(h), _) => Bytes(h.as_bytes()),
                (None, Some(a)) => Text(a.as_str()),
                (None, None) => Absent,
            },
            Field::Path => Text(self.uri.path()),
            Field::Query => self.uri.query().map_or(Absent, Text),
            Field::Protocol => Text(protocol(self.version)),
            Field::Status => Number(self.status.into()),
            Field::Route => text(&self.route),
            Field::UpstreamCluster => upstream
                .cluster
                .as_ref()
                .map_or(Absent, |c| Text(&c.spec.name)),
            Field::UpstreamEndpoint => upstream
                .endpoint
                .as_ref()
                .map_or(Absent, |e| Text(e.authority().as_str())),
            Field::Attempts => Number(self.tally.attempts.load(Ordering::Relaxed).into()),
            Field::BytesReceived => Number(self.tally.received()),
            Field::BytesSent => Number(self.bytes_sent),
            Field::UpstreamMs => upstream.answered.map_or(Absent, |at| {
                Millis(at.saturating_duration_since(self.started))
            }),
            Field::DurationMs => self.ended.map_or(Absent, |at| {
                Millis(at.saturating_duration_since(self.started))
            }),
            Field::Cache => self.cache.map_or(Absent, |c| Text(c.label())),
            Field::RateLimit => self.rate_limit.map_or(Absent, |r| Text(r.as_str())),
            Field::RequestId => Bytes(self.request_id.as_bytes()),
            Field::TraceId => self.trace_id.as_ref().map_or(Absent, |t| Text(t.as_str())),
            Field::TlsVersion => self.tls.as_ref().map_or(Absent, |t| Text(t.version)),
            Field::Sni => self
                .tls
                .as_ref()
                .and_then(|t| t.sni.as_deref())
                .map_or(Absent, Text),
            Field::KeyId => text(&self.key_id),
            Field::UserAgent => header(&self.user_agent),
            Field::Referer => header(&self.referer),
            Field::ForwardedFor => header(&self.forwarded_for),
        }
    }
}

/// A field's value, before it is written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// Not known for this request (no route, no upstream answer, no TLS…).
    Absent,
    Text(&'a str),
    /// A header value as the client sent it: not necessarily UTF-8.
    Bytes(&'a [u8]),
    Number(u64),
    Millis(Duration),
    Time(SystemTime),
    Ip(std::net::IpAddr),
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

/// What the route's rate limit decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimited {
    Allowed,
    /// Refused with 429.
    Limited,
    /// Let through after a wait (Shape mode).
    Shaped,
}

impl RateLimited {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Limited => "limited",
            Self::Shaped => "shaped",
        }
    }
}

/// The forward stage's attempts for one request, and the bytes of its body the gateway
/// read. Shared by reference with the attempts (which may run side by side, hedged), so
/// behind atomics and a lock that is only ever taken by this request.
#[derive(Default)]
pub struct Tally {
    attempts: AtomicU32,
    /// Body bytes of a body read whole.
    received: AtomicU64,
    /// Body bytes of a streamed body, counted as it goes upstream (possibly from another
    /// task, hence the shared counter).
    streamed: OnceLock<Counter>,
    upstream: Mutex<Upstream>,
}

/// The pool and endpoint of the request's last attempt, and when an upstream answered.
#[derive(Default)]
pub struct Upstream {
    pub cluster: Option<Arc<ClusterRuntime>>,
    pub endpoint: Option<Arc<EndpointHandle>>,
    pub answered: Option<Instant>,
}

impl Tally {
    fn upstream(&self) -> std::sync::MutexGuard<'_, Upstream> {
        self.upstream.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pool the request was given to, before any attempt (so a request that found no
    /// endpoint still names it).
    pub fn pool(&self, cluster: &Arc<ClusterRuntime>) {
        let mut u = self.upstream();
        if u.cluster.is_none() {
            u.cluster = Some(cluster.clone());
        }
    }

    /// An attempt was sent to `endpoint` of `cluster` (retries and hedges included).
    pub fn attempt(&self, cluster: &Arc<ClusterRuntime>, endpoint: &Arc<EndpointHandle>) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let mut u = self.upstream();
        u.cluster = Some(cluster.clone());
        u.endpoint = Some(endpoint.clone());
    }

    /// `endpoint` answered (its response head came) `at`: with hedges, the one that
    /// answered is the one logged, whichever was sent last.
    pub fn answered(
        &self,
        cluster: &Arc<ClusterRuntime>,
        endpoint: &Arc<EndpointHandle>,
        at: Instant,
    ) {
        let mut u = self.upstream();
        u.cluster = Some(cluster.clone());
        u.endpoint = Some(endpoint.clone());
        u.answered = Some(at);
    }

    /// Request body bytes read from the client so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed) + self.streamed.get().map_or(0, Counter::get)
    }

    /// A body of `n` bytes was read whole.
    pub fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    /// The counter a streamed body's bytes go to.
    pub fn streamed(&self) -> Counter {
        self.streamed.get_or_init(Counter::default).clone()
    }

    /// Takes in what another tally counted for this request (the cache's fetches run with
    /// their own, as they may outlive the request).
    pub fn absorb(&self, other: &Tally) {
        self.attempts
            .fetch_add(other.attempts.load(Ordering::Relaxed), Ordering::Relaxed);
        let theirs = std::mem::take(&mut *other.upstream());
        let mut u = self.upstream();
        if theirs.cluster.is_some() {
            u.cluster = theirs.cluster;
        }
        if theirs.endpoint.is_some() {
            u.endpoint = theirs.endpoint;
        }
        if theirs.answered.is_some() {
            u.answered = theirs.answered;
        }
    }

    /// The last attempt, taken out (the record is done: nothing writes to it any more).
    pub fn take_upstream(&mut self) -> Upstream {
        std::mem::take(
            self.upstream
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

/// A W3C trace id: 32 lowercase hex digits, not all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceId([u8; 32]);

impl TraceId {
    /// 32 lowercase hex digits, not all zero (the tracer's ids are).
    pub fn parse(s: &str) -> Option<TraceId> {
        let b = s.as_bytes();
        let hex = b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        if b.len() != 32 || !hex || b.iter().all(|&c| c == b'0') {
            return None;
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(b);
        Some(TraceId(id))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// The request's trace id without tracing: the W3C `traceparent` header's (Trace Context,
/// level 1), when there is exactly one and it is valid; else none. With tracing on, the
/// proxy puts the id of the trace it continued or started in the record instead.
pub fn trace_id(headers: &HeaderMap) -> Option<TraceId> {
    let mut all = headers.get_all("traceparent").iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    parse_traceparent(v.as_bytes())
}

/// `version-traceid-parentid-flags`, each lowercase hex: `00` is exactly 55 bytes; a later
/// version may add fields after a dash; `ff` is invalid, as are all-zero ids.
fn parse_traceparent(v: &[u8]) -> Option<TraceId> {
    let hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (version, trace, parent, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    if !(hex(version) && hex(trace) && hex(parent) && hex(flags)) || version == b"ff" {
        return None;
    }
    if (version == b"00" && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if trace.iter().all(|&c| c == b'0') || parent.iter().all(|&c| c == b'0') {
        return None;
    }
    std::str::from_utf8(trace).ok().and_then(TraceId::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_gives_the_trace_id_only_when_valid() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(ok.as_bytes()).unwrap().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // A later version may carry more after a dash.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra")
                .is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn two_traceparent_headers_give_none() {
        let mut h = HeaderMap::new();
        let v = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        h.append("traceparent", v.clone());
        assert!(trace_id(&h).is_some());
        h.append("traceparent", v);
        assert_eq!(trace_id(&h), None);
    }
}
