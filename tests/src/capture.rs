//! A backend on 127.0.0.1 that records every byte it receives and answers from a script,
//! for tests of what the gateway forwards (and must not): heads, framing, upgrades.
//!
//! It reads request heads (and `Content-Length` bodies) itself instead of through an HTTP
//! library, so it sees exactly what arrived, duplicates and all.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How the capture backend answers a request head (given as text, as received).
pub type Answer = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// One answer of the capture backend.
pub enum Reply {
    /// Raw bytes, then keep serving the connection.
    Raw(Vec<u8>),
    /// Raw bytes (a 101), then echo whatever arrives (a tunnel's other end).
    SwitchAndEcho(Vec<u8>),
}

/// A plain `200 ok` with a length.
pub fn ok() -> Reply {
    Reply::Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec())
}

pub struct Capture {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    raw: Arc<Mutex<Vec<u8>>>,
}

impl Capture {
    /// Starts with `answer` deciding every reply.
    pub async fn start(answer: Answer) -> Capture {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a capture backend on 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (h, r) = (heads.clone(), raw.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, answer.clone(), h.clone(), r.clone()));
            }
        });
        Capture { addr, heads, raw }
    }

    /// Answers every request `200 ok`.
    pub async fn ok() -> Capture {
        Self::start(Arc::new(|_| ok())).await
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The request heads received so far, as text.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Every byte received so far, on every connection.
    pub fn raw(&self) -> Vec<u8> {
        self.raw.lock().unwrap().clone()
    }

    /// The values of `name` (case-insensitive) in the last head, in order.
    pub fn last_values(&self, name: &str) -> Vec<String> {
        let heads = self.heads();
        let Some(head) = heads.last() else {
            return Vec::new();
        };
        values(head, name)
    }
}

/// The values of `name` (case-insensitive) in a head, in order.
pub fn values(head: &str, name: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

async fn serve(
    mut s: TcpStream,
    answer: Answer,
    heads: Arc<Mutex<Vec<String>>>,
    raw: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // A whole head.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    raw.lock().unwrap().extend_from_slice(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let length: usize = values(&head, "content-length")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // The body (by length only: chunked bodies are not what these tests send).
        while buf.len() < end + length {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    raw.lock().unwrap().extend_from_slice(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        buf.drain(..end + length);
        heads.lock().unwrap().push(head.clone());
        match answer(&head) {
            Reply::Raw(bytes) => {
                if s.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Reply::SwitchAndEcho(bytes) => {
                if s.write_all(&bytes).await.is_err() {
                    return;
                }
                if !buf.is_empty() && s.write_all(&buf).await.is_err() {
                    return;
                }
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            raw.lock().unwrap().extend_from_slice(&chunk[..n]);
                            if s.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}
