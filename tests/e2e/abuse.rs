//! Clients that abuse the listener: oversized heads, dribbled headers, too many
//! connections. Each is refused without hurting anyone else.

use std::time::Duration;

use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::*;

fn addr(gate: &TestGate) -> String {
    gate.url.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (bounded); returns what it sent.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("the server closes the connection");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let gate = spawn_gate(&[]).await;
    let huge = "a".repeat(100 * 1024);
    let mut stream = TcpStream::connect(addr(&gate)).await.unwrap();
    let request =
        format!("GET /auth HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer {huge}\r\n\r\n");
    // The server may answer and close before it has read everything we send.
    let _ = stream.write_all(request.as_bytes()).await;
    let answer = until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");
    // Everyone else is still served.
    assert_eq!(
        gate.call(Method::GET, "/healthz", None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_client_that_dribbles_its_headers_is_dropped_after_the_header_read_timeout() {
    let gate = spawn_gate(&[("TOKENGATE_HEADER_READ_TIMEOUT", "1s")]).await;
    let mut slow = TcpStream::connect(addr(&gate)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: gate\r\n")
        .await
        .unwrap();
    // Meanwhile the gate serves others.
    assert_eq!(
        gate.call(Method::GET, "/healthz", None).await.0,
        StatusCode::OK
    );
    let started = tokio::time::Instant::now();
    let answer = until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(
        !answer.contains("200 OK"),
        "the dribbler got an answer: {answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn connections_past_max_connections_are_closed_at_once() {
    let gate = spawn_gate(&[("TOKENGATE_MAX_CONNECTIONS", "2")]).await;
    // Two slots: the test client's pooled keep-alive connection (from spawn_gate's first
    // review) may hold one and `first` the other; `second` and `third` are past the limit
    // either way.
    let mut first = TcpStream::connect(addr(&gate)).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: gate\r\n\r\n";
    first.write_all(request).await.unwrap();
    let mut buf = [0u8; 256];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let _second = TcpStream::connect(addr(&gate)).await.unwrap();
    let mut third = TcpStream::connect(addr(&gate)).await.unwrap();
    let _ = third.write_all(request).await;
    let answer = until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(
        answer.is_empty(),
        "the third connection was served: {answer}"
    );
    // The first still works.
    first.write_all(request).await.unwrap();
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
