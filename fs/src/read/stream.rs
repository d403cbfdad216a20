//! Loads the disk cache cannot hold, streamed through memory.
//!
//! When a model being loaded cannot be stored beside the entries in use
//! ([`DiskCache::admit`](crate::cache::DiskCache::admit)), none of it is written: a sweep like
//! the disk one (the same [`SweepPlan`]: file order from the read that showed the load, name
//! order for a load by name) fetches its blocks in 8 MiB GETs into reused buffers
//! ([`BlockBuffers`]), at most
//! [`lead_spans`] spans ahead of the readers. A block fetched ahead is held by the stream,
//! outside the LRU memory tier, until all its bytes have been read (it then goes to the tier,
//! like any block read), so no other traffic pushes it out before its reader comes: each
//! block is fetched once. Each span keeps its background slot while any of its blocks is
//! held, so the read-ahead counts as bytes in flight, within the memory budget. Blocks a
//! reader fetched itself are not fetched again. A reader that finds its blocks missing
//! fetches them, and a few after them, the same way when the lead has room (a loader's
//! thread reads a tensor in steps: its next reads find their blocks held, and a block shared
//! by two tensors read at different times is held until both have been).
//!
//! A loader that never reads some blocks (part of a file) would hold the lead for good: when
//! the sweep has waited [`STALL`] for room, the oldest span it fetched goes to the memory tier
//! and the sweep moves on.
//!
//! One stream per object version in the process: every open of the file (a loader's threads
//! each open it), on any volume, reads through it.

use std::collections::{HashMap, VecDeque};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::block_buffers::{BlockBuffer, BlockBuffers};
use super::fetch::Fetcher;
use super::sweep_plan::SweepPlan;
use super::{Loading, OpenObject};
use crate::cache::disk::{BlockSet, NoRoom};
use crate::store::ObjectVersion;

/// How long the sweep waits for room in its lead before handing its oldest span to the
/// memory tier (its readers may never come).
pub const STALL: Duration = Duration::from_secs(5);

/// Spans a stream may have in flight or held at once: every background slot, since its spans
/// keep their places until read and fewer than the lead are downloading. Another load's sweep
/// takes slots as this one's spans are read.
pub fn lead_spans(prefetch_concurrency: usize) -> usize {
    prefetch_concurrency.max(1)
}

/// What a span fetched ahead holds until its blocks have been read: its background slot (its
/// bytes count as in flight) and a place in its stream's lead.
#[derive(Debug)]
pub struct Lease {
    _slot: Option<OwnedSemaphorePermit>,
    _place: OwnedSemaphorePermit,
}

#[derive(Debug)]
struct Held {
    bytes: Bytes,
    /// The parts of the block readers have read, sorted and merged (the kernel may read a
    /// part twice: it drops pages under pressure and reads them again).
    read: Vec<std::ops::Range<u64>>,
    _lease: Arc<Lease>,
}

impl Held {
    /// Records a read of `part` of the block; true once every byte has been read.
    fn read(&mut self, part: std::ops::Range<u64>) -> bool {
        let mut merged = part;
        self.read.retain(|r| {
            let touches = r.start <= merged.end && merged.start <= r.end;
            if touches {
                merged = merged.start.min(r.start)..merged.end.max(r.end);
            }
            !touches
        });
        let at = self.read.partition_point(|r| r.start < merged.start);
        self.read.insert(at, merged);
        let len = self.bytes.len() as u64;
        matches!(self.read.as_slice(), [only] if only.start == 0 && only.end >= len)
    }
}

/// A streamed load of one object version.
#[derive(Debug)]
pub struct Stream {
    plan: Arc<SweepPlan>,
    /// Blocks a reader has asked for: the sweep does not fetch them.
    read: BlockSet,
    held: Mutex<HashMap<u64, Held>>,
    /// Spans fetched ahead, oldest first, as `(first, last)` block indexes.
    spans: Mutex<VecDeque<(u64, u64)>>,
    places: Arc<Semaphore>,
}

