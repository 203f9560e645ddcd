use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use http_body_util::BodyExt;
use tokio::net::TcpListener;

use super::*;

/// What the scripted upstream answers to one request: pieces written one after another
/// (with a short pause between them, so the client sees them in separate reads), then
/// optionally the connection closes.
struct Reply {
    pieces: Vec<&'static [u8]>,
    close: bool,
}

fn reply(bytes: &'static [u8]) -> Reply {
    Reply {
        pieces: vec![bytes],
        close: false,
    }
}

struct Upstream {
    authority: Authority,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

/// A loopback upstream that answers requests with `replies`, in order, across all the
/// connections it accepts.
async fn upstream(replies: Vec<Reply>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let replies = Arc::new(Mutex::new(std::collections::VecDeque::from(replies)));
    let (acc, reqs) = (accepted.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let (replies, reqs) = (replies.clone(), reqs.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(req) = read_request(&mut s, &mut buf).await else {
                        return;
                    };
                    reqs.lock().unwrap().push(req);
                    let Some(r) = replies.lock().unwrap().pop_front() else {
                        return;
                    };
                    for (i, p) in r.pieces.iter().enumerate() {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        if s.write_all(p).await.is_err() {
                            return;
                        }
                    }
                    if r.close {
                        return;
                    }
                }
            });
        }
    });
    Upstream {
        authority: addr.to_string().parse().unwrap(),
        accepted,
        requests,
    }
}

/// One request (head and a Content-Length body) from `s`, as text.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < end + 4 + len {
                let mut more = [0u8; 4096];
                let n = s.read(&mut more).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&more[..n]);
            }
            let req = String::from_utf8_lossy(&buf[..end + 4 + len]).to_string();
            buf.drain(..end + 4 + len);
            return Some(req);
        }
        let mut more = [0u8; 4096];
        let n = s.read(&mut more).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&more[..n]);
    }
}

fn get(path: &str) -> (Parts, PathAndQuery) {
    let (mut parts, ()) = http::Request::get(path)
        .header("host", "api.example")
        .body(())
        .unwrap()
        .into_parts();
    parts.version = Version::HTTP_11;
    (parts, path.parse().unwrap())
}

fn client() -> Http1Client {
    Http1Client::new(Duration::from_secs(2))
}

/// A send that may be repeated on a new connection, with `within` to answer.
fn terms(within: Duration) -> Terms {
    let now = Instant::now();
    Terms {
        retry_stale: true,
        now,
        until: now + within,
    }
}

async fn send(
    u: &Upstream,
    parts: &Parts,
    path: &PathAndQuery,
    body: &[u8],
) -> Result<(StatusCode, HeaderMap, Bytes, Option<HeaderMap>), Error> {
    let resp = client()
        .send(
            &u.authority,
            parts,
            path,
            &Bytes::copy_from_slice(body),
            &(),
            terms(Duration::from_secs(30)),
        )
        .await?;
    let (p, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((p.status, p.headers, collected.to_bytes(), trailers))
}

#[tokio::test]
async fn keep_alive_connection_is_reused_and_headers_are_shared() {
    let u = upstream(vec![
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-custom: a b\r\n\r\nhello"),
        reply(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nbye"),
    ])
    .await;
    let (parts, path) = get("/one?q=1");
    let (status, headers, body, _) = send(&u, &parts, &path, b"").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"hello");
    assert_eq!(headers["x-custom"], "a b");
    assert_eq!(
        idle::count(&u.authority),
        1,
        "the connection went back to the pool"
    );
    let (status, _, body, _) = send(&u, &parts, &path, b"").await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"bye"[..]));
    assert_eq!(
        u.accepted.load(Ordering::SeqCst),
        1,
        "one connection for both"
    );
    let reqs = u.requests.lock().unwrap().clone();
    assert!(
        reqs[0].starts_with("GET /one?q=1 HTTP/1.1\r\n"),
        "{}",
        reqs[0]
    );
    assert!(reqs[0].contains("host: api.example\r\n"), "{}", reqs[0]);
    assert!(
        !reqs[0].contains("content-length"),
        "a GET without a body has no length: {}",
        reqs[0]
    );
}

