//! The memory bound of the webhook under the worst mix of request bodies, against the real
//! binary with its default limits: peak resident memory (VmHWM) must stay under the
//! container memory limit of the Helm chart, with the figures printed.
//!
//! The mix fills every connection the webhook holds (`maxConnections`, 128) with what
//! costs the most memory: 24 HTTP/1.1 bodies of the maximum size (8 MiB) stalled one byte
//! before their end (the 24 that took the process from 42 to 237 MB before the budget);
//! 24 clients sending whole bodies back to back, of the two shapes that make decoding take
//! the most for what they are charged (tests/decode_memory.rs): 8 MiB of image references
//! that do not parse (each is copied), and 2 MiB of combining marks where the containers
//! list belongs (serde's error message quotes them, 3.5 times larger); 40 HTTP/2
//! connections with 10 streams each announcing 8 MiB and sending what flow control lets
//! them; and 40 clients stalled in the middle of 15 KiB of headers. The budget of buffered
//! bodies turns work away (503, or 408 for a stalled body cut to make room: fail-open for
//! the API server) instead of growing; a review still works afterwards.

mod cluster;
mod load;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use load::Binary;

const MAX_BODY: usize = 8 * 1024 * 1024;
const STALLED: usize = 24;
const SENDERS: usize = 24;
const QUOTED_STRING_BODY: usize = 2 * 1024 * 1024;
const H2_CONNECTIONS: usize = 40;
const H2_STREAMS: usize = 10;
const HALF_HEADERS: usize = 40;
const PHASE: Duration = Duration::from_secs(8);

const HEAD: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"team-a","operation":"CREATE","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":"#;

/// A review of exactly `len` bytes whose Pod has, instead of a containers list, a string of
/// combining marks: decoding fails with an error quoting all of it, escaped.
fn quoted_string_review(len: usize) -> Bytes {
    let tail = r#""}}}}"#;
    let room = len - HEAD.len() - 1 - tail.len();
    let mut body = String::with_capacity(len);
    body.push_str(HEAD);
    body.push('"');
    for _ in 0..room / 2 {
        body.push('\u{301}');
    }
    body.push_str(&"x".repeat(room % 2));
    body.push_str(tail);
    assert_eq!(body.len(), len);
    Bytes::from(body)
}

/// A review of exactly `len` bytes whose Pod has 9,000 containers whose image references do
/// not parse (each is copied into the diagnostics).
fn unparsable_images_review(len: usize) -> Bytes {
    let tail = r#"]}}}}"#;
    let entries = 9000;
    let overhead = r#"{"image":""},"#.len();
    let room = len - HEAD.len() - 1 - tail.len() + 1;
    let each = room / entries - overhead;
    let mut body = String::with_capacity(len);
    body.push_str(HEAD);
    body.push('[');
    for i in 0..entries {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"image":"NOT A REFERENCE "#);
        body.push_str(&"x".repeat(each - "NOT A REFERENCE ".len()));
        body.push_str(r#""}"#);
    }
    // Pad the last image to the exact length.
    let pad = len - body.len() - tail.len();
    body.truncate(body.len() - 2);
    body.push_str(&"x".repeat(pad));
    body.push_str(r#""}"#);
    body.push_str(tail);
    assert_eq!(body.len(), len);
    Bytes::from(body)
}

fn head(len: usize) -> String {
    format!(
        "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// The status of an HTTP/1.1 answer, 0 when the connection closed first.
async fn read_status<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return 0,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]);
            let status = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            // Read the rest of a Content-Length body, so that the next request can follow.
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut have = buf.len() - end - 4;
            while have < len {
                match r.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => have += n,
                }
            }
            return status;
        }
    }
}

#[derive(Default)]
struct Statuses {
    ok: AtomicUsize,
    busy: AtomicUsize,
    other: AtomicUsize,
}

impl Statuses {
    /// (200, 503, other) so far.
    fn counts(&self) -> (usize, usize, usize) {
        (
            self.ok.load(Ordering::Relaxed),
            self.busy.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        )
    }