impl Stream {
    /// A stream of a file of `blocks` blocks following `plan`, at most `lead` spans ahead.
    pub fn new(plan: Arc<SweepPlan>, blocks: u64, lead: usize) -> Stream {
        Stream {
            plan,
            read: BlockSet::new(blocks),
            held: Mutex::default(),
            spans: Mutex::default(),
            places: Arc::new(Semaphore::new(lead)),
        }
    }

    /// The sweep's plan (readers report their jumps to it).
    pub fn plan(&self) -> &Arc<SweepPlan> {
        &self.plan
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reader is reading `blocks`: the sweep leaves them to it.
    pub fn note_reading(&self, blocks: RangeInclusive<u64>) {
        for index in blocks {
            self.read.insert(index);
        }
    }

    /// Whether the sweep should leave block `index` alone: a reader asked for it, or it is
    /// held already.
    pub fn has_or_was_read(&self, index: u64) -> bool {
        self.read.contains(index) || self.holds(index)
    }

    /// Whether block `index` is held.
    pub fn holds(&self, index: u64) -> bool {
        self.held().contains_key(&index)
    }

    /// A place in the lead and one of `slots`, if both are free now (a reader's span, which
    /// must not wait).
    pub fn try_lease(&self, slots: &Arc<Semaphore>) -> Option<Lease> {
        let place = self.places.clone().try_acquire_owned().ok()?;
        let slot = slots.clone().try_acquire_owned().ok()?;
        Some(Lease {
            _slot: Some(slot),
            _place: place,
        })
    }

    /// Block `index`, if it was fetched ahead and is still held.
    pub fn peek(&self, index: u64) -> Option<Bytes> {
        self.held().get(&index).map(|held| held.bytes.clone())
    }

    /// Holds block `index`, fetched ahead, until it has been read.
    pub fn hold(&self, index: u64, bytes: Bytes, lease: &Arc<Lease>) {
        let held = Held {
            bytes,
            read: Vec::new(),
            _lease: lease.clone(),
        };
        self.held().insert(index, held);
    }

    /// Records that a reader read `part` (offsets within the block) of block `index`; once
    /// all of it has been read, the stream lets go of it and returns it, for the memory tier
    /// like any block read (the kernel may drop its pages and read them again).
    pub fn consumed(&self, index: u64, part: std::ops::Range<u64>) -> Option<Bytes> {
        let mut held = self.held();
        if !held.get_mut(&index)?.read(part) {
            return None;
        }
        held.remove(&index).map(|block| block.bytes)
    }

    /// A span the sweep fetched is complete: the oldest of them is the first aged out.
    fn fetched(&self, first: u64, last: u64) {
        self.spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((first, last));
    }

    /// Lets go of the blocks still held of the oldest span fetched, and returns them.
    fn age_out(&self) -> Vec<(u64, Bytes)> {
        let oldest = self
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        let Some((first, last)) = oldest else {
            return Vec::new();
        };
        let mut held = self.held();
        (first..last)
            .filter_map(|index| Some((index, held.remove(&index)?.bytes)))
            .collect()
    }
}

/// Cuts a span's body, arriving in pieces, into whole blocks, each in a buffer of its own
/// (a slice of one span buffer would keep all of it alive for as long as any block is).
#[derive(Debug)]
pub struct BlockCollector {
    first: u64,
    start: u64,
    end: u64,
    block_size: u64,
    /// Object offset of the next byte expected.
    at: u64,
    buffers: Arc<BlockBuffers>,
    block: Option<BlockBuffer>,
    /// Blocks returned so far, from the span's first.
    returned: u64,
}

impl BlockCollector {
    /// A collector for the blocks `blocks` of an object of `size` bytes, into buffers from
    /// `buffers`.
    pub fn new(
        blocks: std::ops::Range<u64>,
        block_size: u64,
        size: u64,
        buffers: &Arc<BlockBuffers>,
    ) -> BlockCollector {
        let start = blocks.start * block_size;
        BlockCollector {
            first: blocks.start,
            start,
            end: (blocks.end * block_size).min(size),
            block_size,
            at: start,
            buffers: buffers.clone(),
            block: None,
            returned: 0,
        }
    }

    /// The object offsets the span covers.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.start..self.end
    }

