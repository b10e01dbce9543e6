//! HTTP and TLS abuse against the REAL webhook server (`server::serve_tls` with a
//! `CertStore`, in process): every case has a defined answer, the server never panics,
//! and it keeps serving afterwards. Limits are shortened so that timeouts show in tests.
//!
//! The client side is hand-written HTTP/1.1 over tokio-rustls (so that it can lie about
//! `Content-Length`, stall, or send headers byte by byte), hyper's HTTP/2 client for the
//! h2 cases, and raw bytes for plaintext and old-TLS ClientHellos.

mod cluster;
mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

use pullsecret_injector::metrics::Metrics;
use pullsecret_injector::server::{self, Limits};
use pullsecret_injector::tls::CertStore;
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const FIXTURE: &str = include_str!("fixtures/admission-review-pod-create.json");
/// Upper bound on any wait in these tests; the limits under test are far shorter.
const PATIENCE: Duration = Duration::from_secs(10);

/// A webhook server on a loopback port with its own CA.
struct Server {
    port: u16,
    ca_pem: Vec<u8>,
    _dir: tempfile::TempDir,
    _task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Server {
    async fn start(limits: Limits) -> Self {
        pullsecret_injector::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let certs = cluster::Certs::generate(&dir.path().join("certs"));
        let store = Arc::new(CertStore::load(&certs.cert(), &certs.key()).unwrap());
        let admission = common::admission::admission(&Metrics::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(server::serve_tls(
            listener,
            store.server_config().unwrap(),
            server::webhook_router(admission),
            limits,
            std::future::pending(),
        ));
        Self {
            port,
            ca_pem: certs.ca_pem,
            _dir: dir,
            _task: AbortOnDrop(task),
        }
    }

    fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        cluster::tls_client_config(&self.ca_pem, alpn)
    }

    /// A TLS connection speaking HTTP/1.1 (ALPN `http/1.1`).
    async fn connect(&self) -> TlsStream<TcpStream> {
        self.try_connect(b"http/1.1").await.expect("TLS handshake")
    }

    async fn try_connect(&self, alpn: &[u8]) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await?;
        TlsConnector::from(self.client_config(&[alpn]))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
    }

    /// One request on a fresh HTTP/1.1 connection; the parsed answer.
    async fn request(&self, head: &str, body: &[u8]) -> Answer {
        let mut s = self.connect().await;
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        s.flush().await.unwrap();
        read_answer(&mut s).await.expect("an HTTP answer")
    }

    /// An HTTP/2 client connection (ALPN `h2`); the connection future resolves when it
    /// closes.
    async fn h2(
        &self,
    ) -> (
        hyper::client::conn::http2::SendRequest<BoxBody<Bytes, Infallible>>,
        tokio::task::JoinHandle<Result<(), hyper::Error>>,
    ) {
        let tls = self.try_connect(b"h2").await.unwrap();
        let (send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        (send, tokio::spawn(conn))
    }

    /// The fixture review as an HTTP/2 request.
    fn h2_review(&self) -> http::Request<BoxBody<Bytes, Infallible>> {
        http::Request::post(format!("https://127.0.0.1:{}/mutate", self.port))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(FIXTURE.as_bytes())).boxed())
            .unwrap()
    }

    /// The server still answers a real review correctly.
    async fn assert_serving(&self) {
        let answer = self
            .request(&post_head(FIXTURE.len()), FIXTURE.as_bytes())
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let v: Value = serde_json::from_slice(&answer.body).unwrap();
        let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
        assert_eq!(v["response"]["uid"], fixture["request"]["uid"]);
        assert_eq!(v["response"]["patchType"], "JSONPatch");
    }
}

