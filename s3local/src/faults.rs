//! [`Faults`]: failures injected into the endpoint's answers, switched on and off while a
//! client runs, so reliability tests can show what the client does when S3 misbehaves.
//!
//! What can go wrong ([`Fault`]):
//! * an error status instead of the answer: `500 InternalError`, `503 SlowDown`, or a
//!   `412 PreconditionFailed` although the `If-Match` ETag is current;
//! * a GetObject body that breaks off with an error after some bytes (the server aborts the
//!   connection), that ends cleanly but early while `Content-Length` promised the whole range,
//!   that stalls (some bytes, then nothing for a while, then the rest), whose `Content-Length`
//!   says fewer or more bytes than the body carries, that carries bytes beyond the range, or
//!   that has one byte flipped while every header (length, ETag, checksums) stays true;
//! * listings cut into pages of a few keys ([`Faults::set_list_page_size`]), as a bucket with
//!   many keys gives, to exercise continuation tokens.
//!
//! A test holds the server's `Arc<Faults>` ([`crate::LocalS3::faults`]) and installs [`Rule`]s;
//! each says which operation, which fault and when ([`Trigger`]: always, the next N requests,
//! or a rate). A request asks the rules of its operation in the order they were added and the
//! first that fires decides its fate. Rates draw from a seeded SplitMix64 sequence, so the same
//! seed and the same order of requests inject the same faults. Every fault injected is counted
//! ([`FaultStats`]) so a test can assert that what it meant to provoke really happened.
//!
//! Faults are decided once the real answer is known to be a success: a request that fails for
//! a real reason (no such key or bucket, a real ETag mismatch, a bad range) fails for that
//! reason and draws no fault.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use s3s::stream::{ByteStream, RemainingLength};
use s3s::{s3_error, S3Error, S3ErrorCode, StdError};
use tokio::time::Sleep;

use crate::models::prng::Rng;

/// The seed of a new [`Faults`] (change it with [`Faults::set_seed`]).
pub const DEFAULT_SEED: u64 = 0x5EED_FA17;

/// The operations faults can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// GetObject: every [`Fault`].
    GetObject,
    /// HeadObject: the status faults only ([`Fault::is_status`]).
    HeadObject,
    /// ListObjectsV2: the status faults only.
    ListObjectsV2,
}

/// One way an answer goes wrong. Byte positions count from the start of the body (the start
/// of the requested range); a cut at or past the end of the body moves to its last byte, so
/// a body fault always costs the client at least one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `500 InternalError`.
    InternalError,
    /// `503 SlowDown`: S3's throttling answer.
    SlowDown,
    /// `412 PreconditionFailed`, as if the object had changed (it has not).
    PreconditionFailed,
    /// The body breaks off with an error after `after` bytes: the server aborts the connection
    /// mid-body, which the client sees as a reset connection.
    Reset {
        /// Bytes sent before the break.
        after: u64,
    },
    /// The body ends cleanly after `after` bytes, while `Content-Length` promised the range.
    Truncate {
        /// Bytes sent before the end.
        after: u64,
    },
    /// The body sends `after` bytes, then nothing for `pause`, then the rest.
    Stall {
        /// Bytes sent before the pause.
        after: u64,
        /// How long nothing is sent.
        pause: Duration,
    },
    /// `Content-Length` is the body's length plus `delta`; the body is the requested range.
    /// Negative: the client reads a well-formed response `-delta` bytes short of its range.
    /// Positive: the body ends `delta` bytes before what the header promised.
    ContentLength {
        /// Header minus body length, in bytes.
        delta: i64,
    },
    /// The body carries `extra` bytes after the range, and `Content-Length` counts them.
    ExtraBytes {
        /// Bytes beyond the range.
        extra: u64,
    },
    /// The byte at `at` of the body is inverted; its length and every header stay as they
    /// are, so only a checksum over the content (S3's full-object checksum) can tell.
    FlipByte {
        /// The position of the flipped byte in the body.
        at: u64,
    },
}

