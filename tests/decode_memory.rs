//! How much memory decoding a review takes beyond its body, for the bodies that make it
//! take the most. The webhook charges every body `server::decode_charge` against its
//! budget of buffered bodies (`src/server/body.rs`): `DECODE_OVERHEAD` times its length and
//! `QUOTE_OVERHEAD` times its longest string. That bound must hold for any body.
//!
//! Each shape is decoded in a child process whose allocator returns every block of 64 KiB
//! or more to the system when freed (`MALLOC_MMAP_THRESHOLD_`), so that resident memory
//! follows live memory: the peak (VmHWM, reset through /proc/self/clear_refs just before)
//! minus the resident memory before decoding is what decoding took. Figures are printed.

mod common;

use std::process::Command;

use pullsecret_injector::metrics::Metrics;
use pullsecret_injector::server::decode_charge;

const BODY: usize = 4 * 1024 * 1024;
const TEST: &str = "decoding_any_review_takes_at_most_the_charged_overhead";

fn review(object: &str) -> String {
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u1","kind":{{"group":"","version":"v1","kind":"Pod"}},"resource":{{"group":"","version":"v1","resource":"pods"}},"namespace":"team-a","operation":"CREATE","object":{object}}}}}"#
    )
}

/// `unit` repeated to fill about `BODY` bytes, joined by `sep`.
fn fill(unit: impl Fn(usize) -> String, sep: &str, room: usize) -> String {
    let mut out = String::with_capacity(room + 64);
    let mut i = 0;
    while out.len() < room {
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(&unit(i));
        i += 1;
    }
    out
}

