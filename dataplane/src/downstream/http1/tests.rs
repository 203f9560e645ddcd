use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    task::JoinHandle,
};

use super::*;
use crate::{
    downstream::Drain,
    proxy::problem::{empty, full},
};

fn settings() -> Settings {
    Settings {
        max_head_bytes: 4096,
        max_headers: 16,
        header_read_timeout: Duration::from_secs(5),
        max_requests: 0,
    }
}

/// What the handler saw of each request: method, target, headers.
type Seen = Arc<Mutex<Vec<(Method, String, HeaderMap)>>>;

struct Server {
    client: DuplexStream,
    seen: Seen,
    ended: JoinHandle<Option<(Bytes, u32)>>,
    metrics: Arc<Metrics>,
    _drain: Drain,
}

/// Serves the codec on one end of an in-memory pipe with `answer`, which makes the response
/// for each request; `ended` says whether it handed off (with the bytes read and the count
/// served) or closed.
fn server<A>(settings: Settings, answer: A) -> Server
where
    A: Fn(&Request<DownstreamBody>) -> Response<ProxyBody> + Send + Sync + 'static,
{
    server_with_drain(settings, answer, Drain::default())
}

fn server_with_drain<A>(settings: Settings, answer: A, drain: Drain) -> Server
where
    A: Fn(&Request<DownstreamBody>) -> Response<ProxyBody> + Send + Sync + 'static,
{
    let (client, conn) = tokio::io::duplex(1 << 20);
    let seen: Seen = Arc::default();
    let metrics = Arc::new(Metrics::new());
    let mut signal = drain.signal();
    let (s, m) = (seen.clone(), metrics.clone());
    let ended = tokio::spawn(async move {
        let answer = Arc::new(answer);
        let handle = |req: Box<Request<DownstreamBody>>| {
            let (s, answer) = (s.clone(), answer.clone());
            async move {
                let resp = answer(&req);
                s.lock().unwrap().push((
                    req.method().clone(),
                    req.uri().to_string(),
                    req.headers().clone(),
                ));
                resp
            }
        };
        match serve(conn, handle, &m, &settings, &mut signal).await {
            Ended::Closed => None,
            Ended::Handoff { read, served, .. } => Some((read, served)),
            Ended::Idle { .. } => unreachable!("serve waits out idle time itself"),
        }
    });
    Server {
        client,
        seen,
        ended,
        metrics,
        _drain: drain,
    }
}

/// Serves the codec with `handle` (an answer made asynchronously) on one end of a pipe,
/// watching `drain`: the client's end, and how the codec's part ended.
fn spawn_serve<H, F>(handle: H, drain: &Drain) -> (DuplexStream, JoinHandle<Ended<DuplexStream>>)
where
    H: Fn(Request<DownstreamBody>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let (client, conn) = tokio::io::duplex(1 << 16);
    let mut signal = drain.signal();
    let task = tokio::spawn(async move {
        let metrics = Metrics::new();
        let handle = move |req: Box<Request<DownstreamBody>>| handle(*req);
        serve(conn, handle, &metrics, &settings(), &mut signal).await
    });
    (client, task)
}

/// Sends the simplest request the codec serves.
async fn send_get(c: &mut DuplexStream) {
    c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
}

fn text(body: &'static str) -> Response<ProxyBody> {
    Response::new(full(body))
}

