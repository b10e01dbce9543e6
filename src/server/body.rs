//! Request bodies under a process-wide memory budget.
//!
//! Each body is bounded on its own ([`BodyLimits::max_body_bytes`], 413 above) and all bodies
//! being buffered and decoded at once share one budget ([`BodyLimits::max_buffered_bytes`]).
//! A body is charged for what it has actually sent, not for the length it declares: its
//! buffer grows by doubling from what arrived (never past the declared length), and the
//! charge is that buffer's capacity times `1 +` [`DECODE_OVERHEAD`](super::DECODE_OVERHEAD):
//! the buffer, and what decoding it may take on top. Once it has arrived, its longest
//! string is charged [`QUOTE_OVERHEAD`](super::QUOTE_OVERHEAD) times (what an error quoting
//! it may take); a body for which that would exceed the whole budget is not decoded (see
//! `Admission::handle_undecoded`). Both bounds are checked against measurements of the
//! worst bodies in tests/decode_memory.rs.
//! So a client that announces 8 MiB and sends a byte holds almost nothing, and the budget
//! bounds memory, not only buffers.
//!
//! When the budget is full, a request first cuts the body that has held part of it the
//! longest without receiving anything for [`STALLED`] (that one gets 408): clients that
//! send most of a body and stop cannot keep the budget from those that send theirs. When
//! every holder is making progress, it waits up to [`BodyLimits::wait`] for room (each time
//! its buffer must grow), then gets
//! 503 with `Retry-After`. Bodies that already hold part of the budget and need more would
//! wait for each other forever (each holding what the others need): of those, only the one
//! holding the most waits, the others give up at once. For the API server 408 and 503 are
//! what any other webhook failure is with `failurePolicy: Ignore`: the Pod is admitted
//! unchanged (fail-open), never refused. Waiting briefly instead of answering at once lets
//! a burst of reviews queue behind a large one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::BodyLimits;

/// Bytes charged per byte of buffer capacity: the buffer, and what decoding may take.
pub(crate) const CHARGE_FACTOR: usize = 1 + super::DECODE_OVERHEAD;

/// Smallest allocation for a body: a whole typical review (5-50 KB) arrives in one or two
/// chunks, so it is allocated once or twice.
const MIN_ALLOCATION: usize = 4 * 1024;

/// A body that received nothing for this long may be cut (408) to make room for others
/// when the budget is full. The API server writes a body in one go, right after its
/// headers.
pub(crate) const STALLED: Duration = Duration::from_secs(1);

/// The shared budget of buffered body bytes.
#[derive(Debug)]
pub(crate) struct Budget {
    capacity: usize,
    used: AtomicUsize,
    freed: Notify,
    epoch: Instant,
    next_id: AtomicU64,
    /// Bodies holding part of the budget.
    holders: Mutex<HashMap<u64, Arc<Holder>>>,
}

/// A body holding part of the budget, as the budget sees it.
#[derive(Debug)]
struct Holder {
    /// Milliseconds (budget clock) when it last received data.
    progress: AtomicU64,
    /// What it holds.
    charged: AtomicUsize,
    /// Waiting for more room (not reading: it has not stalled, we stopped it).
    waiting: AtomicBool,
    /// Asked to give up its part.
    cut: AtomicBool,
    wake: Notify,
}

impl Budget {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            holders: Mutex::new(HashMap::new()),
        })
    }

    /// Bytes charged now (tests and logs).
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Holder>>> {
        self.holders.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Ask the body stalled the longest (other than `me`) to give up its part. False when
    /// no holder has been stalled for [`STALLED`].
    fn cut_stalled(&self, me: u64) -> bool {
        let Some(limit) = self.now_ms().checked_sub(STALLED.as_millis() as u64) else {
            return false; // younger than STALLED: nobody can have stalled that long
        };
        let holders = self.holders();
        let stalest = holders
            .iter()
            .filter(|(id, h)| {
                **id != me && !h.cut.load(Ordering::Acquire) && !h.waiting.load(Ordering::Acquire)
            })
            .map(|(_, h)| (h.progress.load(Ordering::Acquire), h))
            .filter(|(at, _)| *at <= limit)
            .min_by_key(|(at, _)| *at);
        match stalest {
            Some((_, h)) => {
                h.cut.store(true, Ordering::Release);
                h.wake.notify_one();
                true
            }
            None => false,
        }
    }

    /// Whether another body that holds more than `me` (ties: the older) waits for room.
    fn bigger_waiter(&self, me: u64, mine: usize) -> bool {
        self.holders().iter().any(|(id, h)| {
            *id != me
                && h.waiting.load(Ordering::Acquire)
                && (h.charged.load(Ordering::Acquire), std::cmp::Reverse(*id))
                    > (mine, std::cmp::Reverse(me))
        })
    }
}