    /// Takes `piece`, the span's bytes at object offset `at`, and returns the blocks it
    /// completes as `(index, bytes)`. Pieces come in order; one at the span's start begins
    /// the span again (a retried download), without returning a block twice.
    pub fn push(&mut self, at: u64, piece: &[u8]) -> Result<Vec<(u64, Bytes)>, String> {
        if at == self.start {
            self.at = self.start;
            // The unfinished block's buffer goes back to the pool.
            self.block = None;
        }
        if at != self.at || at + piece.len() as u64 > self.end {
            return Err(format!(
                "piece at {at} (+{}) does not continue the span {}..{} read to {}",
                piece.len(),
                self.start,
                self.end,
                self.at
            ));
        }
        let mut done = Vec::new();
        let mut rest = piece;
        while !rest.is_empty() {
            let index = self.at / self.block_size;
            let block_end = ((index + 1) * self.block_size).min(self.end);
            let take = rest.len().min((block_end - self.at) as usize);
            let mut block = self.block.take().unwrap_or_else(|| self.buffers.take());
            block.extend_from_slice(&rest[..take]);
            self.at += take as u64;
            rest = &rest[take..];
            if self.at < block_end {
                self.block = Some(block);
            } else {
                let bytes = block.freeze();
                if index >= self.first + self.returned {
                    self.returned += 1;
                    done.push((index, bytes));
                }
            }
        }
        Ok(done)
    }
}

/// An open of `version` is being loaded and the disk cache cannot hold it (`no_room`): the
/// open (`file`, unless it closed meanwhile) reads through the version's stream, started here
/// (`plan` its sweep order) if none runs. Each load is counted once (a stream started, or a
/// load that ended before the cache decided), and the first of each version in the process
/// is warned about, with the sizes.
pub fn join_or_start(
    fetcher: &Arc<Fetcher>,
    version: &ObjectVersion,
    file: Option<Arc<OpenObject>>,
    plan: Arc<SweepPlan>,
    no_room: NoRoom,
    prefetch_concurrency: usize,
) {
    let Some(file) = file else {
        if fetcher.stream(version).is_none() {
            report(fetcher, version, no_room);
        }
        return;
    };
    let blocks = version.size.div_ceil(fetcher.tiers().block_size());
    let (stream, started) = fetcher.stream_of(version, || {
        Stream::new(plan, blocks, lead_spans(prefetch_concurrency))
    });
    file.access
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .loading = Loading::Stream(stream.clone());
    if started {
        report(fetcher, version, no_room);
        spawn(fetcher.clone(), &stream, &file);
    }
}

/// Counts a load the disk cache cannot hold, and warns about the first of `version`.
fn report(fetcher: &Fetcher, version: &ObjectVersion, no_room: NoRoom) {
    crate::metrics::metrics().cache_too_small_load();
    if !fetcher.first_too_small(version) {
        return;
    }
    if no_room.kept > 0 {
        tracing::warn!(
            key = %version.key,
            file_bytes = version.size,
            cache_limit_bytes = no_room.limit,
            kept_bytes = no_room.kept,
            "models in use take turns and do not fit in the disk cache together: streaming \
             this one from S3 through memory rather than evicting the ones used since its last \
             load; grow --cache-size (or the cache volume) to keep them all (later loads of it \
             are counted in modelfs_cache_too_small_loads_total, not logged)"
        );
    } else {
        tracing::warn!(
            key = %version.key,
            file_bytes = version.size,
            cache_limit_bytes = no_room.limit,
            in_use_bytes = no_room.pinned,
            "disk cache too small for this model beside the files in use: streaming it from S3 \
             through memory and storing none of it; grow --cache-size (or the cache volume) \
             to keep it (later loads of it are counted in modelfs_cache_too_small_loads_total, \
             not logged)"
        );
    }
}