fn post_head(len: usize) -> String {
    format!(
        "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Read one HTTP/1.1 response (headers and a `Content-Length` body). `None` when the
/// connection closes before a complete response.
async fn read_answer<S: AsyncRead + Unpin>(s: &mut S) -> Option<Answer> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
            .await
            .expect("no answer within the test's patience")
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = vec![0u8; len - body.len()];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
            .await
            .expect("body within the test's patience")
            .ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Some(Answer {
        status,
        headers,
        body,
    })
}

/// Wait until the peer closes the connection (EOF or reset); returns what it sent before
/// and how long that took. Panics when it is still open after `PATIENCE`.
async fn closed_by_server<S: AsyncRead + Unpin>(s: &mut S) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, s.read(&mut chunk)).await {
            Err(_) => panic!(
                "connection still open after {PATIENCE:?} (received {:?})",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, start.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

fn short_limits() -> Limits {
    Limits {
        max_connections: 64,
        handshake_timeout: Duration::from_millis(500),
        header_read_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(800),
        idle_timeout: Duration::from_millis(1500),
        ..Limits::default()
    }
}

#[tokio::test]
async fn wrong_method_path_and_content_type_over_tls_get_405_404_415() {
    let srv = Server::start(short_limits()).await;
    let get = srv
        .request(
            "GET /mutate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        )
        .await;
    assert_eq!(get.status, 405);
    assert_eq!(get.header("allow"), Some("POST"));
    for path in [
        "/validate",
        "/",
        "/healthz",
        "/metrics",
        "/mutate/",
        "/MUTATE",
    ] {
        let a = srv
            .request(
                &post_head(FIXTURE.len()).replacen("/mutate", path, 1),
                FIXTURE.as_bytes(),
            )
            .await;
        assert_eq!(a.status, 404, "{path}");
    }
    for ct in [
        "text/plain",
        "application/yaml",
        "application/jsonx",
        "json",
    ] {
        let head = post_head(FIXTURE.len()).replace("application/json", ct);
        let a = srv.request(&head, FIXTURE.as_bytes()).await;
        assert_eq!(a.status, 415, "{ct}");
        assert_eq!(
            String::from_utf8_lossy(&a.body),
            "content type must be application/json\n"
        );
    }
    srv.assert_serving().await;
}

#[tokio::test]
async fn content_length_shorter_than_the_body_reads_only_the_declared_bytes() {
    let srv = Server::start(short_limits()).await;
    let mut s = srv.connect().await;
    // Declares 100 bytes, sends the whole review: the first 100 bytes are a truncated
    // review (400) and the rest is not an HTTP request (400, connection closed).
    s.write_all(post_head(100).as_bytes()).await.unwrap();
    s.write_all(FIXTURE.as_bytes()).await.unwrap();
    let first = read_answer(&mut s)
        .await
        .expect("answer to the declared body");
    assert_eq!(first.status, 400);
    assert!(
        String::from_utf8_lossy(&first.body).starts_with("body is not an AdmissionReview"),
        "{first:?}"
    );
    let (rest, _) = closed_by_server(&mut s).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 400"),
        "the remainder is refused: {rest:?}"
    );
    srv.assert_serving().await;
}

#[tokio::test]
async fn content_length_longer_than_the_body_is_cut_off_after_the_request_timeout() {
    let limits = short_limits();
    let srv = Server::start(limits.clone()).await;
    let mut s = srv.connect().await;
    s.write_all(post_head(FIXTURE.len() + 1000).as_bytes())
        .await
        .unwrap();
    s.write_all(FIXTURE.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    // The client stalls with 1000 bytes still owed.
    let answer = read_answer(&mut s).await.expect("an answer, not a hang");
    assert_eq!(answer.status, 408, "{answer:?}");
    let (_, took) = closed_by_server(&mut s).await;
    assert!(took < PATIENCE);
    srv.assert_serving().await;
}

#[tokio::test]
async fn headers_sent_slowly_are_cut_off_after_the_header_read_timeout() {
    let limits = short_limits();
    let srv = Server::start(limits.clone()).await;
    let mut s = srv.connect().await;
    let start = Instant::now();
    let head = post_head(FIXTURE.len());
    let mut closed_after = None;
    // One byte every 50 ms: the whole head would take ~4.5 s, ten times the limit.
    for b in head.as_bytes() {
        if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
        let mut probe = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut probe)).await {
            Err(_) => {}
            Ok(_) => {
                closed_after = Some(start.elapsed());
                break;
            }
        }
    }
    let closed_after = closed_after.expect("the server closed the connection");
    assert!(
        closed_after >= limits.header_read_timeout && closed_after < limits.header_read_timeout * 4,
        "closed after {closed_after:?}"
    );
    srv.assert_serving().await;
}

#[tokio::test]
async fn client_silent_after_the_handshake_is_closed_after_the_header_read_timeout() {
    let limits = short_limits();
    let srv = Server::start(limits.clone()).await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut s = srv.try_connect(alpn).await.unwrap();
        let (got, took) = closed_by_server(&mut s).await;
        assert!(
            took >= limits.header_read_timeout / 2 && took < limits.header_read_timeout * 4,
            "{}: closed after {took:?}",
            String::from_utf8_lossy(alpn)
        );
        if alpn == b"http/1.1" {
            assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
        }
    }
    srv.assert_serving().await;
}