/// What a body holds of the budget; given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
    id: u64,
    holder: Arc<Holder>,
    registered: bool,
}

impl Charge {
    fn new(budget: &Arc<Budget>) -> Self {
        Self {
            budget: budget.clone(),
            bytes: 0,
            id: budget.next_id.fetch_add(1, Ordering::Relaxed),
            holder: Arc::new(Holder {
                progress: AtomicU64::new(budget.now_ms()),
                charged: AtomicUsize::new(0),
                waiting: AtomicBool::new(false),
                cut: AtomicBool::new(false),
                wake: Notify::new(),
            }),
            registered: false,
        }
    }

    /// Data arrived.
    fn progress(&self) {
        self.holder
            .progress
            .store(self.budget.now_ms(), Ordering::Release);
    }

    /// Resolves when the budget asks this body to give up its part.
    async fn cut(&self) {
        loop {
            let woken = self.holder.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.holder.cut.load(Ordering::Acquire) {
                return;
            }
            woken.await;
        }
    }

    /// Take `bytes` more, cutting stalled bodies or waiting up to `wait` for room. False
    /// when there was none.
    async fn grow(&mut self, bytes: usize, wait: Duration) -> bool {
        let got = self.take(bytes, Instant::now() + wait).await;
        self.holder.waiting.store(false, Ordering::Release);
        got
    }

