use std::time::Duration;

use http_body_util::BodyExt as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    task::JoinHandle,
};

use super::*;

/// Both ends of a connection on 127.0.0.1: (the side that dials, the side that accepts).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dial = TcpStream::connect(listener.local_addr().unwrap());
    let (dialed, accepted) = tokio::join!(dial, listener.accept());
    (dialed.unwrap(), accepted.unwrap().0)
}

/// A body of `n` bytes that differ from their neighbours, so a byte out of place shows.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Writes `bytes` in pieces with pauses between them, as a slow client does.
fn send_slowly(mut client: TcpStream, bytes: Vec<u8>, then_close: bool) -> JoinHandle<TcpStream> {
    tokio::spawn(async move {
        for piece in bytes.chunks(100_000) {
            client.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if then_close {
            client.shutdown().await.unwrap();
        }
        client
    })
}

/// What the upstream side reads until the relay's end of the connection closes.
fn read_all(mut upstream: TcpStream) -> JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        got
    })
}

/// A socket body for `client`'s side of a connection, `read` of it read already.
fn socket_body(server: &TcpStream, read: &[u8], left: usize) -> (Box<SocketBody>, Unread) {
    let dup = duplicate(server).unwrap();
    SocketBody::new(dup, Bytes::copy_from_slice(read), left as u64)
}

#[tokio::test]
async fn relays_the_rest_of_a_body_socket_to_socket() {
    let (client, server) = pair().await;
    let (to, upstream) = pair().await;
    let all = pattern(3 * 1024 * 1024 + 17);
    let (mut body, unread) = socket_body(&server, &all[..1000], all.len() - 1000);
    let (total, own, pace) = (Counter::default(), Counter::default(), Pace::default());
    body.count(total.clone(), Some(own.clone()), pace.clone());
    assert_eq!(body.len(), all.len() as u64);
    let sender = send_slowly(client, all[1000..].to_vec(), false);
    let received = read_all(upstream);

    let mut to = to;
    to.write_all(&body.take_read()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), body.relay(&to))
        .await
        .expect("the relay ends")
        .expect("the relay succeeds");
    assert!(unread.done());
    assert_eq!(
        (total.get(), own.get()),
        (all.len() as u64, all.len() as u64)
    );
    assert!(!pace.waiting_on_client() && !pace.client_failed());
    drop(to);
    let got = tokio::time::timeout(Duration::from_secs(10), received)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), all.len());
    assert!(got == all, "the bytes arrived changed or out of order");

    // The connection is the client's again: its next bytes are read from the original.
    let mut client = sender.await.unwrap();
    client.write_all(b"next").await.unwrap();
    let mut server = server;
    let mut next = [0u8; 4];
    server.read_exact(&mut next).await.unwrap();
    assert_eq!(&next, b"next");
}

#[tokio::test]
async fn takes_no_byte_past_the_body() {
    let (client, server) = pair().await;
    let (to, upstream) = pair().await;
    let all = pattern(300_000);
    let mut sent = all.clone();
    sent.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
    let (mut body, unread) = socket_body(&server, &[], all.len());
    let sender = send_slowly(client, sent, false);
    let received = read_all(upstream);
    tokio::time::timeout(Duration::from_secs(20), body.relay(&to))
        .await
        .unwrap()
        .unwrap();
    assert!(unread.done());
    drop(to);
    assert!(received.await.unwrap() == all);
    let _client = sender.await.unwrap();
    let mut server = server;
    let mut next = vec![0u8; 22];
    server.read_exact(&mut next).await.unwrap();
    assert_eq!(next, b"GET /next HTTP/1.1\r\n\r\n");
}

#[tokio::test]
async fn a_client_that_stops_short_fails_the_client_side() {
    let (client, server) = pair().await;
    let (to, upstream) = pair().await;
    let (mut body, unread) = socket_body(&server, &[], 500_000);
    let pace = Pace::default();
    body.count(Counter::default(), None, pace.clone());
    let _sender = send_slowly(client, pattern(200_000), true);
    let _received = read_all(upstream);
    let relayed = tokio::time::timeout(Duration::from_secs(20), body.relay(&to))
        .await
        .unwrap();
    assert!(
        matches!(relayed, Err(Relay::Client(ref e)) if e.kind() == io::ErrorKind::UnexpectedEof),
        "{relayed:?}"
    );
    assert!(pace.client_failed());
    assert!(!unread.done());
}

#[tokio::test]
async fn an_upstream_that_closes_fails_the_upstream_side() {
    let (client, server) = pair().await;
    let (to, upstream) = pair().await;
    drop(upstream);
    let all = pattern(4 * 1024 * 1024);
    let (mut body, unread) = socket_body(&server, &[], all.len());
    let pace = Pace::default();
    body.count(Counter::default(), None, pace.clone());
    let _sender = send_slowly(client, all, false);
    let relayed = tokio::time::timeout(Duration::from_secs(20), body.relay(&to))
        .await
        .unwrap();
    assert!(matches!(relayed, Err(Relay::Upstream(_))), "{relayed:?}");
    assert!(!pace.client_failed());
    assert!(!unread.done());
    // The failed relay's pipe held bytes: the next relay on this thread has a new one.
    let (client, server) = pair().await;
    let (to, upstream) = pair().await;
    let (mut body, _) = socket_body(&server, &[], 100_000);
    let _sender = send_slowly(client, pattern(100_000), false);
    let received = read_all(upstream);
    body.relay(&to).await.unwrap();
    drop(to);
    assert!(received.await.unwrap() == pattern(100_000));
}

#[tokio::test]
async fn read_as_a_stream_it_takes_no_byte_past_the_body() {
    let (client, server) = pair().await;
    let all = pattern(200_000);
    let mut sent = all.clone();
    sent.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
    let (body, unread) = socket_body(&server, &[], all.len());
    let _sender = send_slowly(client, sent, false);
    let got = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert!(got == all);
    assert!(unread.done());
    let mut server = server;
    let mut next = vec![0u8; 22];
    server.read_exact(&mut next).await.unwrap();
    assert_eq!(next, b"GET /next HTTP/1.1\r\n\r\n");
}

#[tokio::test]
async fn reads_as_a_stream_where_it_is_not_spliced() {
    let (client, server) = pair().await;
    let all = pattern(700_000);
    let (mut body, unread) = socket_body(&server, &all[..5000], all.len() - 5000);
    let total = Counter::default();
    body.count(total.clone(), None, Pace::default());
    let _sender = send_slowly(client, all[5000..].to_vec(), false);
    let got = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert!(got == all);
    assert!(unread.done());
    assert_eq!(total.get(), all.len() as u64);
}
