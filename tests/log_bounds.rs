//! Log lines built from request content are bounded: one review carrying megabyte-long
//! strings where a list, a uid or a namespace belongs makes log lines of at most about two
//! kilobytes, not megabytes. (Alone in its test binary: it installs the global log subscriber.)

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use pullsecret_injector::admission::MAX_LOGGED_VALUE;
use pullsecret_injector::metrics::{Metrics, Outcome};
use serde_json::json;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_review_with_megabyte_strings_makes_log_lines_of_kilobytes() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let admission = common::admission::admission(&Metrics::new());
    let pod = |spec: serde_json::Value| {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u".repeat(1_000_000),
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "n".repeat(1_000_000),
            "operation": "CREATE",
            "object": {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"generateName": "g".repeat(1_000_000)}, "spec": spec}
        }})
    };
    // A 2 MB string where the list of containers belongs (serde quotes it in full), an
    // image reference of 1 MB that does not parse, and one that is injected.
    let cases = [
        (
            pod(json!({"containers": "y".repeat(2_000_000)})),
            Outcome::Invalid,
        ),
        (
            pod(json!({"containers": [{"name": "a", "image": "Z".repeat(1_000_000)}]})),
            Outcome::Unchanged,
        ),
        (
            pod(json!({"containers": [{"name": "a", "image": "cr.yandex/crp/app:1"}]})),
            Outcome::Injected,
        ),
    ];
    for (review, outcome) in cases {
        let r = admission
            .handle(&serde_json::to_vec(&review).unwrap())
            .unwrap();
        assert_eq!(r.outcome, outcome);
    }
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for want in [
        "object is not a readable Pod",
        "image references that do not parse",
        "outcome=\"injected\"",
        "… (1000000 bytes)",
    ] {
        assert!(
            logs.contains(want),
            "{want:?} not logged: {}",
            &logs[..logs.len().min(2000)]
        );
    }
    let longest = logs.lines().map(str::len).max().unwrap_or(0);
    eprintln!(
        "{} log lines, the longest {longest} bytes",
        logs.lines().count()
    );
    for line in logs.lines() {
        // A handful of clipped values (the image list gets four times the room) and the
        // message: kilobytes, not megabytes.
        assert!(
            line.len() < 10 * MAX_LOGGED_VALUE,
            "{} bytes: {}",
            line.len(),
            &line[..500]
        );
    }
}
