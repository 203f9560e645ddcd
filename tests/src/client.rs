//! A small HTTP/1.1 client for tests.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client as HyperClient, connect::HttpConnector},
    rt::TokioExecutor,
};

/// Whether a failed connect means nothing listens at the address: refused, or reset because
/// the listener closed while this connection's handshake was still in its queue.
pub fn nothing_listens(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
    )
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn backend(&self) -> Option<&str> {
        self.headers.get("x-backend").and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        Self {
            inner: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(
        &self,
        to: SocketAddr,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{to}{path}"))
            .header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self.inner.request(b.body(Full::new(body))?).await?;
        let (parts, body) = resp.into_parts();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await?.to_bytes(),
        })
    }

    pub async fn get(&self, to: SocketAddr, host: &str, path: &str) -> anyhow::Result<Reply> {
        self.send(to, Method::GET, host, path, &[], Bytes::new())
            .await
    }
}

/// Sends one request over an established connection (a TLS stream, say), in HTTP/2 when
/// `h2` (the protocol ALPN chose), else HTTP/1.1; the response head, body unread.
pub async fn send_on<S>(
    io: S,
    h2: bool,
    req: Request<http_body_util::Empty<Bytes>>,
) -> http::Response<hyper::body::Incoming>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(io);
    if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        send.send_request(req).await.expect("an HTTP/2 answer")
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        send.send_request(req).await.expect("an HTTP/1.1 answer")
    }
}