impl Fault {
    /// Whether this fault replaces the answer with an error status (and so applies to every
    /// operation), rather than corrupting a GetObject body.
    pub fn is_status(&self) -> bool {
        matches!(
            self,
            Fault::InternalError | Fault::SlowDown | Fault::PreconditionFailed
        )
    }

    /// The error answered instead of the response, for a status fault.
    pub(crate) fn to_error(self) -> Option<S3Error> {
        match self {
            Fault::InternalError => Some(S3Error::with_message(
                S3ErrorCode::InternalError,
                "We encountered an internal error. Please try again. (injected fault)",
            )),
            Fault::SlowDown => Some(s3_error!(
                SlowDown,
                "Please reduce your request rate. (injected fault)"
            )),
            Fault::PreconditionFailed => Some(s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold (injected fault)"
            )),
            _ => None,
        }
    }

    /// The `Content-Length` to announce for a body of `len` bytes.
    pub(crate) fn content_length(&self, len: u64) -> u64 {
        match *self {
            Fault::ContentLength { delta } => len.saturating_add_signed(delta),
            Fault::ExtraBytes { extra } => len.saturating_add(extra),
            _ => len,
        }
    }

    /// This fault's counter, below [`FAULT_KINDS`].
    fn slot(&self) -> usize {
        match self {
            Fault::InternalError => 0,
            Fault::SlowDown => 1,
            Fault::PreconditionFailed => 2,
            Fault::Reset { .. } => 3,
            Fault::Truncate { .. } => 4,
            Fault::Stall { .. } => 5,
            Fault::ContentLength { .. } => 6,
            Fault::ExtraBytes { .. } => 7,
            Fault::FlipByte { .. } => 8,
        }
    }
}

/// When a [`Rule`] fires.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Trigger {
    /// On every request.
    Always,
    /// On the next `n` requests, then never.
    Next(u64),
    /// On each request with this probability (0.0–1.0), drawn from the seeded sequence.
    Rate(f64),
}

/// One fault for one operation, and when to inject it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rule {
    /// The operation it applies to.
    pub op: Op,
    /// What goes wrong.
    pub fault: Fault,
    /// When.
    pub trigger: Trigger,
}

impl Rule {
    /// `fault` on every `op` request (narrow it with [`Rule::next`] or [`Rule::rate`]). A body
    /// fault on an operation other than GetObject never fires.
    pub fn new(op: Op, fault: Fault) -> Rule {
        Rule {
            op,
            fault,
            trigger: Trigger::Always,
        }
    }

    /// `fault` on every GetObject.
    pub fn get(fault: Fault) -> Rule {
        Rule::new(Op::GetObject, fault)
    }

    /// The same rule, for the next `n` requests only.
    pub fn next(self, n: u64) -> Rule {
        Rule {
            trigger: Trigger::Next(n),
            ..self
        }
    }

    /// The same rule, on each request with probability `p`.
    pub fn rate(self, p: f64) -> Rule {
        Rule {
            trigger: Trigger::Rate(p),
            ..self
        }
    }

    fn applies_to(&self, op: Op) -> bool {
        self.op == op && (op == Op::GetObject || self.fault.is_status())
    }
}

/// How many faults of each kind were injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// `500 InternalError` answers.
    pub internal_error: u64,
    /// `503 SlowDown` answers.
    pub slow_down: u64,
    /// Spurious `412 PreconditionFailed` answers.
    pub precondition_failed: u64,
    /// Bodies broken off with an error.
    pub reset: u64,
    /// Bodies ended early.
    pub truncated: u64,
    /// Bodies that stalled.
    pub stalled: u64,
    /// Responses whose `Content-Length` disagreed with their body.
    pub content_length: u64,
    /// Bodies with bytes beyond the range.
    pub extra_bytes: u64,
    /// Bodies with a flipped byte.
    pub flipped: u64,
    /// Listing pages cut short by [`Faults::set_list_page_size`] (not counted in `total`).
    pub short_pages: u64,
}

