//! Micro-benchmarks of the admission handler: request bytes in, response bytes out
//! (`Admission::handle`, which also counts and times the review in the metrics, as in the
//! server), for each fixture of the load benchmark, and a size sweep up to 3 MiB that prints
//! ns/byte per size (the cost must be linear in the body size).
//!
//! `cargo bench --bench admission` runs criterion and then prints a summary table: per size,
//! the per-call latency distribution (p50/p99/p99.9 of individually timed calls) and ns/byte.
//! `cargo bench --bench admission -- --summary-only` prints only that table (seconds);
//! `-- --loop SIZE N` only calls the handler N times (for callgrind or perf).

#[path = "support/fixtures.rs"]
mod fixtures;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use pullsecret_injector::admission::Admission;
use pullsecret_injector::metrics::{Metrics, Outcome};

fn admission() -> Admission {
    Admission::new(
        fixtures::registries(),
        "pullsecret-injector.io/skip".into(),
        Metrics::new(),
    )
}

/// Sizes of the sweep: the 5.5 KB fixture (0 = as committed) .. 3 MiB.
const SWEEP: &[usize] = &[0, 10 << 10, 64 << 10, 256 << 10, 1 << 20, 2 << 20, 3 << 20];

fn bench_handle(c: &mut Criterion) {
    let a = admission();
    let mut group = c.benchmark_group("handle");
    for (label, body) in fixtures::load_fixtures() {
        let r = a.handle(&body).expect("fixture is a review");
        assert_eq!(
            r.outcome,
            Outcome::Injected,
            "{label}: the fixture gets a patch"
        );
        group.throughput(Throughput::Bytes(body.len() as u64));
        if body.len() > 512 * 1024 {
            group.sample_size(20);
        }
        group.bench_with_input(BenchmarkId::from_parameter(label), &body, |b, body| {
            b.iter(|| a.handle(black_box(body)).expect("answered"))
        });
    }
    group.finish();

    // The same with a log subscriber like the server's (text to a sink): the `injected`
    // decision is logged at info for every review.
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_ansi(false)
        .finish();
    let body = fixtures::review_of_size(0);
    tracing::subscriber::with_default(subscriber, || {
        c.bench_function("handle/5.5 KB + info log line", |b| {
            b.iter(|| a.handle(black_box(&body)).expect("answered"))
        });
    });
}

fn bench_sweep(c: &mut Criterion) {
    let a = admission();
    let mut group = c.benchmark_group("sweep");
    group.sample_size(10);
    for &size in SWEEP {
        let body = fixtures::review_of_size(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        let id = BenchmarkId::from_parameter(fixtures::human(body.len()));
        group.bench_with_input(id, &body, |b, body| {
            b.iter(|| a.handle(black_box(body)).expect("answered"))
        });
    }
    group.finish();
}

/// Time every call on its own for about `budget`, return sorted ns per call.
fn timed_calls(a: &Admission, body: &[u8], budget: Duration) -> Vec<u64> {
    // Warm up caches and the allocator.
    for _ in 0..20 {
        black_box(a.handle(black_box(body)).expect("answered"));
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 30 {
        let t = Instant::now();
        black_box(a.handle(black_box(body)).expect("answered"));
        samples.push(t.elapsed().as_nanos() as u64);
        if samples.len() >= 200_000 {
            break;
        }
    }
    samples.sort_unstable();
    samples
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

fn summary(budget: Duration) {
    let a = admission();
    println!();
    println!("| body | calls | p50 us | p99 us | p99.9 us | ns/byte (p50) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &size in SWEEP {
        let body = fixtures::review_of_size(size);
        let s = timed_calls(&a, &body, budget);
        println!(
            "| {} | {} | {} | {} | {} | {:.2} |",
            fixtures::human(body.len()),
            s.len(),
            us(pct(&s, 50.0)),
            us(pct(&s, 99.0)),
            us(pct(&s, 99.9)),
            pct(&s, 50.0) as f64 / body.len() as f64,
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs this in test mode: every benchmark once, no summary.
    let test_mode = args.iter().any(|a| a == "--test");
    // `--loop SIZE N`: N calls on a SIZE-byte body and nothing else, for profilers
    // (`valgrind --tool=callgrind`, `perf record`).
    if let Some(i) = args.iter().position(|a| a == "--loop") {
        let size: usize = args
            .get(i + 1)
            .and_then(|s| s.parse().ok())
            .expect("--loop SIZE N");
        let n: usize = args
            .get(i + 2)
            .and_then(|s| s.parse().ok())
            .expect("--loop SIZE N");
        let a = admission();
        let body = fixtures::review_of_size(size);
        for _ in 0..n {
            black_box(a.handle(black_box(&body)).expect("answered"));
        }
        return;
    }
    if args.iter().any(|a| a == "--summary-only") {
        summary(Duration::from_secs(2));
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_handle(&mut c);
    bench_sweep(&mut c);
    c.final_summary();
    if !test_mode {
        summary(Duration::from_secs(2));
    }
}
