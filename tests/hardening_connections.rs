//! Connection floods against the real binary with its default connection limits: 2,000
//! HTTP/2 connections that each send one review and then stay idle, and 1,000 admin
//! requests that stop halfway through their headers. Each is held (up to the port's
//! `maxConnections`) or shed (the longest-idle connection is closed to serve a new one),
//! and meanwhile a real review on a new connection, as the API server opens one, still gets
//! its answer within 100 ms. The latency bound is a statement about starvation, not a
//! benchmark: it is the median of several reviews, and every figure is printed.
//!
//! Timeouts are shortened (idle 10 s, admin headers 5 s) only so that the test can also
//! watch every held connection be closed in the end.

mod cluster;
mod load;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use load::{Binary, FIXTURE, median, wait_for};

const IDLE_H2: usize = 2000;
const HALF_SENT_ADMIN: usize = 1000;
/// The defaults (`webhook.maxConnections`, `admin.maxConnections`).
const WEBHOOK_MAX: usize = 128;
const ADMIN_MAX: usize = 32;
const BOUND: Duration = Duration::from_millis(100);
const SAMPLES: usize = 7;

#[derive(Default)]
struct Counts {
    answered: AtomicUsize,
    failed: AtomicUsize,
    closed: AtomicUsize,
}

/// Reviews on new HTTP/1.1 and HTTP/2 connections, `SAMPLES` each: the medians, printed
/// with every sample.
async fn review_latencies(bin: &Binary, when: &str) -> (Duration, Duration) {
    let mut medians = Vec::new();
    for h2 in [false, true] {
        let mut samples = Vec::new();
        for _ in 0..SAMPLES {
            let (status, took) = bin.timed_review(h2).await;
            assert_eq!(status, 200, "{when}: a review was not answered 200");
            samples.push(took);
        }
        let m = median(&mut samples);
        eprintln!(
            "{when}: review on a new {} connection: median {m:?}, all {samples:?}",
            if h2 { "HTTP/2" } else { "HTTP/1.1" }
        );
        medians.push(m);
    }
    (medians[0], medians[1])
}