#[tokio::test]
async fn heads_are_read_with_room_for_the_last_announced_answer() {
    const BIG: &[u8] = &[b'x'; 64 * 1024];
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 65536\r\n\r\n";
    let big = || Reply {
        pieces: vec![head, BIG],
        close: false,
    };
    let u = upstream(vec![
        big(),
        big(),
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"),
        reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"),
    ])
    .await;
    let (parts, path) = get("/");
    assert_eq!(idle::last(&u.authority, |c| c.head_read), None);
    for _ in 0..2 {
        let (status, _, body, _) = send(&u, &parts, &path, b"").await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, BIG));
        // A head and the 64 KiB body the last head announced fit in one read.
        assert_eq!(
            idle::last(&u.authority, |c| c.head_read),
            Some(MAX_HEAD_READ)
        );
    }
    // The room stays while the connection is in use, and goes once it waited a sweep.
    let room = idle::last(&u.authority, |c| c.buf.capacity()).unwrap();
    assert!(room > 0, "{room}");
    idle::sweep_now();
    assert_eq!(
        idle::last(&u.authority, |c| c.buf.capacity()),
        Some(room),
        "in use: kept"
    );
    tokio::time::pause();
    tokio::time::advance(SWEEP_EVERY).await;
    idle::sweep_now();
    assert_eq!(
        idle::last(&u.authority, |c| c.buf.capacity()),
        Some(0),
        "idle for a sweep: given back"
    );
    tokio::time::resume();
    let (_, _, body, _) = send(&u, &parts, &path, b"").await.unwrap();
    assert_eq!(&body[..], b"hello");
    assert_eq!(
        idle::last(&u.authority, |c| c.head_read),
        Some(MIN_READ + 5),
        "a small answer brings the room back down"
    );
    // A chunked answer announces no length: the room stays as it was.
    let (_, _, body, _) = send(&u, &parts, &path, b"").await.unwrap();
    assert_eq!(&body[..], b"hi");
    assert_eq!(
        idle::last(&u.authority, |c| c.head_read),
        Some(MIN_READ + 5)
    );
    assert_eq!(
        u.accepted.load(Ordering::SeqCst),
        1,
        "one connection for all"
    );
}