/// Reads until `done` holds for what arrived, within 5 s.
async fn read_until(c: &mut DuplexStream, done: impl Fn(&str) -> bool) -> String {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !done(&String::from_utf8_lossy(&out)) {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("no answer within 5 s");
    String::from_utf8(out).unwrap()
}

/// Reads to the end of the connection, within 5 s.
async fn read_to_close(c: &mut DuplexStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
        .await
        .expect("still open after 5 s")
        .unwrap();
    String::from_utf8(out).unwrap()
}

fn responses(s: &str) -> usize {
    s.matches("HTTP/1.1 ").count()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let mut s = server(settings(), |req| {
        let mut r = text(if req.uri().path() == "/a" {
            "first"
        } else {
            "second!"
        });
        r.headers_mut()
            .insert("x-path", HeaderValue::from_str(req.uri().path()).unwrap());
        r
    });
    s.client
        .write_all(b"GET /a HTTP/1.1\r\nhost: x\r\nx-one: 1\r\n\r\nGET /b?q=1 HTTP/1.1\r\nHost: y\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut s.client, |o| o.ends_with("second!")).await;
    let (a, b) = out.split_once("first").unwrap();
    assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(
        a.contains("x-path: /a\r\ncontent-length: 5\r\ndate: "),
        "{out}"
    );
    assert!(b.starts_with("HTTP/1.1 200 OK\r\n") && b.contains("content-length: 7\r\n"));
    assert!(!out.contains("connection: close"), "{out}");
    let seen = s.seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!((seen[0].0.clone(), seen[0].1.as_str()), (Method::GET, "/a"));
    assert_eq!(seen[0].2["x-one"], "1");
    assert_eq!(seen[1].1, "/b?q=1");
    assert_eq!(seen[1].2["host"], "y");
}

#[tokio::test]
async fn a_head_split_across_reads_is_put_together() {
    let mut s = server(settings(), |_| text("ok"));
    for piece in [&b"GE"[..], b"T / HTTP/1.1\r\nho", b"st: x\r\n", b"\r\n"] {
        s.client.write_all(piece).await.unwrap();
        tokio::task::yield_now().await;
    }
    let out = read_until(&mut s.client, |o| o.ends_with("ok")).await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert_eq!(s.seen.lock().unwrap()[0].2["host"], "x");
}

#[tokio::test]
async fn head_and_bodiless_statuses_send_no_body() {
    let mut s = server(settings(), |req| {
        if req.uri().path() == "/204" {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        } else {
            text("hello")
        }
    });
    s.client
        .write_all(b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\nGET /204 HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut s.client, |o| o.ends_with("hello")).await;
    assert_eq!(responses(&out), 3, "{out}");
    // The HEAD answer keeps the length of what a GET would get, and no body follows it.
    let (head, rest) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("content-length: 5"), "{head}");
    assert!(rest.starts_with("HTTP/1.1 204 No Content\r\n"), "{rest}");
    let (no_content, last) = rest.split_once("\r\n\r\n").unwrap();
    assert!(!no_content.contains("content-length"), "{no_content}");
    assert!(last.starts_with("HTTP/1.1 200 OK\r\n"), "{last}");
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked_with_trailers_only_when_asked() {
    fn streamed() -> Response<ProxyBody> {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("abc"));
        // Not announced, and not allowed as a trailer anyway: never sent.
        trailers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        trailers.insert("x-unannounced", HeaderValue::from_static("1"));
        let frames: Vec<Result<http_body::Frame<Bytes>, crate::proxy::body::BoxError>> = vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"hello "))),
            Ok(http_body::Frame::data(Bytes::new())),
            Ok(http_body::Frame::data(Bytes::from_static(b"world"))),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        let mut r = Response::new(StreamBody::new(futures::stream::iter(frames)).boxed());
        r.headers_mut().insert(
            header::TRAILER,
            HeaderValue::from_static("x-sum, content-length"),
        );
        r
    }
    let mut s = server(settings(), |_| streamed());
    s.client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nte: trailers\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut s.client, |o| {
        o.ends_with("\r\n\r\n") && o.contains("0\r\n")
    })
    .await;
    assert!(out.contains("transfer-encoding: chunked\r\n"), "{out}");
    assert!(
        out.ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\nx-sum: abc\r\n\r\n"),
        "{out:?}"
    );

    let mut s = server(settings(), |_| streamed());
    send_get(&mut s.client).await;
    let out = read_until(&mut s.client, |o| o.ends_with("0\r\n\r\n")).await;
    assert!(
        out.ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"),
        "{out:?}"
    );
}