async fn admin_latency(bin: &Binary, when: &str) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        let (status, took) = bin.timed_admin_get("/healthz").await;
        assert_eq!(status, 200, "{when}: /healthz");
        samples.push(took);
    }
    let m = median(&mut samples);
    eprintln!("{when}: GET /healthz on a new connection: median {m:?}, all {samples:?}");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_and_half_sent_admin_requests_are_held_or_shed_and_reviews_stay_prompt()
 {
    load::raise_fd_limit((IDLE_H2 + HALF_SENT_ADMIN + 512) as u64);
    pullsecret_injector::tls::install_crypto_provider();
    let bin = Arc::new(Binary::start(
        "idleTimeout: 10s\n",
        "headerReadTimeout: 5s\n",
    ));
    let baseline_sockets = bin.sockets();
    let (rss0, _) = bin.memory_kib();
    eprintln!("started: {baseline_sockets} sockets, {rss0} KiB resident");
    let (h1, h2) = review_latencies(&bin, "idle server").await;
    assert!(h1 < BOUND && h2 < BOUND);

    // 2,000 HTTP/2 connections, 64 opening at a time; each sends one review, then idles
    // until the server closes it.
    let counts = Arc::new(Counts::default());
    let gate = Arc::new(Semaphore::new(64));
    let config = bin.client_config(b"h2");
    let uri = format!("https://127.0.0.1:{}/mutate", bin.webhook_port());
    let start = Instant::now();
    // Reviews on new connections while the flood is going on, one every 200 ms.
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let during = tokio::spawn({
        let (bin, flooding) = (bin.clone(), flooding.clone());
        async move {
            let mut samples = Vec::new();
            while flooding.load(Ordering::Relaxed) {
                let (status, took) = bin.timed_review(false).await;
                assert_eq!(status, 200, "a review during the flood");
                samples.push(took);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            samples
        }
    });
    let mut clients = Vec::new();
    for _ in 0..IDLE_H2 {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let tls = bin.tls(&config).await;
        let counts = counts.clone();
        let uri = uri.clone();
        clients.push(tokio::spawn(async move {
            let answered = async {
                let (mut send, conn) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(tls.ok()?),
                )
                .await
                .ok()?;
                let conn = tokio::spawn(conn);
                let req = http::Request::post(&uri)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(FIXTURE.as_bytes())))
                    .unwrap();
                let resp = send.send_request(req).await.ok()?;
                let ok = resp.status() == 200 && resp.into_body().collect().await.is_ok();
                Some((ok, send, conn))
            }
            .await;
            drop(permit);
            match answered {
                Some((true, send, conn)) => {
                    counts.answered.fetch_add(1, Ordering::Relaxed);
                    // Idle now: keep the connection until the server closes it.
                    let _ = conn.await;
                    drop(send);
                }
                _ => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            counts.closed.fetch_add(1, Ordering::Relaxed);
        }));
    }
    wait_for(
        "every HTTP/2 client to get its answer (or be shed)",
        Duration::from_secs(120),
        || {
            counts.answered.load(Ordering::Relaxed) + counts.failed.load(Ordering::Relaxed)
                == IDLE_H2
        },
    )
    .await;
    let opened_in = start.elapsed();
    flooding.store(false, Ordering::Relaxed);
    let mut samples = during.await.unwrap();
    let during_median = median(&mut samples);
    eprintln!(
        "while opening {IDLE_H2} HTTP/2 connections: {} reviews on new HTTP/1.1 connections, median {during_median:?}, max {:?}",
        samples.len(),
        samples.last().unwrap()
    );
    assert!(
        during_median < BOUND,
        "while idle HTTP/2 connections were opened, reviews took a median {during_median:?}"
    );
    // Shed connections are closed by the server: wait until at most the limit is open.
    wait_for(
        "the webhook to hold at most maxConnections",
        Duration::from_secs(30),
        || IDLE_H2 - counts.closed.load(Ordering::Relaxed) <= WEBHOOK_MAX,
    )
    .await;
    let held = IDLE_H2 - counts.closed.load(Ordering::Relaxed);
    let (rss, hwm) = bin.memory_kib();
    eprintln!(
        "{IDLE_H2} HTTP/2 connections opened in {opened_in:?}: {} answered, {} failed, {held} held, {} shed; server: {} sockets, {rss} KiB resident (peak {hwm} KiB)",
        counts.answered.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        counts.closed.load(Ordering::Relaxed),
        bin.sockets()
    );
    assert!(held <= WEBHOOK_MAX, "{held} held");
    assert!(bin.sockets() <= baseline_sockets + WEBHOOK_MAX + 8);
    assert_eq!(
        counts.failed.load(Ordering::Relaxed),
        0,
        "every client got its one answer"
    );
    let (h1, h2) = review_latencies(&bin, "2,000 idle HTTP/2 connections").await;
    assert!(
        h1 < BOUND && h2 < BOUND,
        "with idle HTTP/2 connections held or shed, a review took a median {h1:?} (HTTP/1.1) / {h2:?} (HTTP/2)"
    );
    admin_latency(&bin, "2,000 idle HTTP/2 connections").await;

    // 1,000 admin requests that stop in the middle of their headers.
    let admin_closed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut half_sent = Vec::new();
    for _ in 0..HALF_SENT_ADMIN {
        let mut s = TcpStream::connect(("127.0.0.1", bin.admin_port()))
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow")
            .await
            .unwrap();
        let closed = admin_closed.clone();
        half_sent.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let got = s.read(&mut buf).await;
            assert!(
                matches!(got, Ok(0) | Err(_)),
                "a half-sent request got an answer: {got:?}"
            );
            closed.fetch_add(1, Ordering::Relaxed);
        }));
    }
    wait_for(
        "the admin port to hold at most maxConnections",
        Duration::from_secs(30),
        || HALF_SENT_ADMIN - admin_closed.load(Ordering::Relaxed) <= ADMIN_MAX,
    )
    .await;
    let admin_held = HALF_SENT_ADMIN - admin_closed.load(Ordering::Relaxed);
    eprintln!(
        "{HALF_SENT_ADMIN} half-sent admin requests sent in {:?}: {admin_held} held, {} shed; server: {} sockets",
        start.elapsed(),
        admin_closed.load(Ordering::Relaxed),
        bin.sockets()
    );
    let (h1, h2) = review_latencies(&bin, "1,000 half-sent admin requests").await;
    assert!(
        h1 < BOUND && h2 < BOUND,
        "with half-sent admin requests held or shed, a review took a median {h1:?} (HTTP/1.1) / {h2:?} (HTTP/2)"
    );
    let probe = admin_latency(&bin, "1,000 half-sent admin requests").await;
    assert!(probe < BOUND, "/healthz took a median {probe:?}");

    // In the end the timeouts close everything that was held.
    wait_for(
        "the held half-sent admin requests to be closed (admin.headerReadTimeout 5s)",
        Duration::from_secs(20),
        || admin_closed.load(Ordering::Relaxed) == HALF_SENT_ADMIN,
    )
    .await;
    wait_for(
        "the held idle HTTP/2 connections to be closed (webhook.idleTimeout 10s)",
        Duration::from_secs(30),
        || counts.closed.load(Ordering::Relaxed) == IDLE_H2,
    )
    .await;
    wait_for(
        "the server's sockets back to the start",
        Duration::from_secs(10),
        || bin.sockets() <= baseline_sockets,
    )
    .await;
    for t in clients.into_iter().chain(half_sent) {
        t.await.unwrap();
    }
    let (rss, hwm) = bin.memory_kib();
    eprintln!(
        "after: {} sockets, {rss} KiB resident, peak {hwm} KiB",
        bin.sockets()
    );
}