#[tokio::test]
async fn request_body_gets_its_length_and_no_coding() {
    let u = upstream(vec![reply(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")]).await;
    let (mut parts, path) = get("/upload");
    parts.method = Method::POST;
    parts.headers.remove(header::HOST);
    parts.headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    let (status, _, body, _) = send(&u, &parts, &path, b"0123456789").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    let req = u.requests.lock().unwrap()[0].clone();
    assert!(req.contains("content-length: 10\r\n"), "{req}");
    assert!(!req.contains("transfer-encoding"), "{req}");
    assert!(
        req.contains(&format!("host: {}\r\n", u.authority)),
        "Host from the endpoint when the client sent none: {req}"
    );
    assert!(req.ends_with("\r\n\r\n0123456789"), "{req}");
}

/// In three writes: 64 KiB with the head, 64 KiB, then the last 3 bytes.
#[tokio::test]
async fn a_body_larger_than_the_copy_limit_is_sent_whole_beside_its_head() {
    let u = upstream(vec![reply(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")]).await;
    let (mut parts, path) = get("/upload");
    parts.method = Method::PUT;
    let body: Vec<u8> = (0..MAX_BODY_WRITE * 2 + 3)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let (status, ..) = tokio::time::timeout(Duration::from_secs(5), send(&u, &parts, &path, &body))
        .await
        .expect("no answer within 5 s: the upstream did not get the whole body")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let req = u.requests.lock().unwrap()[0].clone();
    assert!(
        req.contains(&format!("content-length: {}\r\n", body.len())),
        "{}",
        &req[..200]
    );
    let sent = req.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(sent.as_bytes(), &body[..], "the body arrived changed");
}

#[tokio::test]
async fn chunked_body_with_trailers_across_reads() {
    let u = upstream(vec![Reply {
        pieces: vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n6;ext=1\r\n world\r",
            b"\n0\r\nx-checksum: 42\r\n",
            b"\r\n",
        ],
        close: false,
    }])
    .await;
    let (parts, path) = get("/chunked");
    let (_, headers, body, trailers) = send(&u, &parts, &path, b"").await.unwrap();
    assert_eq!(&body[..], b"hello world");
    assert_eq!(headers[header::TRANSFER_ENCODING], "chunked");
    assert_eq!(trailers.expect("trailers")["x-checksum"], "42");
    assert_eq!(
        idle::count(&u.authority),
        1,
        "reusable after the last chunk"
    );
}

#[tokio::test]
async fn informational_responses_are_skipped_and_head_split_over_reads() {
    let u = upstream(vec![Reply {
        pieces: vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 20",
            b"0 OK\r\ncontent-le",
            b"ngth: 2\r\n\r\nok",
        ],
        close: false,
    }])
    .await;
    let (parts, path) = get("/hints");
    let (status, headers, body, _) = send(&u, &parts, &path, b"").await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    assert!(
        !headers.contains_key("link"),
        "the 103's fields are not the response's"
    );
}

#[tokio::test]
async fn body_until_close_and_connection_close_are_not_reused() {
    let u = upstream(vec![
        Reply {
            pieces: vec![b"HTTP/1.1 200 OK\r\n\r\nstreamed ", b"to the end"],
            close: true,
        },
        Reply {
            pieces: vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\nx"],
            close: true,
        },
        reply(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\ny"),
    ])
    .await;
    let (parts, path) = get("/close");
    let (_, _, body, _) = send(&u, &parts, &path, b"").await.unwrap();
    assert_eq!(&body[..], b"streamed to the end");
    assert_eq!(idle::count(&u.authority), 0);
    let (_, _, body, _) = send(&u, &parts, &path, b"").await.unwrap();
    assert_eq!(&body[..], b"x");
    assert_eq!(
        idle::count(&u.authority),
        0,
        "connection: close is honoured"
    );
    let (_, _, body, _) = send(&u, &parts, &path, b"").await.unwrap();
    assert_eq!(&body[..], b"y");
    assert_eq!(
        idle::count(&u.authority),
        0,
        "HTTP/1.0 without keep-alive closes"
    );
    assert_eq!(u.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn head_204_and_304_have_no_body_whatever_their_length_says() {
    let u = upstream(vec![
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
        reply(b"HTTP/1.1 204 No Content\r\n\r\n"),
        reply(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 50\r\n\r\n"),
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlast"),
    ])
    .await;
    let (mut parts, path) = get("/empty");
    parts.method = Method::HEAD;
    let (status, headers, body, _) = send(&u, &parts, &path, b"").await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    assert_eq!(headers[header::CONTENT_LENGTH], "1000");
    parts.method = Method::GET;
    for want in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
        let (status, _, body, _) = send(&u, &parts, &path, b"").await.unwrap();
        assert_eq!((status, body.len()), (want, 0));
    }
    let (_, _, body, _) = send(&u, &parts, &path, b"").await.unwrap();
    assert_eq!(
        &body[..],
        b"last",
        "the framing stayed in step on one connection"
    );
    assert_eq!(u.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_replaced() {
    // The first connection is closed by the upstream right after its response.
    let u = upstream(vec![
        Reply {
            pieces: vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"],
            close: true,
        },
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb"),
    ])
    .await;
    let (parts, path) = get("/stale");
    let (_, _, body, _) = send(&u, &parts, &path, b"").await.unwrap();
    assert_eq!(&body[..], b"a");
    // Whether the close is seen at checkout or only when the request fails on the old
    // connection, the request is answered on a new one.
    let (_, _, body, _) = send(&u, &parts, &path, b"").await.unwrap();
    assert_eq!(&body[..], b"b");
    assert_eq!(u.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_give_their_buffers_back_long_before_they_are_closed() {
    let hi = || reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi");
    let u = upstream(vec![hi(), hi()]).await;
    let (parts, path) = get("/");
    send(&u, &parts, &path, b"").await.unwrap();
    let rooms = |c: &Conn| (c.buf.capacity(), c.wbuf.capacity());
    let timed = |c: &Conn| c.deadline.is_some();
    idle::sweep_now();
    let (read, write) = idle::last(&u.authority, rooms).unwrap();
    assert!(read > 0 && write > 0, "just used: kept ({read}, {write})");
    assert_eq!(
        idle::last(&u.authority, timed),
        Some(true),
        "the deadline's timer kept"
    );
    tokio::time::pause();
    tokio::time::advance(RELEASE_AFTER / 2).await;
    idle::sweep_due();
    assert_eq!(
        idle::last(&u.authority, rooms),
        Some((read, write)),
        "not yet"
    );
    tokio::time::advance(RELEASE_AFTER / 2).await;
    idle::sweep_due();
    assert_eq!(
        idle::last(&u.authority, rooms),
        Some((0, 0)),
        "idle for RELEASE_AFTER: given back, and the connection kept"
    );
    assert_eq!(
        idle::last(&u.authority, timed),
        Some(false),
        "the timer goes with the buffers"
    );
    tokio::time::resume();
    let (_, _, body, _) = send(&u, &parts, &path, b"").await.unwrap();
    assert_eq!(&body[..], b"hi");
    assert_eq!(u.accepted.load(Ordering::SeqCst), 1, "the same connection");
}

/// A loopback upstream that answers each request on its one connection after the delay
/// given for it (`None`: never; the connection is held open).
async fn slow_upstream(delays: Vec<Option<Duration>>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        acc.fetch_add(1, Ordering::SeqCst);
        let mut buf = Vec::new();
        for delay in delays {
            if read_request(&mut s, &mut buf).await.is_none() {
                return;
            }
            let Some(delay) = delay else {
                // Held, unanswered, until the client closes it.
                let _ = read_request(&mut s, &mut buf).await;
                return;
            };
            tokio::time::sleep(delay).await;
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if s.write_all(ok).await.is_err() {
                return;
            }
        }
    });
    Upstream {
        authority,
        accepted,
        requests: Arc::default(),
    }
}

/// Sends a GET to `u` that must be answered `within`; the body read whole.
async fn get_within(u: &Upstream, within: Duration) -> Result<Bytes, Error> {
    let (parts, path) = get("/");
    let (client, empty) = (client(), Bytes::new());
    let send = client.send(&u.authority, &parts, &path, &empty, &(), terms(within));
    // The test's own bound: a deadline that never fires fails here, not by hanging.
    let resp = tokio::time::timeout(Duration::from_secs(10), send)
        .await
        .expect("the send ended within 10 s")?;
    Ok(resp.into_body().collect().await?.to_bytes())
}

#[tokio::test]
async fn an_upstream_silent_past_the_deadline_ends_the_send_and_its_connection() {
    let u = slow_upstream(vec![None]).await;
    let started = Instant::now();
    let err = get_within(&u, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Deadline), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(
        idle::count(&u.authority),
        0,
        "a connection that timed out is not kept"
    );
}

#[tokio::test]
async fn the_kept_timer_follows_each_requests_deadline_later_or_sooner() {
    let (ms, fast) = (Duration::from_millis, Some(Duration::ZERO));
    let u = slow_upstream(vec![fast, Some(ms(400)), fast, fast, Some(ms(300)), None]).await;
    // A short deadline met; the next, longer one is not cut short at the first's instant
    // (the timer is moved on, not replaced).
    assert_eq!(&get_within(&u, ms(150)).await.unwrap()[..], b"ok");
    assert_eq!(&get_within(&u, ms(5_000)).await.unwrap()[..], b"ok");
    // A long deadline met.
    assert_eq!(&get_within(&u, ms(60_000)).await.unwrap()[..], b"ok");
    // A timer that fired while its connection was idle is armed again for the next request.
    assert_eq!(&get_within(&u, ms(100)).await.unwrap()[..], b"ok");
    tokio::time::sleep(ms(250)).await;
    assert_eq!(&get_within(&u, ms(5_000)).await.unwrap()[..], b"ok");
    // A shorter deadline after a long one still fires on time.
    let started = Instant::now();
    let err = get_within(&u, ms(150)).await.unwrap_err();
    assert!(matches!(err, Error::Deadline), "{err}");
    let waited = started.elapsed();
    assert!(waited >= ms(150) && waited < ms(5_000), "{waited:?}");
    assert_eq!(
        u.accepted.load(Ordering::SeqCst),
        1,
        "all on one connection"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let u = upstream(vec![reply(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na",
    )])
    .await;
    let (parts, path) = get("/idle");
    send(&u, &parts, &path, b"").await.unwrap();
    assert_eq!(idle::count(&u.authority), 1);
    idle::sweep_now();
    assert_eq!(idle::count(&u.authority), 1, "young and open: kept");
    tokio::time::pause();
    tokio::time::advance(IDLE_TIMEOUT + Duration::from_secs(1)).await;
    idle::sweep_now();
    assert_eq!(
        idle::count(&u.authority),
        0,
        "past the idle timeout: closed"
    );
}

#[tokio::test]
async fn invalid_responses_are_errors_not_panics() {
    let cases: [&'static [u8]; 6] = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 12x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXX",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ];
    for case in cases {
        let u = upstream(vec![Reply {
            pieces: vec![case],
            close: true,
        }])
        .await;
        let (parts, path) = get("/bad");
        let err = send(&u, &parts, &path, b"").await.unwrap_err();
        assert!(
            matches!(err, Error::Protocol(_)),
            "{:?}: {err}",
            String::from_utf8_lossy(case)
        );
        assert_eq!(idle::count(&u.authority), 0);
    }
}

#[tokio::test]
async fn truncated_body_is_an_error() {
    let u = upstream(vec![Reply {
        pieces: vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"],
        close: true,
    }])
    .await;
    let (parts, path) = get("/short");
    assert!(matches!(
        send(&u, &parts, &path, b"").await.unwrap_err(),
        Error::Closed
    ));
}

#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let authority: Authority = format!("127.0.0.1:{port}").parse().unwrap();
    let (parts, path) = get("/");
    let Err(err) = client()
        .send(
            &authority,
            &parts,
            &path,
            &Bytes::new(),
            &(),
            terms(Duration::from_secs(30)),
        )
        .await
    else {
        panic!("a closed port answered");
    };
    assert!(err.is_connect(), "{err}");
    assert!(err.to_string().contains(&authority.to_string()), "{err}");
}

#[tokio::test]
async fn names_are_resolved() {
    let u = upstream(vec![reply(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )])
    .await;
    let port = u.authority.port_u16().unwrap();
    let by_name = Upstream {
        authority: format!("localhost:{port}").parse().unwrap(),
        accepted: u.accepted.clone(),
        requests: u.requests.clone(),
    };
    let (parts, path) = get("/");
    match send(&by_name, &parts, &path, b"").await {
        Ok((_, _, body, _)) => assert_eq!(&body[..], b"ok"),
        // Where localhost resolves to ::1 first and nothing listens there, the v4 address
        // is tried next; only a machine without any localhost entry ends here.
        Err(e) => panic!("localhost:{port} was not reached: {e}"),
    }
}

#[test]
fn head_parsing_waits_for_a_complete_head() {
    let full = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-a: 1\r\n\r\nabc";
    for cut in 0..full.len() - 3 {
        let mut buf = BytesMut::from(&full[..cut]);
        assert!(
            parse_head(&mut buf, false).unwrap().is_none(),
            "complete at {cut}?"
        );
    }
    let mut buf = BytesMut::from(&full[..]);
    let Some(Parsed::Final(h)) = parse_head(&mut buf, false).unwrap() else {
        panic!("not parsed")
    };
    assert!(matches!(h.framing, Framing::Length(3)));
    assert!(h.reusable);
    assert_eq!(&buf[..], b"abc", "the body stays in the buffer");
}

#[test]
fn lengths_and_chunk_sizes() {
    assert_eq!(content_length(b"42"), Some(42));
    assert_eq!(content_length(b"42, 42"), Some(42));
    assert_eq!(content_length(b"42, 43"), None);
    assert_eq!(content_length(b"-1"), None);
    assert_eq!(content_length(b""), None);
    assert_eq!(content_length(b"99999999999999999999"), None);
    assert_eq!(
        content_length(b"0000000000000000000042"),
        Some(42),
        "leading zeros"
    );
    assert_eq!(content_length(b"000"), Some(0));
    assert_eq!(chunk_size(b"1a"), Some(26));
    assert_eq!(chunk_size(b"1A;name=value"), Some(26));
    assert_eq!(chunk_size(b"0"), Some(0));
    assert_eq!(chunk_size(b""), None);
    assert_eq!(chunk_size(b"g"), None);
    assert_eq!(chunk_size(b"11111111111111111"), None);
    assert_eq!(chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
    assert_eq!(chunk_size(b"00000000000000001"), Some(1), "leading zeros");
    assert_eq!(chunk_size(b"0000000000000000000000000;e"), Some(0));
    assert_eq!(chunk_size(b"0000000000000000010000000000000000"), None);
    assert_eq!(chunk_size(b"5 ;ext"), Some(5), "blanks before an extension");
    // A bare LF (or any control byte) in the line, leading blanks, junk after the digits.
    for bad in [
        &b"5;\nXXXXX"[..],
        b" 5",
        b"5\x0c",
        b"5 x",
        b"5;\r",
        b"5;\xff",
    ] {
        assert_eq!(chunk_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn trailers_need_crlf() {
    assert!(parse_trailers(b"x-a: 1\r\n\r\n").unwrap().is_some());
    assert!(parse_trailers(b"x-a: 1\n\r\n").is_err());
    assert!(parse_trailers(b"\n").is_err());
}

#[test]
fn both_length_and_coding_is_read_chunked_and_closed() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"[..],
    );
    let Some(Parsed::Final(h)) = parse_head(&mut buf, false).unwrap() else {
        panic!("not parsed")
    };
    assert!(matches!(h.framing, Framing::Chunked(Chunk::Size)));
    assert!(!h.reusable);
    assert!(
        !h.headers.contains_key(header::CONTENT_LENGTH),
        "the length is not passed on with a coding"
    );
    let mut buf = BytesMut::from(&b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..]);
    assert!(matches!(
        parse_head(&mut buf, false),
        Err(Error::Protocol(_))
    ));
}

proptest::proptest! {
    /// The one-pass reading of a length agrees with the list reading wherever it applies.
    #[test]
    fn lengths_read_in_one_pass_as_in_a_list(
        digits in "[0-9]{0,22}",
        other in proptest::collection::vec(proptest::sample::select(&b"0123456789 ,-+x\t"[..]), 0..24),
    ) {
        proptest::prop_assert_eq!(content_length(digits.as_bytes()), content_length_list(digits.as_bytes()));
        proptest::prop_assert_eq!(content_length(&other), content_length_list(&other));
    }

    /// Whatever an upstream sends, parsing a head answers or refuses; it never panics.
    #[test]
    fn head_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = parse_head(&mut buf, false);
        let _ = parse_trailers(&bytes);
        let _ = chunk_size(&bytes);
        let _ = content_length(&bytes);
    }
}
