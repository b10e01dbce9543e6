//! Request bodies under a process-wide memory budget.
//!
//! Each body is bounded on its own ([`BodyLimits::max_body_bytes`], 413 above) and all bodies
//! being buffered at once share one budget ([`BodyLimits::max_buffered_bytes`]). A body is
//! charged as its bytes arrive, not by the length it declares: a client that sends headers
//! announcing 8 MiB and then stalls holds nothing, so only data actually received can fill
//! the budget. Every byte is charged twice, once for the buffer and once for what decoding
//! it may allocate (serde's error messages quote an offending string in full, and unescaped
//! strings are copied), so that the budget bounds memory, not only buffers.
//!
//! When the budget is full a request waits up to [`BodyLimits::wait`] for room, then gets 503
//! with `Retry-After`. For the API server that is the same outcome as any other webhook
//! failure with `failurePolicy: Ignore`: the Pod is admitted unchanged (fail-open), never
//! refused. Waiting briefly instead of answering at once lets a burst of large legitimate
//! reviews queue behind each other; a waiter that gives up releases what it held, so large
//! bodies that each hold part of the budget cannot block each other for longer than that.

use axum::body::Body;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

use super::BodyLimits;

/// Bytes charged per byte buffered: the buffer, and as much again for decoding it.
const CHARGE_FACTOR: usize = 2;

/// Largest buffer reserved up front from a declared `Content-Length`; larger bodies grow
/// the buffer as they arrive (the allocation is only address space until written, but a
/// lie about the length should not cost even that).
const PREALLOCATE_MAX: usize = 1024 * 1024;

/// The shared budget of buffered body bytes.
#[derive(Debug)]
pub(crate) struct Budget {
    capacity: usize,
    used: AtomicUsize,
    freed: Notify,
}

impl Budget {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Bytes charged now (tests and logs).
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|n| *n <= self.capacity)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            self.freed.notify_waiters();
        }
    }
}

/// What a body holds of the budget; given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Charge {
    fn new(budget: &Arc<Budget>) -> Self {
        Self {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    /// Take `bytes` more, waiting until `deadline` for room. False when there was none.
    async fn grow(&mut self, bytes: usize, deadline: tokio::time::Instant) -> bool {
        loop {
            let freed = self.budget.freed.notified();
            tokio::pin!(freed);
            // Register before checking, so that a release between the check and the wait
            // is not missed.
            freed.as_mut().enable();
            if self.budget.try_take(bytes) {
                self.bytes += bytes;
                return true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return false;
            }
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// Why a body was not read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Larger than the per-body limit (declared or received).
    TooLarge,
    /// No room in the budget within the wait.
    Busy,
    /// The client's stream failed.
    Read(String),
}

/// Read a whole body within `limits`, charging `budget` as it arrives.
pub(crate) async fn read(
    body: Body,
    declared: Option<u64>,
    limits: &BodyLimits,
    budget: &Arc<Budget>,
) -> Result<(Vec<u8>, Charge), BodyError> {
    let max = limits.max_body_bytes;
    let declared = match declared {
        Some(n) if n > max as u64 => return Err(BodyError::TooLarge),
        Some(n) => Some(n as usize),
        None => None,
    };
    let mut charge = Charge::new(budget);
    let deadline = tokio::time::Instant::now() + limits.wait;
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(PREALLOCATE_MAX));
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let len = buf.len() + data.len();
        if len > max || declared.is_some_and(|d| len > d) {
            return Err(BodyError::TooLarge);
        }
        let owed = len * CHARGE_FACTOR;
        if owed > charge.bytes && !charge.grow(owed - charge.bytes, deadline).await {
            return Err(BodyError::Busy);
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf, charge))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use std::convert::Infallible;
    use std::time::Duration;

    fn limits(max: usize, budget: usize, wait_ms: u64) -> BodyLimits {
        BodyLimits {
            max_body_bytes: max,
            max_buffered_bytes: budget,
            wait: Duration::from_millis(wait_ms),
        }
    }

    fn full(n: usize) -> Body {
        Body::from(vec![b'x'; n])
    }

    #[tokio::test]
    async fn a_body_is_charged_twice_its_size_until_dropped() {
        let budget = Budget::new(1000);
        let (buf, charge) = read(full(300), Some(300), &limits(500, 1000, 0), &budget)
            .await
            .unwrap();
        assert_eq!(buf.len(), 300);
        assert_eq!(budget.used(), 600);
        drop(charge);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn declared_or_received_length_over_the_limit_is_too_large() {
        let budget = Budget::new(10_000);
        let l = limits(100, 10_000, 0);
        assert!(matches!(
            read(full(10), Some(101), &l, &budget).await,
            Err(BodyError::TooLarge)
        ));
        assert!(matches!(
            read(full(101), None, &l, &budget).await,
            Err(BodyError::TooLarge)
        ));
        // More than declared is refused too.
        assert!(matches!(
            read(full(50), Some(40), &l, &budget).await,
            Err(BodyError::TooLarge)
        ));
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_full_budget_answers_busy_after_the_wait_and_holds_nothing() {
        let budget = Budget::new(1000);
        let l = limits(500, 1000, 50);
        let (_a, held) = read(full(400), None, &l, &budget).await.unwrap();
        assert_eq!(budget.used(), 800);
        let start = std::time::Instant::now();
        assert!(matches!(
            read(full(200), None, &l, &budget).await,
            Err(BodyError::Busy)
        ));
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(budget.used(), 800, "the refused body gave back its part");
        drop(held);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_waiting_body_proceeds_when_room_is_freed() {
        let budget = Budget::new(1000);
        let l = limits(500, 1000, 5_000);
        let (_a, held) = read(full(400), None, &l, &budget).await.unwrap();
        let waiter = tokio::spawn({
            let budget = budget.clone();
            let l = l.clone();
            async move {
                read(full(300), None, &l, &budget)
                    .await
                    .map(|(b, _)| b.len())
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "it waits while the budget is full");
        drop(held);
        assert_eq!(waiter.await.unwrap().unwrap(), 300);
    }

    #[tokio::test]
    async fn a_stalled_body_holds_only_what_it_sent() {
        let budget = Budget::new(100_000);
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let reader = tokio::spawn({
            let budget = budget.clone();
            async move {
                let l = limits(50_000, 100_000, 1000);
                read(Body::new(StreamBody::new(rx)), Some(40_000), &l, &budget)
                    .await
                    .map(|(b, _)| b.len())
            }
        });
        tx.try_send(Ok(Frame::data(Bytes::from(vec![1u8; 1000]))))
            .unwrap();
        let start = std::time::Instant::now();
        while budget.used() < 2000 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "first chunk charged"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(
            budget.used(),
            2000,
            "1000 bytes received of the 40,000 declared"
        );
        drop(tx);
        // The client went away: the body is shorter than declared, which is not our
        // business here (hyper reports a truncated body as an error); the charge is gone.
        let _ = reader.await.unwrap();
        assert_eq!(budget.used(), 0);
    }
}
