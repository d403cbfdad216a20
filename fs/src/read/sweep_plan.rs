//! Which blocks a sweep fetches next: in file order from the read that showed the load, until
//! the file's readers show a load by name (see `tensor_order`), then in name order.
//!
//! Readers of the file report their jumps (reads that continue no recent one); the sweep
//! task takes spans of adjacent blocks (see `span_size`) from the plan as its slots free
//! up, so a change of order applies to the next span it starts. Every block is handed out
//! at most once.

use std::sync::Mutex;

use super::load_detect::RecentRuns;
use super::tensor_order::TensorLayout;

/// Blocks per sweep request while S3 does not throttle: 8 MiB GETs, like mountpoint-s3's
/// parts and S3's guidance.
pub const SPAN_BLOCKS: u64 = 8;

/// Jumps remembered until the sweep knows the header's layout.
const JUMPS_KEPT: usize = 32;

/// Where a file's reads jump: reads that join none of the recent runs (`RecentRuns`).
#[derive(Debug, Default)]
pub struct ReadJumps {
    runs: RecentRuns,
    jumps: Vec<u64>,
}

impl ReadJumps {
    /// Records a read of `offset..end`; true if it continues none of the recent reads.
    pub fn observe(&mut self, offset: u64, end: u64) -> bool {
        let (_, jumped) = self.runs.observe(offset, end);
        if jumped && self.jumps.len() < JUMPS_KEPT {
            self.jumps.push(offset);
        }
        jumped
    }
}

/// The blocks a sweep has yet to start, shared by the sweep task and the file's readers.
#[derive(Debug)]
pub struct SweepPlan {
    state: Mutex<PlanState>,
}

#[derive(Debug)]
struct PlanState {
    queue: Vec<u64>,
    next: usize,
    /// Blocks handed to a span, or on disk when the sweep began.
    handed: Vec<bool>,
    layout: Option<TensorLayout>,
    /// Jumps seen before the layout was known.
    jumps: Vec<u64>,
    by_name: bool,
    block_size: u64,
    size: u64,
}

impl SweepPlan {
    /// A plan for a file of `size` bytes in blocks of `block_size`: file order from block
    /// `start`, wrapping around; `jumps` are the reads' jumps so far.
    pub fn new(start: u64, block_size: u64, size: u64, jumps: &ReadJumps) -> SweepPlan {
        let blocks = size.div_ceil(block_size);
        let start = start.min(blocks);
        SweepPlan {
            state: Mutex::new(PlanState {
                queue: (start..blocks).chain(0..start).collect(),
                next: 0,
                handed: vec![false; blocks as usize],
                layout: None,
                jumps: jumps.jumps.clone(),
                by_name: false,
                block_size,
                size,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PlanState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks on disk already (`present(index)`) are not handed out.
    pub fn skip_present(&self, present: impl Fn(u64) -> bool) {
        let mut state = self.state();
        for (index, handed) in state.handed.iter_mut().enumerate() {
            *handed |= present(index as u64);
        }
    }

    /// The file's tensor layout, once parsed: the jumps seen so far may show a load by name.
    pub fn set_layout(&self, layout: TensorLayout) {
        let mut state = self.state();
        let jumps = std::mem::take(&mut state.jumps);
        state.layout = Some(layout);
        for offset in jumps {
            state.note_jump(offset);
        }
    }

    /// A reader of the file jumped to `offset`.
    pub fn note_jump(&self, offset: u64) {
        self.state().note_jump(offset);
    }

    /// Whether the plan follows name order.
    pub fn in_name_order(&self) -> bool {
        self.state().by_name
    }

    /// The next span to fetch, `(first block, count)`: up to `max_blocks` adjacent blocks
    /// not handed out yet.
    pub fn next_span(&self, max_blocks: u64) -> Option<(u64, u64)> {
        let mut state = self.state();
        let state = &mut *state;
        while let Some(&index) = state.queue.get(state.next) {
            if !state.handed[index as usize] {
                break;
            }
            state.next += 1;
        }
        let first = *state.queue.get(state.next)?;
        let mut count = 0;
        while let Some(&index) = state.queue.get(state.next) {
            if index != first + count || count == max_blocks || state.handed[index as usize] {
                break;
            }
            state.handed[index as usize] = true;
            count += 1;
            state.next += 1;
        }
        Some((first, count))
    }
}

impl PlanState {
    fn note_jump(&mut self, offset: u64) {
        tracing::trace!(offset, layout = self.layout.is_some(), "jump");
        if self.by_name {
            return;
        }
        let Some(layout) = &self.layout else {
            if self.jumps.len() < JUMPS_KEPT {
                self.jumps.push(offset);
            }
            return;
        };
        if layout.begins_load_by_name(offset) {
            self.queue = layout.name_order_blocks(self.block_size, self.size);
            self.next = 0;
            self.by_name = true;
            tracing::debug!(offset, "sweep follows a load by name");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::tensor_order::{two_regions, TwoRegions};

    #[test]
    fn reads_that_continue_recent_ones_are_not_jumps() {
        let mut jumps = ReadJumps::default();
        assert!(jumps.observe(0, 100));
        assert!(!jumps.observe(100, 200));
        assert!(jumps.observe(10 << 20, 11 << 20), "another thread");
        assert!(!jumps.observe(200, 300), "the first thread goes on");
        assert!(!jumps.observe(11 << 20, 12 << 20));
        assert_eq!(jumps.jumps, vec![0, 10 << 20]);
    }

    #[test]
    fn spans_take_adjacent_blocks_once_each_wrapping_around() {
        let plan = SweepPlan::new(18, 1, 20, &ReadJumps::default());
        plan.skip_present(|i| i == 3);
        let spans: Vec<_> = std::iter::from_fn(|| plan.next_span(SPAN_BLOCKS)).collect();
        assert_eq!(spans, vec![(18, 2), (0, 3), (4, 8), (12, 6)]);
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_jump_to_a_tensor_first_by_name_switches_to_name_order() {
        let TwoRegions {
            header, size, b_w, ..
        } = two_regions();
        // The loader faulted at b.w before the sweep began (the kernel's read starts 2 MiB
        // before it); the sweep starts in file order from the read that showed the load.
        let mut jumps = ReadJumps::default();
        jumps.observe(0, 300 << 10);
        jumps.observe(b_w - 2 * MIB, b_w - MIB);
        let plan = SweepPlan::new(0, MIB, size, &jumps);
        assert_eq!(plan.next_span(SPAN_BLOCKS), Some((0, 8)));
        plan.set_layout(TensorLayout::parse(&header, size).unwrap());
        assert!(plan.in_name_order());
        let (first, count) = plan.next_span(SPAN_BLOCKS).unwrap();
        assert_eq!(first, b_w / MIB, "b.w next");
        // Every block still comes exactly once.
        let mut all: Vec<u64> = (0..8).chain(first..first + count).collect();
        while let Some((first, count)) = plan.next_span(SPAN_BLOCKS) {
            all.extend(first..first + count);
        }
        all.sort_unstable();
        assert_eq!(all, (0..size.div_ceil(MIB)).collect::<Vec<_>>());
    }

    #[test]
    fn jumps_elsewhere_keep_file_order() {
        let TwoRegions {
            header,
            size,
            data_start,
            ..
        } = two_regions();
        let plan = SweepPlan::new(3, MIB, size, &ReadJumps::default());
        plan.set_layout(TensorLayout::parse(&header, size).unwrap());
        plan.note_jump(data_start + 6 * MIB);
        assert!(!plan.in_name_order());
        assert_eq!(plan.next_span(SPAN_BLOCKS), Some((3, 8)));
    }
}