/// A body that streams (no exact size) `data`, then ends.
fn stream_of(data: &'static [u8]) -> ProxyBody {
    let frames: Vec<Result<http_body::Frame<Bytes>, crate::proxy::body::BoxError>> =
        vec![Ok(http_body::Frame::data(Bytes::from_static(data)))];
    StreamBody::new(futures::stream::iter(frames)).boxed()
}

#[tokio::test]
async fn a_body_shorter_than_its_length_closes_the_connection() {
    let mut s = server(settings(), |_| {
        let mut r = Response::new(stream_of(b"abc"));
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        r
    });
    s.client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\nGET /next HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut s.client).await;
    assert!(out.contains("content-length: 10\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nabc"), "{out}");
    assert!(s.ended.await.unwrap().is_none());
    assert_eq!(s.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn one_content_length_is_sent_and_a_length_that_contradicts_the_body_gets_502() {
    let mut s = server(settings(), |req| {
        let mut r = match req.uri().path() {
            "/list" => Response::new(stream_of(b"hello")),
            _ => text("hello"),
        };
        let declared = match req.uri().path() {
            "/list" => "5, 5",
            "/plus" => "+5",
            _ => "7",
        };
        r.headers_mut()
            .append(header::CONTENT_LENGTH, HeaderValue::from_static(declared));
        r.headers_mut().append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        r
    });
    s.client
        .write_all(b"GET /list HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut s.client, |o| o.ends_with("hello")).await;
    assert_eq!(out.matches("content-length").count(), 1, "{out}");
    assert!(out.contains("content-length: 5\r\n"), "{out}");
    assert!(!out.contains("transfer-encoding"), "{out}");

    for path in ["/plus", "/wrong"] {
        let mut s = server(settings(), |req| {
            let mut r = text("hello");
            let declared = if req.uri().path() == "/plus" {
                "+5"
            } else {
                "7"
            };
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static(declared));
            r
        });
        s.client
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let out = read_to_close(&mut s.client).await;
        assert!(
            out.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
            "{path}: {out}"
        );
        assert!(out.contains("content-length"), "{out}");
        assert!(!out.contains("hello"), "{out}");
    }
}

#[tokio::test]
async fn an_informational_final_answer_becomes_a_502() {
    let mut s = server(settings(), |_| {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::from_u16(103).unwrap();
        r
    });
    send_get(&mut s.client).await;
    let out = read_until(&mut s.client, |o| o.ends_with('}')).await;
    assert!(out.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{out}");
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_request() {
    struct OnDrop(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = dropped.clone();
    let drain = Drain::default();
    let (mut client, task) = spawn_serve(
        move |_req| {
            let guard = OnDrop(d.clone());
            async move {
                // Never answers on its own.
                std::future::pending::<()>().await;
                drop(guard);
                text("never")
            }
        },
        &drain,
    );
    send_get(&mut client).await;
    tokio::task::yield_now().await;
    drop(client);
    let ended = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the request was not cancelled")
        .unwrap();
    assert!(matches!(ended, Ended::Closed));
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test]
async fn connection_close_from_the_client_or_the_request_limit_ends_the_connection() {
    let mut s = server(settings(), |_| text("ok"));
    s.client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\nGET /never HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut s.client).await;
    assert_eq!(responses(&out), 1, "{out}");
    assert!(out.contains("connection: close\r\n"), "{out}");
    assert_eq!(s.seen.lock().unwrap().len(), 1);

    let mut s = server(
        Settings {
            max_requests: 2,
            ..settings()
        },
        |_| text("ok"),
    );
    s.client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut s.client).await;
    assert_eq!(responses(&out), 2, "{out}");
    assert_eq!(out.matches("connection: close").count(), 1, "{out}");
}

#[tokio::test]
async fn requests_it_does_not_serve_are_handed_to_hyper_with_their_bytes() {
    let too_large = format!(
        "POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\nabc",
        MAX_BODY_BUFFERED + 1
    )
    .into_bytes();
    for (req, why) in [
        (too_large.as_slice(), "a body larger than the buffer"),
        (
            b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc",
            "two lengths",
        ),
        (
            b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: +3\r\n\r\nabc",
            "an invalid length",
        ),
        (
            b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc",
            "a body still on its way after the wait (it streams, under the route's timeout)",
        ),
        (
            b"POST /p HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "chunked",
        ),
        (b"GET / HTTP/1.0\r\n\r\n", "HTTP/1.0"),
        (
            b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            "an upgrade",
        ),
        (
            b"PUT / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 9\r\n\r\n",
            "expect",
        ),
        (b"CONNECT x:443 HTTP/1.1\r\nhost: x:443\r\n\r\n", "CONNECT"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "the HTTP/2 preface"),
    ] {
        let mut s = server(settings(), |_| text("ok"));
        // One served request first: the hand-over comes after it, with the count.
        s.client
            .write_all(b"GET /first HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut s.client, |o| o.ends_with("ok")).await;
        let is_preface = req.starts_with(b"PRI");
        if is_preface {
            // The preface only counts at the start of a connection.
            s = server(settings(), |_| text("ok"));
        }
        s.client.write_all(req).await.unwrap();
        let (read, served) = tokio::time::timeout(Duration::from_secs(5), s.ended)
            .await
            .expect("no hand-over within 5 s")
            .unwrap()
            .unwrap_or_else(|| panic!("{why}: closed instead of handed over"));
        assert_eq!(&read[..], req, "{why}");
        assert_eq!(served, u32::from(!is_preface), "{why}");
    }
}

#[tokio::test]
async fn a_preface_split_across_reads_is_still_recognised() {
    let mut s = server(settings(), |_| text("ok"));
    s.client.write_all(b"PR").await.unwrap();
    tokio::task::yield_now().await;
    s.client
        .write_all(b"I * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let (read, _) = s.ended.await.unwrap().expect("handed over");
    assert_eq!(&read[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
}

#[tokio::test]
async fn oversized_heads_too_many_headers_and_garbage_are_refused_and_counted() {
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "v".repeat(5000)
    );
    let many: String = (0..20).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
    let partial_big = format!("GET / HTTP/1.1\r\nx-big: {}", "v".repeat(5000));
    for (req, status, reason) in [
        (big.as_bytes(), "431", "headers_too_large"),
        (partial_big.as_bytes(), "431", "headers_too_large"),
        (many.as_bytes(), "431", "too_many_headers"),
        (
            &b"GET / HTTP/1.1\r\nbad header\r\n\r\n"[..],
            "400",
            "bad_request",
        ),
        (b"\x16\x03\x01\x02\x00\x01\x00", "400", "bad_request"),
        (b"GET /\x7f HTTP/1.1\r\n\r\n", "400", "bad_request"),
    ] {
        let mut s = server(settings(), |_| text("ok"));
        s.client.write_all(req).await.unwrap();
        let out = read_to_close(&mut s.client).await;
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status} ")),
            "{reason}: {out}"
        );
        assert!(out.contains("application/problem+json"), "{out}");
        assert!(out.contains("connection: close"), "{out}");
        assert!(s.seen.lock().unwrap().is_empty());
        let metrics = s.metrics.encode();
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason} not counted"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_head_is_cut_off_after_the_header_read_timeout() {
    let mut s = server(
        Settings {
            header_read_timeout: Duration::from_millis(500),
            ..settings()
        },
        |_| text("ok"),
    );
    let started = Instant::now();
    s.client.write_all(b"GET / HTTP/1.1\r\nhost").await.unwrap();
    let out = read_to_close(&mut s.client).await;
    // The client's slowness, said as such.
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(s.seen.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_closes_after_the_header_read_timeout() {
    let mut s = server(
        Settings {
            header_read_timeout: Duration::from_secs(1),
            ..settings()
        },
        |_| text("ok"),
    );
    send_get(&mut s.client).await;
    read_until(&mut s.client, |o| o.ends_with("ok")).await;
    let started = Instant::now();
    assert_eq!(read_to_close(&mut s.client).await, "");
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn draining_closes_idle_connections_and_says_close_on_the_last_answer() {
    let drain = Drain::default();
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let (mut client, task) = spawn_serve(
        move |_req| {
            let g = g.clone();
            async move {
                g.notified().await;
                text("done")
            }
        },
        &drain,
    );
    send_get(&mut client).await;
    // The request is in flight when the drain starts.
    tokio::task::yield_now().await;
    let drained = tokio::spawn(drain.drain());
    tokio::task::yield_now().await;
    gate.notify_one();
    let out = read_to_close(&mut client).await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("connection: close\r\n"), "{out}");
    assert!(matches!(task.await.unwrap(), Ended::Closed));
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("the drain did not see the connection end")
        .unwrap();

    // An idle connection closes as soon as the drain starts.
    let drain = Drain::default();
    let (mut client, idle) = spawn_serve(|_| async { text("ok") }, &drain);
    // Blank lines between requests are allowed: a connection holding only those is idle.
    client.write_all(b"\r\n").await.unwrap();
    tokio::task::yield_now().await;
    tokio::time::timeout(Duration::from_secs(5), drain.drain())
        .await
        .expect("the idle connection was not closed by the drain");
    assert!(matches!(idle.await.unwrap(), Ended::Closed));
    assert_eq!(read_to_close(&mut client).await, "");
}

/// The body the codec read with a request's head, as the handler got it.
fn body_of(req: &Request<DownstreamBody>) -> String {
    match req.body() {
        DownstreamBody::Full(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        DownstreamBody::Empty => String::new(),
        _ => "<not read by the codec>".into(),
    }
}

#[tokio::test]
async fn a_body_of_known_length_that_comes_with_its_head_is_read_here() {
    let mut s = server(settings(), |req| {
        Response::new(full(format!("got {}", body_of(req))))
    });
    // The body, and a pipelined request after it.
    s.client
        .write_all(b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\nhello worldGET /after HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The second answer ("got " and no body) ends the output.
    let out = read_until(&mut s.client, |o| o.ends_with("got ")).await;
    assert!(out.contains("got hello world"), "{out}");
    {
        let seen = s.seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!((&seen[0].0, seen[0].1.as_str()), (&Method::POST, "/p"));
        // The length goes to the proxy with the request, which frames the body it sends.
        assert_eq!(seen[0].2[header::CONTENT_LENGTH], "11");
        assert_eq!(seen[1].1, "/after");
    }
    // The largest body the buffer takes is still the codec's.
    let big = MAX_BODY_BUFFERED;
    let mut req =
        format!("PUT /big HTTP/1.1\r\nhost: x\r\ncontent-length: {big}\r\n\r\n").into_bytes();
    req.resize(req.len() + big, b'b');
    let mut s = server(settings(), |req| {
        Response::new(full(format!("{} bytes", body_of(req).len())))
    });
    s.client.write_all(&req).await.unwrap();
    let out = read_until(&mut s.client, |o| o.ends_with(" bytes")).await;
    assert!(out.ends_with(&format!("{big} bytes")), "{out}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_gives_back_its_buffers_and_still_serves_its_next_request() {
    let keep_alive = Settings {
        header_read_timeout: Duration::from_secs(2),
        ..settings()
    };
    let mut s = server(keep_alive.clone(), |req| {
        text(if req.uri() == "/1" { "one" } else { "two" })
    });
    s.client
        .write_all(b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut s.client, |o| o.ends_with("one")).await;
    // Past the release, within the keep-alive time: the next request, sent a byte at a time,
    // is served as any other.
    tokio::time::sleep(IDLE_RELEASE * 2).await;
    for b in b"GET /2 HTTP/1.1\r\nhost: x\r\n\r\n" {
        s.client.write_all(&[*b]).await.unwrap();
        tokio::task::yield_now().await;
    }
    let out = read_until(&mut s.client, |o| o.ends_with("two")).await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    // The keep-alive time still counts from the end of the last answer, release or not.
    let start = Instant::now();
    let out = read_to_close(&mut s.client).await;
    assert!(out.is_empty(), "{out}");
    let waited = start.elapsed();
    assert!(
        waited >= keep_alive.header_read_timeout && waited < keep_alive.header_read_timeout * 2,
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn an_idle_connection_closes_when_the_listener_drains() {
    let drain = Drain::default();
    let (mut client, task) = spawn_serve(|_req| async { text("ok") }, &drain);
    send_get(&mut client).await;
    read_until(&mut client, |o| o.ends_with("ok")).await;
    // Long enough for the release: the connection waits for its next byte with no buffer.
    tokio::time::sleep(IDLE_RELEASE * 2).await;
    let drained = tokio::spawn(drain.drain());
    let ended = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the idle connection did not close on the drain")
        .unwrap();
    assert!(matches!(ended, Ended::Closed));
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_body_that_arrives_in_pieces_within_the_wait_is_read_here() {
    let mut s = server(settings(), |req| {
        Response::new(full(format!("got {}", body_of(req))))
    });
    s.client
        .write_all(b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(BODY_WAIT / 2).await;
    s.client.write_all(b" world").await.unwrap();
    let out = read_until(&mut s.client, |o| o.ends_with("got hello world")).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(s.seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_still_arriving_after_the_wait_streams_with_what_was_read() {
    let s = server(settings(), |_| text("ok"));
    let mut client = s.client;
    client
        .write_all(b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\nhel")
        .await
        .unwrap();
    tokio::time::sleep(BODY_WAIT / 2).await;
    client.write_all(b"lo").await.unwrap();
    let (read, served) = tokio::time::timeout(BODY_WAIT * 2, s.ended)
        .await
        .expect("no hand-over after the body wait")
        .unwrap()
        .expect("closed instead of handed over");
    assert_eq!(
        &read[..],
        b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\nhello"
    );
    assert_eq!(served, 0);
    assert!(s.seen.lock().unwrap().is_empty());
}

#[test]
fn the_body_budget_refuses_what_would_pass_its_limit_and_gets_permits_back() {
    let budget = Budget::new(100);
    let a = budget.take(60).expect("60 of 100");
    assert!(budget.take(41).is_none(), "101 of 100");
    let b = budget.take(40).expect("100 of 100");
    assert!(budget.take(1).is_none());
    drop(a);
    assert!(budget.take(60).is_some());
    drop(b);
    assert!(budget.take(usize::MAX).is_none(), "an overflow is refused");
    assert!(budget.take(100).is_some());
}

/// The codec's side of a pipe, counting the reads that return bytes.
struct CountingReads {
    io: DuplexStream,
    reads: Arc<AtomicUsize>,
}

impl AsyncRead for CountingReads {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for CountingReads {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Each request of a keep-alive connection that fits a read chunk (a 4 KiB POST) is read
/// with one read, not split where the one before it ended in the buffer.
#[tokio::test]
async fn each_request_that_fits_a_chunk_is_read_in_one_read() {
    let (mut client, conn) = tokio::io::duplex(1 << 16);
    let reads = Arc::new(AtomicUsize::new(0));
    let io = CountingReads {
        io: conn,
        reads: reads.clone(),
    };
    let drain = Drain::default();
    let mut signal = drain.signal();
    let task = tokio::spawn(async move {
        let metrics = Metrics::new();
        let handle = |_req: Box<Request<DownstreamBody>>| async { text("ok") };
        serve(io, handle, &metrics, &settings(), &mut signal).await
    });
    let body = "b".repeat(4096);
    let request = format!("POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 4096\r\n\r\n{body}");
    // The first request also has the idle wait's one-byte read.
    let mut before = 1;
    for n in 1..=3 {
        client.write_all(request.as_bytes()).await.unwrap();
        let out = read_until(&mut client, |o| o.ends_with("ok")).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        let now = reads.load(Ordering::Relaxed);
        assert_eq!(now - before, 1, "reads for request {n}");
        before = now;
    }
    drop(client);
    let _ = task.await;
}
