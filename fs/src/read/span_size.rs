//! How many blocks one sweep GET asks for. S3 allows about 5,500 GETs per second per prefix,
//! shared by every node loading from it: when S3 answers with throttling, the span doubles
//! (half the requests for the same bytes), up to [`MAX_SPAN_BLOCKS`]; after a quiet
//! [`QUIET`] it halves again, back to [`SPAN_BLOCKS`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::sweep_plan::SPAN_BLOCKS;

/// The largest span: 64 MiB GETs, an eighth of the requests of the default.
pub const MAX_SPAN_BLOCKS: u64 = 8 * SPAN_BLOCKS;

/// Time without a throttling answer after which the span halves.
pub const QUIET: Duration = Duration::from_secs(60);

/// Doubling more often than this would grow the span for one burst of answers to requests
/// already sent with the old size.
const SETTLE: Duration = Duration::from_secs(1);

/// The span size of one mount's sweeps, adapted to the throttling its store sees.
#[derive(Debug)]
pub struct SpanSize {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    blocks: u64,
    /// The store's throttle count when last looked at.
    throttles: u64,
    /// When the span last changed (`None` until it first does: the first throttling doubles
    /// it at once, however soon after the mount).
    changed: Option<Instant>,
    /// When the span last changed or a throttling answer was last seen.
    unquiet: Instant,
}

impl SpanSize {
    /// Starts at [`SPAN_BLOCKS`], with `throttles` the store's count so far.
    pub fn new(throttles: u64, now: Instant) -> SpanSize {
        SpanSize {
            state: Mutex::new(State {
                blocks: SPAN_BLOCKS,
                throttles,
                changed: None,
                unquiet: now,
            }),
        }
    }

    /// The span for the next sweep GET, given the store's throttle count now.
    pub fn blocks(&self, throttles: u64, now: Instant) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if throttles > state.throttles {
            state.throttles = throttles;
            state.unquiet = now;
            let settled = state
                .changed
                .is_none_or(|changed| now.saturating_duration_since(changed) >= SETTLE);
            if settled && state.blocks < MAX_SPAN_BLOCKS {
                state.blocks *= 2;
                state.changed = Some(now);
                tracing::info!(
                    span_blocks = state.blocks,
                    "S3 is throttling: sweep spans doubled"
                );
            }
        } else if now.saturating_duration_since(state.unquiet) >= QUIET
            && state.blocks > SPAN_BLOCKS
        {
            state.blocks /= 2;
            state.changed = Some(now);
            state.unquiet = now;
        }
        state.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_on_throttling_at_most_once_a_second_and_halves_when_quiet() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let size = SpanSize::new(5, t0);
        assert_eq!(size.blocks(5, at(10)), SPAN_BLOCKS, "no new throttling");
        // The first throttling doubles at once, even right after the start.
        assert_eq!(size.blocks(6, at(20)), 2 * SPAN_BLOCKS);
        // A burst of answers to requests already sent: one doubling.
        assert_eq!(size.blocks(9, at(1000)), 2 * SPAN_BLOCKS);
        assert_eq!(size.blocks(9, at(1100)), 2 * SPAN_BLOCKS);
        assert_eq!(size.blocks(10, at(2100)), 4 * SPAN_BLOCKS);
        for (n, ms) in (11..20).zip((3..12).map(|s| s * 1000 + 100)) {
            size.blocks(n, at(ms));
        }
        assert_eq!(size.blocks(20, at(12_200)), MAX_SPAN_BLOCKS, "capped");
        let quiet = 12_200 + QUIET.as_millis() as u64;
        assert_eq!(size.blocks(20, at(quiet - 1)), MAX_SPAN_BLOCKS);
        assert_eq!(size.blocks(20, at(quiet)), MAX_SPAN_BLOCKS / 2);
        let mut t = quiet;
        for _ in 0..8 {
            t += QUIET.as_millis() as u64;
            size.blocks(20, at(t));
        }
        assert_eq!(
            size.blocks(20, at(t)),
            SPAN_BLOCKS,
            "back to the default, no lower"
        );
    }
}