    fn count(&self, status: u16) {
        match status {
            200 => &self.ok,
            503 => &self.busy,
            _ => &self.other,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

/// A client sending `body` again and again on new connections while `running`.
fn sender(
    bin: Arc<Binary>,
    body: Bytes,
    statuses: Arc<Statuses>,
    running: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let h1 = bin.client_config(b"http/1.1");
    tokio::spawn(async move {
        while running.load(Ordering::Relaxed) {
            let Ok(tls) = bin.tls(&h1).await else {
                continue;
            };
            let (mut rd, mut wr) = tokio::io::split(tls);
            let b = body.clone();
            let writer = tokio::spawn(async move {
                wr.write_all(head(b.len()).as_bytes()).await?;
                wr.write_all(&b).await?;
                wr.flush().await?;
                Ok::<_, std::io::Error>(wr)
            });
            statuses.count(read_status(&mut rd).await);
            writer.abort();
        }
    })
}

/// Sample resident memory for `phase`; the median in KiB.
async fn sample(bin: &Binary, phase: Duration) -> u64 {
    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < phase {
        samples.push(bin.memory_kib().0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    samples.sort_unstable();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worst_case_request_bodies_keep_peak_memory_under_the_chart_limit() {
    load::raise_fd_limit(1024);
    pullsecret_injector::tls::install_crypto_provider();
    let limit = load::chart_memory_limit();
    let bin = Arc::new(Binary::start("", ""));
    let (rss0, _) = bin.memory_kib();
    let body = unparsable_images_review(MAX_BODY);
    let quoted = quoted_string_review(QUOTED_STRING_BODY);
    let h1 = bin.client_config(b"http/1.1");
    let statuses = Arc::new(Statuses::default());
    let running = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();

    // Bodies of the maximum size stalled one byte before their end.
    for _ in 0..STALLED {
        let tls = bin.tls(&h1).await.unwrap();
        let (body, statuses) = (body.clone(), statuses.clone());
        tasks.push(tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(tls);
            let writer = tokio::spawn(async move {
                wr.write_all(head(body.len()).as_bytes()).await?;
                wr.write_all(&body[..body.len() - 1]).await?;
                wr.flush().await?;
                // Stalled: hold the connection open.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, std::io::Error>(wr)
            });
            statuses.count(read_status(&mut rd).await);
            writer.abort();
        }));
    }
    // Whole bodies of the worst shapes, back to back.
    for i in 0..SENDERS {
        let body = if i % 2 == 0 { &body } else { &quoted };
        tasks.push(sender(
            bin.clone(),
            body.clone(),
            statuses.clone(),
            running.clone(),
        ));
    }
    // HTTP/2 streams announcing 8 MiB, sending until flow control stops them.
    let h2 = bin.client_config(b"h2");
    let uri = format!("https://127.0.0.1:{}/mutate", bin.webhook_port());
    for _ in 0..H2_CONNECTIONS {
        let tls = bin.tls(&h2).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tasks.push(tokio::spawn(async move {
            let _ = conn.await;
        }));
        for _ in 0..H2_STREAMS {
            let (mut tx, rx) =
                futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            let req = http::Request::post(&uri)
                .header("content-type", "application/json")
                .header("content-length", MAX_BODY.to_string())
                .body(StreamBody::new(rx))
                .unwrap();
            let answer = send.send_request(req);
            let (body, statuses) = (body.clone(), statuses.clone());
            tasks.push(tokio::spawn(async move {
                let feed = tokio::spawn(async move {
                    use futures::SinkExt;
                    for chunk in body.chunks(16 * 1024) {
                        let chunk = body.slice_ref(chunk);
                        if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                            break;
                        }
                    }
                    // Never finishes: the last chunk is held back.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                });
                if let Ok(resp) = answer.await {
                    statuses.count(resp.status().as_u16());
                    let _ = resp.into_body().collect().await;
                }
                feed.abort();
            }));
        }
        tasks.push(tokio::spawn(async move {
            // Keep the sender (and so the connection) for the phase.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(send);
        }));
    }
    // Clients stalled in the middle of their headers.
    for _ in 0..HALF_HEADERS {
        let mut tls = bin.tls(&h1).await.unwrap();
        let mut partial = String::from("POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        while partial.len() < 15 * 1024 {
            partial.push_str(
                "X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        tls.write_all(partial.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let _ = tls.read(&mut buf).await;
        }));
    }

    // Phase 1: everything at once.
    let median1 = sample(&bin, PHASE).await;
    running.store(false, Ordering::Relaxed);
    let (rss1, hwm1) = bin.memory_kib();
    let sockets = bin.sockets();
    for t in &tasks {
        t.abort();
    }
    let (ok, busy, other) = statuses.counts();
    eprintln!(
        "phase 1, every connection pushing for {PHASE:?}: resident at start {rss0} KiB, median {median1} KiB, at the end {rss1} KiB, peak {hwm1} KiB; {sockets} sockets; answers: {ok} x 200, {busy} x 503, {other} other (408, 413, closed)"
    );
    assert!(busy > 0, "the budget turned bodies away with 503");
    // Phase 2: only a few clients with whole bodies of the worst shapes, so that the budget
    // fills with bodies being decoded (the most memory each charged byte can take).
    let decoded = Arc::new(Statuses::default());
    let running = Arc::new(AtomicBool::new(true));
    let senders: Vec<_> = [&body, &quoted, &body, &quoted]
        .into_iter()
        .map(|b| sender(bin.clone(), b.clone(), decoded.clone(), running.clone()))
        .collect();
    let median2 = sample(&bin, PHASE).await;
    running.store(false, Ordering::Relaxed);
    for t in &senders {
        t.abort();
    }
    let (rss, hwm) = bin.memory_kib();
    let (ok, busy, other) = decoded.counts();
    eprintln!(
        "phase 2, 4 clients with whole worst-shape bodies for {PHASE:?}: median {median2} KiB, at the end {rss} KiB; answers: {ok} x 200, {busy} x 503, {other} other"
    );
    eprintln!(
        "PEAK resident memory (VmHWM): {hwm} KiB = {:.1} MiB, chart limit {} MiB",
        hwm as f64 / 1024.0,
        limit >> 20
    );
    assert!(
        hwm * 1024 < limit,
        "peak resident memory {hwm} KiB is over the chart's limit of {} MiB",
        limit >> 20
    );
    assert!(ok > 0, "whole bodies were decoded and answered");
    // The server is still well: a real review is answered.
    let (status, took) = bin.timed_review(false).await;
    assert_eq!(status, 200);
    eprintln!("a review after the flood: {took:?}");
}