impl FaultStats {
    /// Every fault injected (short listing pages are legal answers, not faults).
    pub fn total(&self) -> u64 {
        self.internal_error
            + self.slow_down
            + self.precondition_failed
            + self.reset
            + self.truncated
            + self.stalled
            + self.content_length
            + self.extra_bytes
            + self.flipped
    }
}

/// The rules in force and the random sequence rates draw from.
#[derive(Debug)]
struct State {
    rules: Vec<Rule>,
    rng: Rng,
}

/// The faults a server injects; shared (`Arc`) between the server and the test driving it,
/// changeable at any time. A new `Faults` injects nothing.
#[derive(Debug)]
pub struct Faults {
    state: Mutex<State>,
    /// Whether any rule is installed (requests skip the lock when not).
    armed: AtomicBool,
    /// The listing page size override; 0 = none.
    list_page_size: AtomicUsize,
    /// Injected faults, by [`Fault::slot`].
    counts: [AtomicU64; FAULT_KINDS],
    short_pages: AtomicU64,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults::new()
    }
}

/// How many kinds of [`Fault`] there are (the counters' slots).
const FAULT_KINDS: usize = 9;

/// 2^-64 as a float, to turn 64 random bits into a number in [0, 1).
const UNIT: f64 = 1.0 / 18_446_744_073_709_551_616.0;

