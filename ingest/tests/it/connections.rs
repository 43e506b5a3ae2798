//! Ingest's port against clients that do not speak HTTP properly or stall:
//! raw TCP, so nothing between the test and the server tidies the bytes.
//! (The server loop is `shared::server`, which query and the aggregator
//! share; ingest is the one students reach.)

use std::time::Duration;

use feedback_tests::ingest::TestIngest;
use feedback_tests::student;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The server closes an abandoned connection after its header timeout (10 s);
/// the tests give it this long before calling it a failure.
const CLOSED_WITHIN: Duration = Duration::from_secs(30);

async fn connect(ingest: &TestIngest) -> TcpStream {
    let addr = ingest.url.trim_start_matches("http://");
    TcpStream::connect(addr).await.unwrap()
}

/// Everything the server sends until it closes the connection.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    tokio::time::timeout(CLOSED_WITHIN, stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .unwrap();
    answer
}

/// An answer's status, its headers (lower-cased) and its body as JSON.
fn parse(answer: &[u8]) -> (u16, String, Value) {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head[9..12].parse().unwrap();
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, head.to_ascii_lowercase(), body)
}

#[tokio::test]
async fn requests_hyper_cannot_parse_get_the_contracts_json_error() {
    let ingest = TestIngest::spawn().await;
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_uri = "a".repeat(100_000);
    for (request, status, code) in [
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (b"HELLO\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
            "header_fields_too_large",
        ),
        (
            format!("GET /{long_uri} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            414,
            "uri_too_long",
        ),
    ] {
        let mut stream = connect(&ingest).await;
        stream.write_all(&request).await.unwrap();
        let answer = read_to_close(&mut stream).await;
        let (got, head, body) = parse(&answer);
        assert_eq!(got, status, "{}", String::from_utf8_lossy(&answer));
        assert!(
            head.contains("\r\ncontent-type: application/json\r\n"),
            "{head}"
        );
        assert_eq!(body["error"]["code"], code);
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    ingest.shutdown().await;
}

#[tokio::test]
async fn connections_that_send_nothing_or_half_a_head_are_closed() {
    let ingest = TestIngest::spawn().await;
    let mut silent = connect(&ingest).await;
    let mut half = connect(&ingest).await;
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Meanwhile the port serves everyone else.
    let healthz = ingest
        .client
        .get(format!("{}/healthz", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    // Closed, without an answer: there was no request to answer.
    assert!(read_to_close(&mut silent).await.is_empty());
    assert!(read_to_close(&mut half).await.is_empty());
    ingest.shutdown().await;
}

#[tokio::test]
async fn a_body_that_stops_half_way_gets_408_in_the_contracts_format() {
    let ingest = TestIngest::spawn().await;
    let mut stream = connect(&ingest).await;
    let head = format!(
        "POST /v1/feedback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"course_id\"",
        student("slow")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut stream).await;
    let (status, head, body) = parse(&answer);
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&answer));
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert_eq!(body["error"]["code"], "request_timeout");
    ingest.shutdown().await;
}