    async fn take(&mut self, bytes: usize, deadline: Instant) -> bool {
        loop {
            let freed = self.budget.freed.notified();
            tokio::pin!(freed);
            // Register before checking, so that a release between the check and the wait
            // is not missed.
            freed.as_mut().enable();
            if self.budget.try_take(bytes) {
                self.bytes += bytes;
                self.holder.charged.store(self.bytes, Ordering::Release);
                if !self.registered {
                    self.registered = true;
                    self.budget.holders().insert(self.id, self.holder.clone());
                }
                return true;
            }
            let cut = self.budget.cut_stalled(self.id);
            if self.registered {
                // Holding part and waiting for more: only the biggest such body waits.
                self.holder.waiting.store(true, Ordering::Release);
                if !cut && self.budget.bigger_waiter(self.id, self.bytes) {
                    return false;
                }
            }
            // After a cut, the room comes when that body lets go (its task wakes and
            // drops its charge); otherwise when anyone finishes, or a holder stalls.
            let wait = if cut {
                deadline
            } else {
                deadline.min(Instant::now() + STALLED / 4)
            };
            if tokio::time::timeout_at(wait, freed).await.is_err() && Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// The whole body arrived: it keeps its part while it is decoded, but is no longer a
    /// body that could stall.
    fn received(&mut self) {
        if std::mem::take(&mut self.registered) {
            self.budget.holders().remove(&self.id);
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.received();
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
    /// It stalled while the budget was full, and was cut to make room.
    Stalled,
    /// The client's stream failed.
    Read(String),
}

/// A body that arrived whole, with its part of the budget.
#[derive(Debug)]
pub(crate) struct Received {
    pub bytes: Vec<u8>,
    pub charge: Charge,
    /// Its longest string, when decoding it could take more than the whole budget: it must
    /// not be decoded.
    pub too_costly: Option<usize>,
}

/// Read a whole body within `limits`, charging `budget` as it arrives.
pub(crate) async fn read(
    body: Body,
    declared: Option<u64>,
    limits: &BodyLimits,
    budget: &Arc<Budget>,
) -> Result<Received, BodyError> {
    let max = limits.max_body_bytes;
    let declared = match declared {
        Some(n) if n > max as u64 => return Err(BodyError::TooLarge),
        Some(n) => Some(n as usize),
        None => None,
    };
    let ceiling = declared.unwrap_or(max);
    let mut charge = Charge::new(budget);
    let mut buf: Vec<u8> = Vec::new();
    let mut body = body;
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = charge.cut() => return Err(BodyError::Stalled),
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        charge.progress();
        let len = buf.len() + data.len();
        if len > ceiling {
            return Err(BodyError::TooLarge);
        }
        if len > buf.capacity() {
            // Double what is there (the declared length when that is close), never past
            // the declared length or the limit.
            let capacity = (buf.capacity() * 2)
                .max(MIN_ALLOCATION)
                .max(len)
                .min(ceiling);
            let capacity = if declared.is_some_and(|d| d <= capacity * 2) {
                ceiling
            } else {
                capacity
            };
            let owed = capacity * CHARGE_FACTOR;
            if owed > charge.bytes && !charge.grow(owed - charge.bytes, limits.wait).await {
                return Err(BodyError::Busy);
            }
            buf.reserve_exact(capacity - buf.len());
        }
        buf.extend_from_slice(&data);
    }
    let longest = longest_string(&buf);
    let quote = super::QUOTE_OVERHEAD * longest;
    let too_costly = charge.bytes + quote > budget.capacity;
    if !too_costly && quote > 0 && !charge.grow(quote, limits.wait).await {
        return Err(BodyError::Busy);
    }
    charge.received();
    Ok(Received {
        bytes: buf,
        charge,
        too_costly: too_costly.then_some(longest),
    })
}

/// Length of the longest string token in JSON text, between its quotes, escapes included.
/// Not a validator: in malformed text it measures from a quote to the next unescaped one
/// (or the end), which bounds what a parser could quote from there.
pub(crate) fn longest_string(json: &[u8]) -> usize {
    let mut longest = 0;
    let mut at = 0;
    while let Some(open) = json.get(at..).and_then(|rest| memchr::memchr(b'"', rest)) {
        let start = at + open + 1;
        let mut i = start;
        loop {
            match json
                .get(i..)
                .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
            {
                Some(k) if json[i + k] == b'\\' => i += k + 2,
                Some(k) => {
                    longest = longest.max(i + k - start);
                    at = i + k + 1;
                    break;
                }
                None => return longest.max(json.len().saturating_sub(start)),
            }
        }
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use std::convert::Infallible;
    use std::time::Duration;

    #[test]
    fn longest_string_counts_escapes_and_skips_escaped_quotes() {
        for (json, want) in [
            (&br#"{}"#[..], 0),
            (br#"{"a":"bcd"}"#, 3),
            (br#"{"a":"b\"c\\","long key":1}"#, 8),
            (br#"["\u0001\u0001"]"#, 12),
            (br#"{"unterminated": "abc"#, 12),
            (br#"["abcdefg"#, 7),
            (br#"{"a":"x\"#, 2),
            (b"\"", 0),
        ] {
            assert_eq!(
                longest_string(json),
                want,
                "{}",
                String::from_utf8_lossy(json)
            );
        }
    }

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
    async fn a_body_is_charged_for_its_buffer_and_decoding_until_dropped() {
        let budget = Budget::new(10_000);
        let Received {
            bytes: buf, charge, ..
        } = read(full(300), Some(300), &limits(500, 10_000, 0), &budget)
            .await
            .unwrap();
        assert_eq!(buf.len(), 300);
        assert_eq!(buf.capacity(), 300, "the declared length is allocated once");
        assert_eq!(budget.used(), 300 * CHARGE_FACTOR);
        drop(charge);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_charged_for_its_buffer_as_it_grows() {
        let budget = Budget::new(100 << 20);
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..10)
            .map(|_| Ok(Frame::data(Bytes::from(vec![7u8; 100_000]))))
            .collect();
        let body = Body::new(StreamBody::new(futures::stream::iter(chunks)));
        let Received {
            bytes: buf, charge, ..
        } = read(body, None, &limits(8 << 20, 100 << 20, 0), &budget)
            .await
            .unwrap();
        assert_eq!(buf.len(), 1_000_000);
        assert_eq!(budget.used(), CHARGE_FACTOR * buf.capacity());
        assert!(buf.capacity() < 2 * buf.len(), "{}", buf.capacity());
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
        let budget = Budget::new(500 * CHARGE_FACTOR);
        let l = limits(500, 500 * CHARGE_FACTOR, 50);
        let Received { charge: held, .. } = read(full(400), Some(400), &l, &budget).await.unwrap();
        assert_eq!(budget.used(), 400 * CHARGE_FACTOR);
        let start = std::time::Instant::now();
        assert!(matches!(
            read(full(200), None, &l, &budget).await,
            Err(BodyError::Busy)
        ));
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            budget.used(),
            400 * CHARGE_FACTOR,
            "the refused body gave back its part"
        );
        drop(held);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_waiting_body_proceeds_when_room_is_freed() {
        let budget = Budget::new(500 * CHARGE_FACTOR);
        let l = limits(500, 500 * CHARGE_FACTOR, 5_000);
        let Received { charge: held, .. } = read(full(400), Some(400), &l, &budget).await.unwrap();
        let waiter = tokio::spawn({
            let budget = budget.clone();
            let l = l.clone();
            async move {
                read(full(300), None, &l, &budget)
                    .await
                    .map(|r| r.bytes.len())
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "it waits while the budget is full");
        drop(held);
        assert_eq!(waiter.await.unwrap().unwrap(), 300);
    }

    #[tokio::test]
    async fn a_stalled_body_holds_only_what_it_sent() {
        let budget = Budget::new(50_000 * CHARGE_FACTOR);
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let reader = tokio::spawn({
            let budget = budget.clone();
            async move {
                let l = limits(50_000, 50_000 * CHARGE_FACTOR, 1000);
                read(Body::new(StreamBody::new(rx)), Some(40_000), &l, &budget)
                    .await
                    .map(|r| r.bytes.len())
            }
        });
        tx.try_send(Ok(Frame::data(Bytes::from(vec![1u8; 1000]))))
            .unwrap();
        let start = std::time::Instant::now();
        while budget.used() == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "first chunk charged"
            );
            tokio::task::yield_now().await;
        }
        // 1000 bytes of the 40,000 declared arrived: the smallest allocation (4 KiB) is
        // charged, not the declared length, nor the 50,000 the limit would allow.
        assert_eq!(budget.used(), CHARGE_FACTOR * MIN_ALLOCATION);
        drop(tx);
        // The client went away: the body is shorter than declared, which is not our
        // business here (hyper reports a truncated body as an error); the charge is gone.
        let _ = reader.await.unwrap();
        assert_eq!(budget.used(), 0);
    }

    /// A body that sends `first` bytes, then holds its stream open: sending `trickle`
    /// bytes every 200 ms when `trickle` > 0. Dropping the sender ends it.
    fn stalling(first: usize, trickle: usize) -> (Body, tokio::task::JoinHandle<()>) {
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let feeder = tokio::spawn(async move {
            use futures::SinkExt;
            let _ = tx
                .send(Ok(Frame::data(Bytes::from(vec![1u8; first]))))
                .await;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if trickle > 0
                    && tx
                        .send(Ok(Frame::data(Bytes::from(vec![2u8; trickle]))))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
        (Body::new(StreamBody::new(rx)), feeder)
    }

    /// A budget with room for one small body and a half, holding the part of a body that
    /// declares 40,000 bytes and then sends as [`stalling`] says; its reading task.
    async fn holder(
        wait_ms: u64,
        trickle: usize,
    ) -> (
        Arc<Budget>,
        BodyLimits,
        tokio::task::JoinHandle<Result<usize, BodyError>>,
        tokio::task::JoinHandle<()>,
    ) {
        let room = CHARGE_FACTOR * MIN_ALLOCATION;
        let budget = Budget::new(room + room / 2);
        let l = limits(50_000, room + room / 2, wait_ms);
        let (body, feeder) = stalling(1000, trickle);
        let reading = tokio::spawn({
            let (budget, l) = (budget.clone(), l.clone());
            async move {
                read(body, Some(40_000), &l, &budget)
                    .await
                    .map(|r| r.bytes.len())
            }
        });
        while budget.used() == 0 {
            tokio::task::yield_now().await;
        }
        (budget, l, reading, feeder)
    }

    #[tokio::test]
    async fn a_stalled_body_is_cut_when_another_needs_the_room() {
        let (budget, l, stalled, feeder) = holder(5_000, 0).await;
        let start = std::time::Instant::now();
        let Received { bytes: buf, .. } = read(full(4000), Some(4000), &l, &budget).await.unwrap();
        assert_eq!(buf.len(), 4000);
        assert!(
            start.elapsed() >= STALLED - Duration::from_millis(50),
            "{:?}",
            start.elapsed()
        );
        assert!(matches!(stalled.await.unwrap(), Err(BodyError::Stalled)));
        feeder.abort();
    }

    #[tokio::test]
    async fn a_body_still_receiving_is_not_cut() {
        // 1000 bytes, then 10 bytes every 200 ms: slow, but never stalled for a second.
        let (budget, l, slow, feeder) = holder(1_500, 10).await;
        assert!(matches!(
            read(full(4000), Some(4000), &l, &budget).await,
            Err(BodyError::Busy)
        ));
        assert!(!slow.is_finished(), "the slow body keeps going");
        feeder.abort();
        let _ = slow.await;
    }
}