impl Faults {
    /// No rules, no page size override, counters at zero, seed [`DEFAULT_SEED`].
    pub fn new() -> Faults {
        Faults {
            state: Mutex::new(State {
                rules: Vec::new(),
                rng: Rng::new(DEFAULT_SEED),
            }),
            armed: AtomicBool::new(false),
            list_page_size: AtomicUsize::new(0),
            counts: Default::default(),
            short_pages: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Restarts the random sequence that [`Trigger::Rate`] rules draw from at `seed`.
    pub fn set_seed(&self, seed: u64) {
        self.state().rng = Rng::new(seed);
    }

    /// Adds `rule` after the rules already installed.
    pub fn add(&self, rule: Rule) {
        let mut state = self.state();
        state.rules.push(rule);
        self.armed.store(true, Ordering::Release);
    }

    /// Replaces every rule with `rules`.
    pub fn set(&self, rules: impl IntoIterator<Item = Rule>) {
        let mut state = self.state();
        state.rules = rules.into_iter().collect();
        self.armed.store(!state.rules.is_empty(), Ordering::Release);
    }

    /// Removes every rule and the page size override: the server answers normally again.
    /// The counters are kept.
    pub fn clear(&self) {
        self.set([]);
        self.set_list_page_size(None);
    }

    /// The rules in force (with what is left of their [`Trigger::Next`] counts).
    pub fn rules(&self) -> Vec<Rule> {
        self.state().rules.clone()
    }

    /// Makes ListObjectsV2 answer at most `keys` keys and common prefixes per page (at least
    /// one), whatever `max-keys` the client asked for; `None` restores the normal page size.
    pub fn set_list_page_size(&self, keys: Option<usize>) {
        self.list_page_size
            .store(keys.map_or(0, |k| k.max(1)), Ordering::Release);
    }

    /// The page size a ListObjectsV2 that asked for `max_keys` gets (counting short pages).
    pub(crate) fn list_page_size(&self, max_keys: usize) -> usize {
        match self.list_page_size.load(Ordering::Acquire) {
            0 => max_keys,
            limit if limit < max_keys => {
                self.short_pages.fetch_add(1, Ordering::Relaxed);
                limit
            }
            _ => max_keys,
        }
    }

    /// The fault for one `op` request, if a rule fires; counted as injected. `body_len` is the
    /// length of the body about to be sent (GetObject); an empty body draws no body fault.
    pub(crate) fn decide(&self, op: Op, body_len: Option<u64>) -> Option<Fault> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.state();
        let State { rules, rng } = &mut *state;
        let mut chosen = None;
        for rule in rules.iter_mut() {
            if !rule.applies_to(op) || (!rule.fault.is_status() && body_len.unwrap_or(0) == 0) {
                continue;
            }
            let fires = match &mut rule.trigger {
                Trigger::Always => true,
                Trigger::Next(0) => false,
                Trigger::Next(n) => {
                    *n -= 1;
                    true
                }
                Trigger::Rate(p) => (rng.next_u64() as f64 * UNIT) < *p,
            };
            if fires {
                chosen = Some(rule.fault);
                break;
            }
        }
        if let Some(fault) = chosen {
            self.counts[fault.slot()].fetch_add(1, Ordering::Relaxed);
        }
        chosen
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> FaultStats {
        let [internal_error, slow_down, precondition_failed, reset, truncated, stalled, content_length, extra_bytes, flipped] =
            self.counts.each_ref().map(|c| c.load(Ordering::Relaxed));
        FaultStats {
            internal_error,
            slow_down,
            precondition_failed,
            reset,
            truncated,
            stalled,
            content_length,
            extra_bytes,
            flipped,
            short_pages: self.short_pages.load(Ordering::Relaxed),
        }
    }

    /// Sets every counter to zero.
    pub fn reset_stats(&self) {
        for count in self.counts.iter().chain([&self.short_pages]) {
            count.store(0, Ordering::Relaxed);
        }
    }
}

/// Filler for [`Fault::ExtraBytes`]: not zeros, so a client that keeps them cannot pass for
/// one that read a hole.
const FILLER: u8 = 0xA5;

/// How long a body that breaks off waits first, so the HTTP layer sends what it has buffered
/// (hyper drops unsent bytes when a body fails or ends short): the client then really receives
/// every byte before the cut.
const FLUSH_GRACE: Duration = Duration::from_millis(50);

/// What a [`FaultBody`] does at its cut.
#[derive(Clone, Copy, Debug)]
enum AtCut {
    /// Yield an error.
    Fail,
    /// End the stream.
    End,
    /// Pause, then go on.
    Pause(Duration),
}

/// A GetObject body with a [`Fault`] applied to the stream of `len` bytes it wraps.
pub(crate) struct FaultBody<S> {
    inner: S,
    /// The byte position of the cut and what happens there (reset, truncate, stall).
    cut: Option<(u64, AtCut)>,
    /// Filler bytes still to send after the inner stream ends.
    extra: u64,
    /// The position of the byte to invert ([`Fault::FlipByte`]).
    flip: Option<u64>,
    /// The announced length is not the body's: hide the body's length from the HTTP layer.
    length_unknown: bool,
    /// The announced length exceeds the body: wait [`FLUSH_GRACE`] before ending.
    ends_short: bool,
    /// Bytes the body still promises (for the HTTP layer's length).
    promised: u64,
    /// Bytes yielded so far.
    sent: u64,
    /// The rest of the chunk split at a stall, sent after the pause.
    held: Option<Bytes>,
    pause: Option<Pin<Box<Sleep>>>,
    /// Set once the cut was reached and acted on.
    after_cut: Option<AtCut>,
}

impl<S> FaultBody<S> {
    /// `inner`, a body of `len` bytes, with `fault` applied (a status fault changes nothing).
    pub fn new(inner: S, len: u64, fault: Fault) -> FaultBody<S> {
        let at = |after: u64| after.min(len.saturating_sub(1));
        let cut = match fault {
            Fault::Reset { after } => Some((at(after), AtCut::Fail)),
            Fault::Truncate { after } => Some((at(after), AtCut::End)),
            Fault::Stall { after, pause } => Some((at(after), AtCut::Pause(pause))),
            _ => None,
        };
        let extra = match fault {
            Fault::ExtraBytes { extra } => extra,
            _ => 0,
        };
        let flip = match fault {
            Fault::FlipByte { at: position } => Some(at(position)),
            _ => None,
        };
        FaultBody {
            inner,
            cut,
            extra,
            flip,
            length_unknown: matches!(fault, Fault::ContentLength { .. }),
            ends_short: matches!(fault, Fault::ContentLength { delta } if delta > 0),
            promised: len + extra,
            sent: 0,
            held: None,
            pause: None,
            after_cut: None,
        }
    }

    fn emit(&mut self, chunk: Bytes) -> Poll<Option<Result<Bytes, StdError>>> {
        let chunk = match self.flip {
            Some(at) if (self.sent..self.sent + chunk.len() as u64).contains(&at) => {
                self.flip = None;
                let mut flipped = chunk.to_vec();
                flipped[(at - self.sent) as usize] ^= 0xFF;
                Bytes::from(flipped)
            }
            _ => chunk,
        };
        self.sent += chunk.len() as u64;
        self.promised = self.promised.saturating_sub(chunk.len() as u64);
        Poll::Ready(Some(Ok(chunk)))
    }
}

fn broken_off(at: u64) -> StdError {
    Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        format!("injected fault: body broken off after {at} bytes"),
    ))
}

