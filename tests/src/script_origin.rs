//! An HTTP origin on 127.0.0.1:0 that answers from a script and records what it is asked,
//! so a test can say exactly what the origin answers at each step and check how many
//! requests, and which conditional or range headers, got past a cache.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, task::JoinSet};

/// One answer of the origin.
#[derive(Clone, Debug)]
pub struct Scripted {
    pub status: u16,
    /// Appended in order: a name given twice is sent as two field lines.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Scripted {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// As an HTTP response. Panics on an invalid status or field: a broken script is a
    /// broken test, and [`ScriptOrigin::push`] calls this so the panic lands in the test.
    fn response(&self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(self.body.clone()));
        *resp.status_mut() = StatusCode::from_u16(self.status)
            .unwrap_or_else(|_| panic!("scripted status {} is not valid", self.status));
        for (k, v) in &self.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .unwrap_or_else(|_| panic!("scripted field name {k:?} is not valid"));
            let value = HeaderValue::from_str(v)
                .unwrap_or_else(|_| panic!("scripted value {v:?} of {k} is not valid"));
            resp.headers_mut().append(name, value);
        }
        resp
    }
}

/// A request as the origin received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// Path and query.
    pub target: String,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct Script {
    queue: VecDeque<Scripted>,
    /// Answered again once the queue runs dry, so a test that only cares about the first
    /// answers need not count how often the cache asks.
    last: Option<Scripted>,
    seen: Vec<Recorded>,
}

/// The origin. Dropping it stops the server and closes its connections.
pub struct ScriptOrigin {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    server: tokio::task::JoinHandle<()>,
}

impl ScriptOrigin {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the scripted origin on 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let script = Arc::new(Mutex::new(Script::default()));
        let s = script.clone();
        let server = tokio::spawn(async move {
            // Connections live in the set, so aborting the server aborts them too.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                let s = s.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(answer(&s, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            script,
            server,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Queues the answer to the next request not yet answered.
    pub fn push(&self, answer: Scripted) {
        let _ = answer.response();
        self.script.lock().unwrap().queue.push_back(answer);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.script.lock().unwrap().seen.clone()
    }

    pub fn count(&self) -> usize {
        self.script.lock().unwrap().seen.len()
    }

    pub fn last_request(&self) -> Option<Recorded> {
        self.script.lock().unwrap().seen.last().cloned()
    }
}

impl Drop for ScriptOrigin {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(script: &Mutex<Script>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // Read the body so the connection stays usable for the next request.
    let _ = body.collect().await;
    let mut s = script.lock().unwrap();
    s.seen.push(Recorded {
        method: parts.method,
        target: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |pq| pq.to_string()),
        headers: parts.headers,
    });
    let next = match s.queue.pop_front() {
        Some(next) => {
            s.last = Some(next.clone());
            Some(next)
        }
        None => s.last.clone(),
    };
    match next {
        Some(next) => next.response(),
        None => Scripted::new(500)
            .body("the scripted origin was given no answer")
            .response(),
    }
}