/// The stream's sweep: takes spans from the plan as its lead has room and fetches them ahead
/// of the readers; ends when the plan is done or every open of the file is closed.
fn spawn(fetcher: Arc<Fetcher>, stream: &Arc<Stream>, file: &OpenObject) {
    let (weak, places, plan): (Weak<Stream>, _, _) = (
        Arc::downgrade(stream),
        stream.places.clone(),
        stream.plan.clone(),
    );
    let (version, entry) = (file.version.clone(), file.disk.clone());
    tokio::spawn(async move {
        loop {
            let room = async {
                let place = places.clone().acquire_owned().await.ok()?;
                let slot = fetcher.background_slot().await;
                Some(Lease {
                    _slot: slot,
                    _place: place,
                })
            };
            let lease = match tokio::time::timeout(STALL, room).await {
                Ok(Some(lease)) => lease,
                Ok(None) => return,
                Err(_) => {
                    let Some(stream) = weak.upgrade() else {
                        return;
                    };
                    let aged = stream.age_out();
                    drop(stream);
                    tracing::debug!(
                        key = %version.key,
                        blocks = aged.len(),
                        "stream: a span left unread handed to the memory tier"
                    );
                    for (index, bytes) in aged {
                        fetcher.keep_in_memory(&version, index, bytes).await;
                    }
                    continue;
                }
            };
            // Held in memory until read: the default span, whatever S3's throttling.
            let Some((first, count)) = plan.next_span(super::sweep_plan::SPAN_BLOCKS) else {
                return;
            };
            // Every open of the file is closed: nothing more to read ahead for.
            let Some(stream) = weak.upgrade() else {
                return;
            };
            fetcher.stream_span(
                &version,
                entry.as_ref(),
                &stream,
                first..first + count,
                lease,
            );
        }
    });
}

/// Called by the fetch engine when a span fetched for `stream` has arrived.
pub fn span_fetched(stream: &Weak<Stream>, first: u64, last: u64) {
    if let Some(stream) = stream.upgrade() {
        stream.fetched(first, last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::sweep_plan::ReadJumps;

    #[test]
    fn collected_blocks_are_whole_and_returned_once_across_a_retry() {
        let buffers = BlockBuffers::new(1000, 4);
        let data: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        // Blocks 1..3 of a 2500-byte object in blocks of 1000: bytes 1000..2500.
        let mut c = BlockCollector::new(1..3, 1000, 2500, &buffers);
        assert_eq!(c.range(), 1000..2500);
        assert!(c.push(1000, &data[1000..1400]).unwrap().is_empty());
        let got = c.push(1400, &data[1400..2100]).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, &got[0].1[..]), (1, &data[1000..2000]));
        assert!(
            c.push(1000, &data[1000..1100]).is_ok(),
            "a retry starts over"
        );
        assert!(
            c.push(1500, &data[1500..1600]).is_err(),
            "a gap is an error"
        );
        let mut c = BlockCollector::new(1..3, 1000, 2500, &buffers);
        c.push(1000, &data[1000..2000]).unwrap();
        // Retried from the start: block 1 is not returned again, block 2 is.
        let got = c.push(1000, &data[1000..2500]).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, &got[0].1[..]), (2, &data[2000..2500]));
    }

    #[test]
    fn a_held_block_leaves_once_all_of_it_was_read_and_frees_its_place() {
        let plan = Arc::new(SweepPlan::new(0, 1000, 4000, &ReadJumps::default()));
        let stream = Stream::new(plan, 4, 1);
        let place = stream.places.clone().try_acquire_owned().unwrap();
        let lease = Arc::new(Lease {
            _slot: None,
            _place: place,
        });
        stream.hold(2, Bytes::from(vec![7u8; 1000]), &lease);
        stream.hold(3, Bytes::from(vec![8u8; 1000]), &lease);
        drop(lease);
        stream.fetched(2, 4);
        assert!(stream.has_or_was_read(2) && !stream.has_or_was_read(1));
        assert_eq!(stream.places.available_permits(), 0, "held: no room");
        for part in [600..1000, 700..900, 0..300, 100..200] {
            assert!(stream.consumed(2, part).is_none());
        }
        assert!(
            stream.peek(2).is_some(),
            "parts read, some twice: still held"
        );
        let done = stream.consumed(2, 250..650).map(|block| block.len());
        assert_eq!(done, Some(1000), "all of it read: let go");
        assert!(stream.peek(2).is_none());
        // Block 3 is never read: aged out, its place is free again.
        let aged = stream.age_out();
        assert_eq!(aged.len(), 1);
        assert_eq!(aged[0].0, 3);
        assert_eq!(stream.places.available_permits(), 1);
    }
}