impl<S> Stream for FaultBody<S>
where
    S: Stream<Item = Result<Bytes, StdError>> + Unpin,
{
    type Item = Result<Bytes, StdError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pause) = this.pause.as_mut() {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            match this.after_cut {
                Some(AtCut::Fail) => {
                    this.after_cut = Some(AtCut::End);
                    return Poll::Ready(Some(Err(broken_off(this.sent))));
                }
                Some(AtCut::End) => return Poll::Ready(None),
                Some(AtCut::Pause(_)) | None => {}
            }
            if let Some(rest) = this.held.take() {
                return this.emit(rest);
            }
            let chunk = match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(chunk)) => chunk,
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None if this.extra > 0 => {
                    // Bounded by the fault's size; one chunk is enough for a test.
                    let filler = Bytes::from(vec![FILLER; this.extra as usize]);
                    this.extra = 0;
                    return this.emit(filler);
                }
                None if this.ends_short => {
                    this.ends_short = false;
                    this.pause = Some(Box::pin(tokio::time::sleep(FLUSH_GRACE)));
                    this.after_cut = Some(AtCut::End);
                    continue;
                }
                None => return Poll::Ready(None),
            };
            let (start, end) = (this.sent, this.sent + chunk.len() as u64);
            let (at, action) = match this.cut.take() {
                Some((at, action)) if (start..end).contains(&at) => (at, action),
                other => {
                    this.cut = other;
                    return this.emit(chunk);
                }
            };
            let split = (at - start) as usize;
            let head = chunk.slice(..split);
            let pause = match action {
                AtCut::Pause(pause) => {
                    this.held = Some(chunk.slice(split..));
                    pause
                }
                other => {
                    this.after_cut = Some(other);
                    FLUSH_GRACE
                }
            };
            this.pause = Some(Box::pin(tokio::time::sleep(pause)));
            if !head.is_empty() {
                return this.emit(head);
            }
            // Nothing before the cut: act on it at once.
        }
    }
}