#[tokio::test]
async fn client_silent_before_the_handshake_is_closed_after_the_handshake_timeout() {
    let limits = short_limits();
    let srv = Server::start(limits.clone()).await;
    let mut tcp = TcpStream::connect(("127.0.0.1", srv.port)).await.unwrap();
    let (got, took) = closed_by_server(&mut tcp).await;
    assert!(got.is_empty());
    assert!(
        took >= limits.handshake_timeout / 2 && took < limits.handshake_timeout * 4,
        "closed after {took:?}"
    );
    // Half a ClientHello, then silence: the same bound.
    let mut tcp = TcpStream::connect(("127.0.0.1", srv.port)).await.unwrap();
    tcp.write_all(&client_hello(0x0303, true)[..20])
        .await
        .unwrap();
    let (_, took) = closed_by_server(&mut tcp).await;
    assert!(took < limits.handshake_timeout * 4, "closed after {took:?}");
    srv.assert_serving().await;
}

#[tokio::test]
async fn idle_http1_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let limits = short_limits();
    assert!(limits.idle_timeout >= limits.header_read_timeout * 3);
    let srv = Server::start(limits.clone()).await;
    let mut s = srv.connect().await;
    // Two reviews on one connection: keep-alive works.
    for _ in 0..2 {
        review_on(&mut s).await;
    }
    let (got, took) = closed_by_server(&mut s).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    // The idle timeout applies, not the (shorter) header timeout.
    assert!(
        took >= limits.idle_timeout * 9 / 10 && took < limits.idle_timeout * 3,
        "closed after {took:?}"
    );
    srv.assert_serving().await;
}

#[tokio::test]
async fn http1_request_started_on_an_idle_connection_gets_the_header_timeout() {
    let limits = short_limits();
    let srv = Server::start(limits.clone()).await;
    let mut s = srv.connect().await;
    review_on(&mut s).await;
    // Half of the next request's head, then nothing.
    let head = post_head(FIXTURE.len());
    s.write_all(&head.as_bytes()[..head.len() / 2])
        .await
        .unwrap();
    s.flush().await.unwrap();
    let (got, took) = closed_by_server(&mut s).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(
        took >= limits.header_read_timeout * 9 / 10 && took < limits.idle_timeout,
        "closed after {took:?}"
    );
    srv.assert_serving().await;
}