/// The shapes: each a body of about `BODY` bytes.
fn body(shape: &str) -> String {
    let room = BODY - 400;
    let pod = |spec: String| {
        review(&format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p"}},"spec":{spec}}}"#
        ))
    };
    match shape {
        // A string of escapes where the containers list belongs: the error quotes it.
        "escaped-control-string" => pod(format!(
            r#"{{"containers":"{}"}}"#,
            "\\u0001".repeat(room / 6)
        )),
        "escaped-quote-string" => pod(format!(r#"{{"containers":"{}"}}"#, "\\\"".repeat(room / 2))),
        // Characters that take 2 bytes in UTF-8 and 7 in Rust's escaped form (combining
        // marks), and 2 for 6 (soft hyphens), where the list belongs.
        "combining-marks-string" => pod(format!(
            r#"{{"containers":"{}"}}"#,
            "\u{301}".repeat(room / 2)
        )),
        "soft-hyphens-string" => pod(format!(
            r#"{{"containers":"{}"}}"#,
            "\u{ad}".repeat(room / 2)
        )),
        "combining-marks-request" => format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":"{}"}}"#,
            "\u{301}".repeat(room / 2)
        ),
        "plain-string" => pod(format!(r#"{{"containers":"{}"}}"#, "x".repeat(room))),
        // Where the whole request belongs.
        "request-string" => format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":"{}"}}"#,
            "\\u0001".repeat(room / 6)
        ),
        // Many empty entries: each decodes to a struct far larger than its 3 bytes.
        "empty-containers" => pod(format!(
            r#"{{"containers":[{}]}}"#,
            fill(|_| "{}".into(), ",", room)
        )),
        "empty-volumes" => pod(format!(
            r#"{{"volumes":[{}]}}"#,
            fill(|_| "{}".into(), ",", room)
        )),
        "null-pull-secrets" => pod(format!(
            r#"{{"imagePullSecrets":[{}]}}"#,
            fill(|_| "{}".into(), ",", room)
        )),
        "many-annotations" => review(&format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p","annotations":{{{}}}}},"spec":{{"containers":[]}}}}"#,
            fill(|i| format!(r#""{i:x}":"""#), ",", room)
        )),
        // Images that do not parse are copied into the diagnostics; escaped ones are
        // unescaped into new strings.
        "unparsable-images" => pod(format!(
            r#"{{"containers":[{}]}}"#,
            fill(|_| r#"{"image":"NOT A REFERENCE"}"#.into(), ",", room)
        )),
        "escaped-images" => pod(format!(
            r#"{{"containers":[{}]}}"#,
            fill(
                |_| r#"{"image":"\u0063r.yandex/crp/app:1"}"#.into(),
                ",",
                room
            )
        )),
        "matching-images" => pod(format!(
            r#"{{"containers":[{}]}}"#,
            fill(
                |i| format!(r#"{{"image":"cr.yandex/crp/app{i}:1"}}"#),
                ",",
                room
            )
        )),
        // Just under the bound on entries (10,000), each entry as large as it can be.
        "unparsable-images-at-the-bound" => pod(format!(
            r#"{{"containers":[{}]}}"#,
            fill(
                |_| format!(
                    r#"{{"image":"NOT A REFERENCE {}"}}"#,
                    "x".repeat(room / 9000 - 40)
                ),
                ",",
                room
            )
        )),
        "escaped-images-at-the-bound" => pod(format!(
            r#"{{"containers":[{}]}}"#,
            fill(
                |_| format!(
                    r#"{{"image":"{}"}}"#,
                    r"\u0063".repeat((room / 9000 - 16) / 6)
                ),
                ",",
                room
            )
        )),
        "escaped-annotations-at-the-bound" => review(&format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p","annotations":{{{}}}}},"spec":{{"containers":[]}}}}"#,
            fill(
                |i| format!(r#""{i:x}":"{}""#, r"\u0063".repeat((room / 9000 - 16) / 6)),
                ",",
                room
            )
        )),
        // Deep nesting in a field nobody reads.
        "deep-nesting" => pod(format!(
            r#"{{"x":{}{}}}"#,
            "[".repeat(room / 2),
            "]".repeat(room / 2)
        )),
        other => panic!("unknown shape {other}"),
    }
}

const SHAPES: &[&str] = &[
    "escaped-control-string",
    "escaped-quote-string",
    "plain-string",
    "combining-marks-string",
    "soft-hyphens-string",
    "combining-marks-request",
    "request-string",
    "empty-containers",
    "empty-volumes",
    "null-pull-secrets",
    "many-annotations",
    "unparsable-images",
    "escaped-images",
    "matching-images",
    "unparsable-images-at-the-bound",
    "escaped-images-at-the-bound",
    "escaped-annotations-at-the-bound",
    "deep-nesting",
];

fn status_kib(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// In the child: decode one shape, print `decoded <shape> <body bytes> <peak KiB over>`.
fn child(shape: &str) {
    let admission = common::admission::admission(&Metrics::new());
    // Warm up (metrics, lazy statics) on a small review.
    let _ = admission.handle(review(r#"{"spec":{}}"#).as_bytes());
    let body = body(shape);
    let before = status_kib("VmRSS:");
    std::fs::write("/proc/self/clear_refs", "5")
        .expect("resetting VmHWM through /proc/self/clear_refs");
    let answer = admission.handle(body.as_bytes());
    let peak = status_kib("VmHWM:");
    drop(answer);
    println!(
        "decoded {shape} {} {} {}",
        body.len(),
        peak.saturating_sub(before),
        decode_charge(body.as_bytes())
    );
}

#[test]
fn decoding_any_review_takes_at_most_the_charged_overhead() {
    if let Ok(shape) = std::env::var("PSI_DECODE_SHAPE") {
        child(&shape);
        return;
    }
    let mut worst = 0.0f64;
    let mut worst_of_body = 0.0f64;
    for shape in SHAPES {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env("PSI_DECODE_SHAPE", shape)
            .env("MALLOC_MMAP_THRESHOLD_", "65536")
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{shape}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.find("decoded ").map(|i| &l[i..]))
            .unwrap_or_else(|| panic!("{shape}: no figure in {stdout}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        let (len, kib, charged): (usize, usize, usize) = (
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
        );
        let of_body = (kib * 1024) as f64 / len as f64;
        let of_charge = (kib * 1024) as f64 / charged as f64;
        worst = worst.max(of_charge);
        worst_of_body = worst_of_body.max(of_body);
        eprintln!(
            "{shape:>32}: body {len} bytes, decoding took {kib} KiB = {of_body:.2} x the body = {:.0} % of the {} KiB charged",
            of_charge * 100.0,
            charged / 1024
        );
        assert!(
            kib * 1024 <= charged,
            "{shape}: decoding took {kib} KiB, more than the {} KiB charged",
            charged / 1024
        );
    }
    eprintln!(
        "worst: {worst_of_body:.2} x the body, {:.0} % of the charge",
        worst * 100.0
    );
}