impl<S> ByteStream for FaultBody<S>
where
    S: Stream<Item = Result<Bytes, StdError>> + Unpin + Send + Sync,
{
    fn remaining_length(&self) -> RemainingLength {
        match usize::try_from(self.promised) {
            Ok(n) if !self.length_unknown => RemainingLength::new_exact(n),
            _ => RemainingLength::unknown(),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    /// A stream of `len` bytes (`i % 251`) in chunks of `chunk` bytes.
    fn source(len: usize, chunk: usize) -> impl Stream<Item = Result<Bytes, StdError>> + Unpin {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Result<Bytes, StdError>> = data
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(chunks)
    }

    fn expected(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Drains `body`: the bytes, and whether it ended with an error.
    async fn drain<S>(mut body: FaultBody<S>) -> (Vec<u8>, bool)
    where
        S: Stream<Item = Result<Bytes, StdError>> + Unpin,
    {
        let mut got = Vec::new();
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => got.extend_from_slice(&chunk),
                Err(_) => {
                    assert!(body.next().await.is_none(), "nothing after the error");
                    return (got, true);
                }
            }
        }
        (got, false)
    }

    #[test]
    fn new_faults_inject_nothing_until_a_rule_is_added() {
        let faults = Faults::new();
        for op in [Op::GetObject, Op::HeadObject, Op::ListObjectsV2] {
            assert_eq!(faults.decide(op, Some(10)), None);
        }
        assert_eq!(faults.list_page_size(1000), 1000);
        faults.add(Rule::get(Fault::SlowDown));
        assert_eq!(
            faults.decide(Op::GetObject, Some(10)),
            Some(Fault::SlowDown)
        );
        assert_eq!(
            faults.decide(Op::HeadObject, None),
            None,
            "other ops untouched"
        );
        faults.clear();
        assert_eq!(faults.decide(Op::GetObject, Some(10)), None);
        assert_eq!(faults.stats().slow_down, 1, "counters survive clear");
        faults.reset_stats();
        assert_eq!(faults.stats(), FaultStats::default());
    }

    #[test]
    fn next_n_fires_exactly_n_times_then_later_rules_apply() {
        let faults = Faults::new();
        faults.set([
            Rule::get(Fault::InternalError).next(3),
            Rule::get(Fault::Reset { after: 5 }),
        ]);
        let got: Vec<_> = (0..5)
            .map(|_| faults.decide(Op::GetObject, Some(100)))
            .collect();
        assert_eq!(
            got,
            [
                Some(Fault::InternalError),
                Some(Fault::InternalError),
                Some(Fault::InternalError),
                Some(Fault::Reset { after: 5 }),
                Some(Fault::Reset { after: 5 }),
            ]
        );
        let stats = faults.stats();
        assert_eq!(
            (stats.internal_error, stats.reset, stats.total()),
            (3, 2, 5)
        );
    }

    #[test]
    fn rates_are_reproducible_from_the_seed_and_close_to_the_rate() {
        let run = |seed: u64| {
            let faults = Faults::new();
            faults.set_seed(seed);
            faults.add(Rule::get(Fault::SlowDown).rate(0.2));
            let hits: Vec<bool> = (0..10_000)
                .map(|_| faults.decide(Op::GetObject, Some(1)).is_some())
                .collect();
            assert_eq!(
                faults.stats().slow_down,
                hits.iter().filter(|h| **h).count() as u64
            );
            hits
        };
        let a = run(1);
        assert_eq!(a, run(1), "same seed, same faults");
        assert_ne!(a, run(2), "another seed, other faults");
        let n = a.iter().filter(|h| **h).count();
        assert!((1_800..2_200).contains(&n), "{n} of 10000 at 20%");
        let faults = Faults::new();
        faults.set([Rule::get(Fault::SlowDown).rate(0.0)]);
        assert!((0..1000).all(|_| faults.decide(Op::GetObject, Some(1)).is_none()));
    }

    #[test]
    fn body_faults_only_hit_get_bodies_and_status_faults_hit_every_op() {
        let faults = Faults::new();
        faults.set([
            Rule::new(Op::HeadObject, Fault::Truncate { after: 1 }),
            Rule::new(Op::ListObjectsV2, Fault::InternalError).next(1),
            Rule::get(Fault::Stall {
                after: 0,
                pause: Duration::from_millis(1),
            }),
        ]);
        assert_eq!(faults.decide(Op::HeadObject, None), None);
        assert_eq!(
            faults.decide(Op::ListObjectsV2, None),
            Some(Fault::InternalError)
        );
        assert_eq!(faults.decide(Op::GetObject, Some(0)), None, "empty body");
        assert!(faults.decide(Op::GetObject, Some(1)).is_some());
        assert!(Fault::SlowDown.is_status() && !Fault::Reset { after: 0 }.is_status());
        let codes: Vec<_> = [
            Fault::InternalError,
            Fault::SlowDown,
            Fault::PreconditionFailed,
        ]
        .into_iter()
        .map(|f| f.to_error().expect("status").code().clone())
        .collect();
        assert_eq!(
            codes,
            [
                S3ErrorCode::InternalError,
                S3ErrorCode::SlowDown,
                S3ErrorCode::PreconditionFailed
            ]
        );
        assert!(Fault::Reset { after: 0 }.to_error().is_none());
    }

    #[test]
    fn list_page_size_override_counts_short_pages() {
        let faults = Faults::new();
        faults.set_list_page_size(Some(3));
        assert_eq!(faults.list_page_size(1000), 3);
        assert_eq!(faults.list_page_size(2), 2, "a smaller request wins");
        faults.set_list_page_size(Some(0));
        assert_eq!(faults.list_page_size(1000), 1, "at least one key");
        assert_eq!(faults.stats().short_pages, 2);
        assert_eq!(faults.stats().total(), 0, "short pages are not faults");
        faults.clear();
        assert_eq!(faults.list_page_size(1000), 1000);
    }

    #[tokio::test]
    async fn reset_sends_the_bytes_before_the_cut_then_an_error() {
        for (after, chunk) in [(0, 10), (5, 10), (10, 10), (25, 7), (1000, 10)] {
            let body = FaultBody::new(source(40, chunk), 40, Fault::Reset { after });
            assert_eq!(body.remaining_length().exact(), Some(40));
            let (got, failed) = drain(body).await;
            let cut = after.min(39) as usize;
            assert!(failed, "after {after}");
            assert_eq!(got, expected(cut), "after {after}");
        }
    }

    #[tokio::test]
    async fn flip_byte_inverts_one_byte_and_keeps_the_length() {
        for (at, chunk) in [(0, 10), (15, 10), (1000, 7)] {
            let body = FaultBody::new(source(40, chunk), 40, Fault::FlipByte { at });
            assert_eq!(body.remaining_length().exact(), Some(40));
            let (got, failed) = drain(body).await;
            assert!(!failed, "at {at}");
            let mut want = expected(40);
            want[at.min(39) as usize] ^= 0xFF;
            assert_eq!(got, want, "at {at}");
        }
    }

    #[tokio::test]
    async fn truncate_ends_early_while_promising_the_whole_range() {
        let body = FaultBody::new(source(40, 16), 40, Fault::Truncate { after: 20 });
        assert_eq!(body.remaining_length().exact(), Some(40));
        let (got, failed) = drain(body).await;
        assert!(!failed);
        assert_eq!(got, expected(20));
    }

    #[tokio::test]
    async fn stall_pauses_then_sends_the_rest() {
        let pause = Duration::from_millis(300);
        let mut body = FaultBody::new(source(40, 16), 40, Fault::Stall { after: 20, pause });
        let mut got = Vec::new();
        let mut gaps = Vec::new();
        let mut last = tokio::time::Instant::now();
        while let Some(chunk) = body.next().await {
            gaps.push((got.len(), last.elapsed()));
            got.extend_from_slice(&chunk.expect("chunk"));
            last = tokio::time::Instant::now();
        }
        assert_eq!(got, expected(40), "every byte, in order");
        let (at, gap) = gaps
            .iter()
            .max_by_key(|(_, gap)| *gap)
            .copied()
            .expect("chunks");
        assert_eq!(at, 20, "the pause comes after 20 bytes");
        assert!(gap >= pause, "paused {gap:?}");
    }

    #[tokio::test]
    async fn wrong_lengths_and_extra_bytes() {
        let fault = Fault::ContentLength { delta: -4 };
        assert_eq!(fault.content_length(40), 36);
        assert_eq!(Fault::ContentLength { delta: 9 }.content_length(40), 49);
        assert_eq!(Fault::ContentLength { delta: -99 }.content_length(40), 0);
        let body = FaultBody::new(source(40, 16), 40, fault);
        assert_eq!(body.remaining_length().exact(), None, "length hidden");
        assert_eq!(drain(body).await, (expected(40), false));

        let fault = Fault::ExtraBytes { extra: 3 };
        assert_eq!(fault.content_length(40), 43);
        let body = FaultBody::new(source(40, 16), 40, fault);
        assert_eq!(body.remaining_length().exact(), Some(43));
        let (got, failed) = drain(body).await;
        assert!(!failed);
        assert_eq!(got[..40], expected(40)[..]);
        assert_eq!(got[40..], [FILLER; 3]);
    }
}