#[tokio::test]
async fn idle_http2_connection_gets_goaway_after_the_idle_timeout() {
    let limits = short_limits();
    let srv = Server::start(limits.clone()).await;
    let (mut send, conn) = srv.h2().await;
    let resp = send.send_request(srv.h2_review()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let start = Instant::now();
    // The connection future ends when the server's GOAWAY has closed it.
    let ended = tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .unwrap();
    assert!(
        ended.is_ok(),
        "closed cleanly (GOAWAY), not reset: {ended:?}"
    );
    let took = start.elapsed();
    assert!(
        took >= limits.idle_timeout * 9 / 10 && took < limits.idle_timeout * 3,
        "closed after {took:?}"
    );
    assert!(send.send_request(srv.h2_review()).await.is_err());
    srv.assert_serving().await;
}

#[tokio::test]
async fn http2_peer_that_stops_answering_pings_is_closed() {
    // A hand-written HTTP/2 client: preface, SETTINGS, one GET, then it reads what comes
    // but never acknowledges a PING, like a peer that vanished.
    let limits = Limits {
        idle_timeout: Duration::from_secs(30),
        http2_keep_alive_interval: Some(Duration::from_millis(200)),
        http2_keep_alive_timeout: Duration::from_millis(300),
        ..short_limits()
    };
    let srv = Server::start(limits).await;
    let mut s = srv.try_connect(b"h2").await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
    // HEADERS on stream 1, END_STREAM | END_HEADERS: :method GET (static 2), :scheme
    // https (7), :path / (4), :authority "x" (literal, name index 1).
    let block = [0x82, 0x87, 0x84, 0x41, 0x01, b'x'];
    out.extend_from_slice(&[0, 0, block.len() as u8, 1, 0x05, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    s.write_all(&out).await.unwrap();
    s.flush().await.unwrap();
    let start = Instant::now();
    let (got, took) = closed_by_server(&mut s).await;
    eprintln!("closed after {took:?} ({} bytes received)", got.len());
    // It got its answer (a HEADERS frame for 404) and PINGs, then the close.
    let frame_types: Vec<u8> = frames(&got).iter().map(|(t, _)| *t).collect();
    assert!(frame_types.contains(&1), "a HEADERS frame: {frame_types:?}");
    assert!(frame_types.contains(&6), "a PING frame: {frame_types:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "closed after {took:?}"
    );
}

/// (type, payload) of the HTTP/2 frames in `bytes` (whole frames only).
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        if bytes.len() < 9 + len {
            break;
        }
        out.push((bytes[3], bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

#[tokio::test]
async fn http2_reviews_work_and_a_stalled_http2_body_gets_408() {
    let srv = Server::start(short_limits()).await;
    let tls = srv.try_connect(b"h2").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let uri = format!("https://127.0.0.1:{}/mutate", srv.port);
    let review = |body: BoxBody<Bytes, Infallible>| {
        http::Request::post(&uri)
            .header("content-type", "application/json")
            .body(body)
            .unwrap()
    };
    let fixture = || Full::new(Bytes::from_static(FIXTURE.as_bytes())).boxed();
    for _ in 0..3 {
        let resp = send.send_request(review(fixture())).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    // A stream whose body never ends: 408 on that stream, the connection keeps working.
    let (mut tx, body) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tx.try_send(Ok(Frame::data(Bytes::from_static(b"{\"apiVersion\":"))))
        .unwrap();
    let start = Instant::now();
    let resp = tokio::time::timeout(
        PATIENCE,
        send.send_request(review(StreamBody::new(body).boxed())),
    )
    .await
    .expect("an answer, not a hang")
    .unwrap();
    assert_eq!(resp.status(), 408);
    assert!(start.elapsed() < PATIENCE);
    drop(tx);
    let resp = send.send_request(review(fixture())).await.unwrap();
    assert_eq!(resp.status(), 200);
    srv.assert_serving().await;
}

/// Send one review on `s` and expect 200.
async fn review_on<S: AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) {
    s.write_all(post_head(FIXTURE.len()).as_bytes())
        .await
        .unwrap();
    s.write_all(FIXTURE.as_bytes()).await.unwrap();
    let a = read_answer(s).await.expect("an answer");
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test]
async fn at_the_connection_limit_the_longest_idle_connection_makes_room_for_a_new_client() {
    let limits = Limits {
        max_connections: 3,
        // Long enough that nothing times out during the test.
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        ..short_limits()
    };
    let srv = Server::start(limits).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = srv.connect().await;
        review_on(&mut s).await;
        held.push(s);
    }
    // The fourth client is served at once; the connection idle the longest (the first)
    // is closed to make room, with nothing sent on it.
    let start = Instant::now();
    let mut fourth = srv.connect().await;
    review_on(&mut fourth).await;
    eprintln!("fourth client answered after {:?}", start.elapsed());
    assert!(start.elapsed() < PATIENCE);
    let (got, _) = closed_by_server(&mut held[0]).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    // The others still work (each review makes its connection the most recently active).
    review_on(&mut held[1]).await;
    review_on(&mut held[2]).await;
    review_on(&mut fourth).await;
}

#[tokio::test]
async fn when_every_connection_has_a_request_in_flight_the_next_client_waits_for_one_to_finish() {
    let limits = Limits {
        max_connections: 3,
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(30),
        ..short_limits()
    };
    let srv = Server::start(limits).await;
    // Three requests in flight: headers and half of the body, then the clients pause.
    // `Expect: 100-continue` makes the server say when it starts reading the body, so the
    // test knows the requests are in flight before the fourth client comes.
    let half = FIXTURE.len() / 2;
    let mut busy = Vec::new();
    for _ in 0..3 {
        let mut s = srv.connect().await;
        let head = post_head(FIXTURE.len()).replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        let cont = read_answer(&mut s).await.expect("100 Continue");
        assert_eq!(cont.status, 100, "{cont:?}");
        s.write_all(&FIXTURE.as_bytes()[..half]).await.unwrap();
        s.flush().await.unwrap();
        busy.push(s);
    }
    // The fourth client's TCP connect succeeds (listen backlog) but its handshake is not
    // served while three requests are in flight and no connection is idle.
    let waiting = tokio::spawn({
        let config = srv.client_config(&[b"http/1.1"]);
        let port = srv.port;
        async move {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            TlsConnector::from(config)
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "the fourth connection was served");
    // One request completes: its connection is idle, so it makes room for the fourth.
    busy[0]
        .write_all(&FIXTURE.as_bytes()[half..])
        .await
        .unwrap();
    assert_eq!(read_answer(&mut busy[0]).await.unwrap().status, 200);
    let mut fourth = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("served once a connection was idle")
        .unwrap()
        .expect("TLS handshake");
    review_on(&mut fourth).await;
    // The other two requests in flight were not disturbed.
    for s in &mut busy[1..] {
        s.write_all(&FIXTURE.as_bytes()[half..]).await.unwrap();
        assert_eq!(read_answer(s).await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn many_idle_connections_are_bounded_and_released_by_the_idle_timeouts() {
    let limits = Limits {
        max_connections: 8,
        ..short_limits()
    };
    let srv = Server::start(limits).await;
    // 40 clients that connect and never speak: at most 8 are held at a time, each for at
    // most the handshake or header timeout, so all of them are closed in bounded time.
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(TcpStream::connect(("127.0.0.1", srv.port)).await.unwrap());
    }
    let start = Instant::now();
    for c in &mut clients {
        closed_by_server(c).await;
    }
    // 5 rounds of 8 at 0.5 s each, with slack.
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    srv.assert_serving().await;
}

#[tokio::test]
async fn plaintext_http_to_the_tls_port_gets_no_http_answer_and_the_server_keeps_serving() {
    let srv = Server::start(short_limits()).await;
    let mut tcp = TcpStream::connect(("127.0.0.1", srv.port)).await.unwrap();
    tcp.write_all(post_head(FIXTURE.len()).as_bytes())
        .await
        .unwrap();
    let _ = tcp.write_all(FIXTURE.as_bytes()).await;
    let (got, _) = closed_by_server(&mut tcp).await;
    assert!(
        !got.starts_with(b"HTTP/"),
        "no plaintext fallback: {:?}",
        String::from_utf8_lossy(&got)
    );
    // What comes back, if anything, is a TLS alert record (content type 21).
    assert!(got.is_empty() || got[0] == 21, "{got:?}");
    srv.assert_serving().await;
}

/// A minimal ClientHello record. `version` is the legacy version in the hello (0x0301 TLS
/// 1.0, 0x0302 TLS 1.1, 0x0303 TLS 1.2); with `modern` false it offers only CBC suites of
/// that era and no `supported_versions` extension, exactly like an old client.
fn client_hello(version: u16, modern: bool) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    let suites: &[u16] = if modern {
        &[0x1301, 0xc02f, 0xc02b]
    } else {
        &[0xc013, 0xc014, 0x002f, 0x0035]
    };
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // null compression
    let mut ext = Vec::new();
    // server_name 127.0.0.1 is not a DNS name: omit it. supported_groups: x25519, P-256.
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed.
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    if modern {
        // signature_algorithms: rsa_pss_rsae_sha256, rsa_pkcs1_sha256, ecdsa_secp256r1_sha256.
        ext.extend_from_slice(&[
            0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x08, 0x04, 0x04, 0x01, 0x04, 0x03,
        ]);
    }
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1u8]; // client_hello
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![22u8, 0x03, 0x01]; // handshake, record version TLS 1.0
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[tokio::test]
async fn tls_1_0_and_1_1_clients_get_a_protocol_version_alert() {
    let srv = Server::start(short_limits()).await;
    for (version, modern, want) in [
        (0x0301u16, false, 40u8),
        (0x0302, false, 40),
        (0x0301, true, 70),
        (0x0302, true, 70),
    ] {
        let mut tcp = TcpStream::connect(("127.0.0.1", srv.port)).await.unwrap();
        tcp.write_all(&client_hello(version, modern)).await.unwrap();
        let (got, _) = closed_by_server(&mut tcp).await;
        // One fatal alert record (type 21, level 2): protocol_version (70) when the hello
        // offers suites TLS 1.2 also has, handshake_failure (40) when it offers only suites
        // of its own era; never a ServerHello.
        assert_eq!(got.len(), 7, "{version:#06x}: {got:?}");
        assert_eq!(got[0], 21, "{version:#06x}: alert record: {got:?}");
        assert_eq!(got[5], 2, "{version:#06x}: fatal: {got:?}");
        assert_eq!(got[6], want, "{version:#06x}: {got:?}");
    }
    srv.assert_serving().await;
}

/// `openssl s_client -tls1` / `-tls1_1`: when the local openssl can still speak the old
/// version at all (Debian's refuses it at its default security level; level 0 is asked
/// for explicitly), the handshake must fail on the server's side.
#[tokio::test]
async fn openssl_tls_1_0_and_1_1_clients_are_refused() {
    let srv = Server::start(short_limits()).await;
    let port = srv.port;
    for flag in ["-tls1", "-tls1_1"] {
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("openssl")
                .args(["s_client", "-connect"])
                .arg(format!("127.0.0.1:{port}"))
                .args([flag, "-cipher", "DEFAULT:@SECLEVEL=0", "-no_ign_eof"])
                .stdin(std::process::Stdio::null())
                .output()
        })
        .await
        .unwrap();
        let Ok(out) = out else {
            eprintln!("openssl CLI not available; the raw ClientHello test covers this");
            return;
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{flag} handshake succeeded:\n{text}");
        assert!(
            !text.contains("BEGIN CERTIFICATE") && text.contains("Cipher is (NONE)"),
            "{flag}: the server completed a handshake:\n{text}"
        );
        // Either the server's protocol_version alert reached openssl, or openssl refused
        // to offer the version at all; both are refusals, the first one is the real test.
        eprintln!(
            "{flag}: {}",
            text.lines()
                .filter(|l| l.contains("alert") || l.contains("protocol") || l.contains("error"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    srv.assert_serving().await;
}

/// Send `head` and then `body` in `chunk`-sized writes while reading the answer, so that
/// an early answer is read even when the server stops reading the body.
async fn post_streaming(srv: &Server, head: String, body: Vec<u8>, chunked: bool) -> Answer {
    let s = srv.connect().await;
    let (mut rd, mut wr) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(64 * 1024) {
            if chunked {
                wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
            }
            wr.write_all(chunk).await?;
            if chunked {
                wr.write_all(b"\r\n").await?;
            }
        }
        if chunked {
            wr.write_all(b"0\r\n\r\n").await?;
        }
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let answer = read_answer(&mut rd).await.expect("an answer");
    writer.abort();
    answer
}

#[tokio::test]
async fn body_over_8_mib_is_413_with_content_length_and_with_chunked_encoding() {
    let srv = Server::start(Limits {
        request_timeout: Duration::from_secs(10),
        ..short_limits()
    })
    .await;
    let big = vec![b' '; 9 * 1024 * 1024];
    let a = post_streaming(&srv, post_head(big.len()), big.clone(), false).await;
    assert_eq!(a.status, 413);
    let head = "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let a = post_streaming(&srv, head.to_string(), big, true).await;
    assert_eq!(a.status, 413);
    srv.assert_serving().await;
}

#[tokio::test]
async fn a_string_too_long_to_decode_within_the_memory_budget_is_allowed_unchanged_undecoded() {
    // 3 MiB of "x" where the containers list belongs: decoding it could build an error
    // message several times that, more than the whole default budget (32 MiB) allows. The
    // envelope is read without decoding the Pod: allowed unchanged, uid echoed.
    let srv = Server::start(Limits {
        request_timeout: Duration::from_secs(10),
        ..short_limits()
    })
    .await;
    let body = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u-1","resource":{{"group":"","version":"v1","resource":"pods"}},"operation":"CREATE","object":{{"spec":{{"containers":"{}"}}}}}}}}"#,
        "x".repeat(3 << 20)
    );
    let a = post_streaming(&srv, post_head(body.len()), body.into_bytes(), false).await;
    assert_eq!(a.status, 200, "{a:?}");
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(
        v["response"],
        serde_json::json!({"uid": "u-1", "allowed": true})
    );
    srv.assert_serving().await;
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_refused() {
    let srv = Server::start(short_limits()).await;
    let mut head = String::from("POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n");
    for i in 0..200 {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let mut s = srv.connect().await;
    s.write_all(head.as_bytes()).await.unwrap();
    let a = read_answer(&mut s).await.unwrap();
    assert_eq!(a.status, 431, "too many headers");
    let mut s = srv.connect().await;
    let huge = format!(
        "POST /mutate HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let _ = s.write_all(huge.as_bytes()).await;
    let (got, _) = closed_by_server(&mut s).await;
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 431"),
        "a 1 MiB header is refused: {got:?}"
    );
    srv.assert_serving().await;
}

#[tokio::test]
async fn garbage_request_lines_get_400_and_close() {
    let srv = Server::start(short_limits()).await;
    for junk in [
        &b"\x00\x01\x02\x03\r\n\r\n"[..],
        b"POST /mutate HTTP/9.9\r\n\r\n",
        b"POST /mutate HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /mutate HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /mutate HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let mut s = srv.connect().await;
        s.write_all(junk).await.unwrap();
        let (got, _) = closed_by_server(&mut s).await;
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.is_empty() || got.starts_with("HTTP/1.1 400"),
            "{:?}: {got:?}",
            String::from_utf8_lossy(junk)
        );
    }
    srv.assert_serving().await;
}

#[tokio::test]
async fn deeply_nested_review_over_tls_is_400_without_overflowing_the_stack() {
    // Served on a tokio worker thread (2 MiB stack), like in production.
    let srv = Server::start(short_limits()).await;
    let depth = 100_000;
    let body = format!(
        "{{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"x\":{}{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let a = srv.request(&post_head(body.len()), body.as_bytes()).await;
    // An unknown field is skipped iteratively: the review is read and lacks `request`.
    assert_eq!(a.status, 400);
    assert_eq!(
        String::from_utf8_lossy(&a.body),
        "AdmissionReview has no request\n"
    );
    srv.assert_serving().await;
}
