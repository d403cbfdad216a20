//! Spans: several consecutive blocks in one ranged GET. A span's blocks land in the file's
//! disk entry as the body arrives (each piece at its offset, each block's record once it is
//! complete), in memory when the disk turns them away, or, for a streamed load, with the
//! stream that holds them until read. Each block of a span is in the table of blocks in
//! flight while the span runs; a reader of one waits for the span's progress past it, then
//! reads it from where it landed, or fetches it itself if the span failed.

use std::ops::{Range, RangeInclusive};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::watch;

use super::in_flight::{InFlight, SharedFetch, Table};
use super::Fetcher;
use crate::cache::disk::CacheEntry;
use crate::cache::Priority;
use crate::error::FsError;
use crate::read::stream::{BlockCollector, Lease, Stream};
use crate::store::{ObjectVersion, StoreError};

/// Where a span's blocks go as they arrive.
#[derive(Clone)]
enum Landing {
    /// Into the file's disk entry (into the memory tier when the disk turns them away).
    Disk(Arc<CacheEntry>),
    /// Held by a streamed load until read (see `stream`); `entry` is the file's disk entry,
    /// read from (never written to) when a span fails.
    Stream {
        stream: Weak<Stream>,
        lease: Arc<Lease>,
        entry: Option<Arc<CacheEntry>>,
    },
}

impl Landing {
    /// Held by `stream` for its readers, each block with `lease`; `entry` is the file's disk
    /// entry, if it has one.
    fn for_stream(stream: &Arc<Stream>, lease: Lease, entry: Option<&Arc<CacheEntry>>) -> Landing {
        Landing::Stream {
            stream: Arc::downgrade(stream),
            lease: Arc::new(lease),
            entry: entry.cloned(),
        }
    }

    fn entry(&self) -> Option<&Arc<CacheEntry>> {
        match self {
            Landing::Disk(entry) => Some(entry),
            Landing::Stream { entry, .. } => entry.as_ref(),
        }
    }

    fn stream(&self) -> Option<&Weak<Stream>> {
        match self {
            Landing::Disk(_) => None,
            Landing::Stream { stream, .. } => Some(stream),
        }
    }
}

/// The runs `(start, end)` of consecutive blocks to fetch for a reader of blocks up to `last`:
/// every candidate up to `last` that is not `present`, and after `last` the candidates that
/// continue the last run, until one is present, `stop_ahead`, or not next in line.
pub(super) fn runs_to_fetch(
    candidates: impl IntoIterator<Item = u64>,
    last: u64,
    mut present: impl FnMut(u64) -> bool,
    mut stop_ahead: impl FnMut(u64) -> bool,
) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for index in candidates {
        let ahead = index > last;
        let here = present(index);
        if ahead && (here || stop_ahead(index)) {
            break;
        }
        if here {
            continue;
        }
        match runs.last_mut() {
            Some((_, end)) if *end == index => *end += 1,
            _ if ahead => break,
            _ => runs.push((index, index + 1)),
        }
    }
    runs
}

/// Adds `index` to `runs`, extending the last run when it continues it.
fn extend_runs(runs: &mut Vec<(u64, u64)>, index: u64) {
    match runs.last_mut() {
        Some((_, end)) if *end == index => *end += 1,
        _ => runs.push((index, index + 1)),
    }
}

/// The smallest range of blocks within `first..last` that holds every block of `entry` not
/// on disk yet; `None` when all are there.
async fn missing_range(entry: &Arc<CacheEntry>, first: u64, last: u64) -> Option<(u64, u64)> {
    let entry = entry.clone();
    tokio::task::spawn_blocking(move || {
        let missing: Vec<u64> = (first..last)
            .filter(|&i| !matches!(entry.entry.record(i), Ok(Some(_))))
            .collect();
        Some((*missing.first()?, *missing.last()? + 1))
    })
    .await
    .ok()
    .flatten()
}

impl Fetcher {
    /// Fetches blocks `first..first + count` of `version` with ONE ranged GET and stores them
    /// on disk as the body arrives (a background sweep: fewer, larger requests cost less per
    /// byte than one per block). Returns once the span is stored.
    pub async fn span(
        self: &Arc<Self>,
        version: &ObjectVersion,
        entry: &Arc<CacheEntry>,
        first: u64,
        count: u64,
    ) -> Result<(), FsError> {
        let bs = self.tiers.block_size;
        let last = (first + count).min(version.size.div_ceil(bs));
        // Blocks that readers fetched since the sweep planned this span are not fetched again.
        let Some((first, last)) = missing_range(entry, first, last).await else {
            return Ok(());
        };
        let keys = (first..last).map(|index| self.block_key(version, index));
        self.tiers.cache.store_from_memory(entry, keys).await;
        // Blocks already in flight (a reader's, another sweep's) are waited for, not fetched
        // again, nor are blocks stored meanwhile; the runs between are spans of their own.
        let (spans, waits) = {
            let mut in_flight = self.tiers.in_flight.lock();
            let mut runs: Vec<(u64, u64)> = Vec::new();
            let mut waits = Vec::new();
            for index in first..last {
                if let Some(existing) = in_flight.get(&self.block_key(version, index)) {
                    waits.push(existing.clone());
                    continue;
                }
                // Stored by a fetch that ended since `missing_range` looked (a block leaves
                // the table only once it is stored, and is known intact from then on).
                if entry.is_checked(index) {
                    continue;
                }
                extend_runs(&mut runs, index);
            }
            let landing = Landing::Disk(entry.clone());
            let spans = self.start_spans(
                &mut in_flight,
                version,
                &landing,
                runs,
                Priority::Background,
            );
            (spans, waits)
        };
        let results = futures::future::join_all(spans).await;
        for existing in waits {
            existing.landed().await;
        }
        results.into_iter().collect()
    }

    /// Gets `blocks` of `entry` onto disk for a reader of a file being loaded. The missing
    /// ones are fetched as spans at demand priority (no background slot), run on towards
    /// `until` while the blocks after them are missing too, so the reader's next reads find
    /// their blocks on the way (a loader's thread reads a tensor in 2 MiB steps: one GET
    /// serves four of them); blocks in flight are waited for, not fetched again. Returns once
    /// each of `blocks` is stored or its fetch has given up; the caller reads them from the
    /// disk tier, or falls back to the block path.
    pub async fn fetch_to_disk(
        self: &Arc<Self>,
        version: &ObjectVersion,
        entry: &Arc<CacheEntry>,
        blocks: RangeInclusive<u64>,
        until: u64,
    ) {
        let (first, last) = (*blocks.start(), *blocks.end());
        let until = self.run_on_end(version, last, until);
        // Blocks on disk but not checked by this process are left to the block path, which
        // reads and checks them; only blocks without a record are fetched.
        let unrecorded = {
            let entry = entry.clone();
            tokio::task::spawn_blocking(move || {
                (first..until)
                    .filter(|&i| !entry.is_checked(i) && matches!(entry.entry.record(i), Ok(None)))
                    .collect::<Vec<u64>>()
            })
            .await
            .unwrap_or_default()
        };
        let waits: Vec<InFlight> = {
            let mut in_flight = self.tiers.in_flight.lock();
            // Blocks in memory (the disk turned them away) are read from there; a sweep
            // writes them to disk without fetching them again.
            let runs = runs_to_fetch(
                unrecorded,
                last,
                |index| {
                    let key = self.block_key(version, index);
                    in_flight.contains_key(&key) || self.tiers.cache.holds(&key, Some(entry))
                },
                |_| false,
            );
            let landing = Landing::Disk(entry.clone());
            drop(self.start_spans(&mut in_flight, version, &landing, runs, Priority::Demand));
            self.in_flight_of(&in_flight, version, blocks)
        };
        futures::future::join_all(waits.into_iter().map(InFlight::landed)).await;
    }

    /// Fetches blocks `blocks` of `version` ahead of `stream`'s readers, as spans that hold
    /// `lease` until their blocks have been read. Blocks a reader asked for, held already, in
    /// flight, in memory or on disk are left out.
    pub(in crate::read) fn stream_span(
        self: &Arc<Self>,
        version: &ObjectVersion,
        entry: Option<&Arc<CacheEntry>>,
        stream: &Arc<Stream>,
        blocks: Range<u64>,
        lease: Lease,
    ) {
        let landing = Landing::for_stream(stream, lease, entry);
        let mut in_flight = self.tiers.in_flight.lock();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for index in blocks {
            let key = self.block_key(version, index);
            if in_flight.contains_key(&key)
                || stream.has_or_was_read(index)
                || self.tiers.cache.holds(&key, entry)
            {
                continue;
            }
            extend_runs(&mut runs, index);
        }
        drop(self.start_spans(
            &mut in_flight,
            version,
            &landing,
            runs,
            Priority::Background,
        ));
    }

    /// Gets blocks `first..=last` of `version` held by `stream`, for its reader: the missing
    /// ones are fetched as one span, run on towards `until` while the blocks after them are
    /// missing too (as [`Fetcher::fetch_to_disk`] does), held until read, when the stream's
    /// lead has room right away; otherwise the caller's block path fetches them. Blocks in
    /// flight are waited for. Returns once `first..=last` have landed or their fetch gave up.
    pub(in crate::read) async fn fetch_to_stream(
        self: &Arc<Self>,
        version: &ObjectVersion,
        entry: Option<&Arc<CacheEntry>>,
        stream: &Arc<Stream>,
        blocks: RangeInclusive<u64>,
        until: u64,
    ) {
        let (first, last) = (*blocks.start(), *blocks.end());
        let until = self.run_on_end(version, last, until);
        let waits: Vec<InFlight> = {
            let mut in_flight = self.tiers.in_flight.lock();
            let runs = runs_to_fetch(
                first..until,
                last,
                |index| {
                    let key = self.block_key(version, index);
                    in_flight.contains_key(&key)
                        || stream.holds(index)
                        || self.tiers.cache.holds(&key, entry)
                },
                // Blocks ahead run on only while nobody reads them.
                |index| stream.has_or_was_read(index),
            );
            let lease = (!runs.is_empty())
                .then(|| stream.try_lease(&self.tiers.background_slots))
                .flatten();
            if let Some(lease) = lease {
                let landing = Landing::for_stream(stream, lease, entry);
                drop(self.start_spans(&mut in_flight, version, &landing, runs, Priority::Demand));
            }
            self.in_flight_of(&in_flight, version, blocks)
        };
        futures::future::join_all(waits.into_iter().map(InFlight::landed)).await;
    }

    /// Where a run on from a reader of blocks up to `last` of `version` stops: at `until`, but
    /// never before the block after `last` nor past the end of the file.
    fn run_on_end(&self, version: &ObjectVersion, last: u64, until: u64) -> u64 {
        until
            .max(last + 1)
            .min(version.size.div_ceil(self.tiers.block_size))
    }

    /// Starts each of `runs` (of blocks `start..end`) as a span of its own, landing at
    /// `landing`. Each span runs as its own task, its blocks in the table from here on; the
    /// handles are only for a caller that waits for the spans.
    fn start_spans(
        self: &Arc<Self>,
        in_flight: &mut Table<'_>,
        version: &ObjectVersion,
        landing: &Landing,
        runs: Vec<(u64, u64)>,
        priority: Priority,
    ) -> Vec<SharedFetch<()>> {
        runs.into_iter()
            .map(|(a, b)| self.start_span(in_flight, version, landing.clone(), a..b, priority))
            .collect()
    }

    /// The downloads in flight of `blocks` of `version`.
    fn in_flight_of(
        &self,
        in_flight: &Table<'_>,
        version: &ObjectVersion,
        blocks: RangeInclusive<u64>,
    ) -> Vec<InFlight> {
        blocks
            .filter_map(|index| in_flight.get(&self.block_key(version, index)).cloned())
            .collect()
    }

    /// Starts the download of blocks `blocks` as one span (its own task) and registers each
    /// block in the in-flight table (`in_flight`, held by the caller), where readers wait for
    /// the span and then read the block from where it landed.
    fn start_span(
        self: &Arc<Self>,
        in_flight: &mut Table<'_>,
        version: &ObjectVersion,
        landing: Landing,
        blocks: Range<u64>,
        priority: Priority,
    ) -> SharedFetch<()> {
        let (first, last) = (blocks.start, blocks.end);
        // How many blocks of the span are stored: a reader waits for its own block, not for
        // the whole span (a sequential reader at the sweep's front waits half as long).
        let (progress, stored) = watch::channel(0u64);
        let keys: Vec<_> = blocks.map(|index| self.block_key(version, index)).collect();
        let span = {
            let (this, version, landing) = (self.clone(), version.clone(), landing.clone());
            let fetch = async move {
                this.load_span(&version, &landing, first..last, priority, &progress)
                    .await
            };
            self.tiers.in_flight.run(keys.clone(), fetch)
        };
        for (position, key) in (0..).zip(keys) {
            let (this, mut stored_here) = (self.clone(), stored.clone());
            // Not the landing itself: a streamed span's lease is the span's to let go.
            let (pinned, entry) = (version.clone(), landing.entry().cloned());
            let held_by = landing.stream().cloned();
            let index = key.index;
            let block = async move {
                // Landed, or the span failed (it dropped its sender): the tiers say which.
                let _ = stored_here.wait_for(|&done| done > position).await;
                this.load_after_span(&pinned, entry.as_ref(), held_by.as_ref(), index)
                    .await
            };
            let block = futures::FutureExt::shared(futures::FutureExt::boxed(block));
            in_flight.insert(key, InFlight::of_span(block, stored.clone(), position));
        }
        span
    }

    /// Block `index` for a reader that waited for the span holding it: from its stream (a
    /// streamed load's), else from the tiers (memory, where a span the disk could not take
    /// is kept, then disk), or (the span failed) fetched now.
    async fn load_after_span(
        &self,
        version: &ObjectVersion,
        entry: Option<&Arc<CacheEntry>>,
        stream: Option<&Weak<Stream>>,
        index: u64,
    ) -> Result<Bytes, FsError> {
        let held = stream
            .and_then(Weak::upgrade)
            .and_then(|stream| stream.peek(index));
        if let Some(block) = held {
            return Ok(block);
        }
        let key = self.block_key(version, index);
        let found = self
            .tiers
            .cache
            .look_up(&key, entry, Priority::Demand)
            .await;
        self.or_fetch(version, index, found, Priority::Demand).await
    }

    /// Downloads `blocks` of `version` to `landing`, reporting the blocks stored so far to
    /// `progress`.
    async fn load_span(
        &self,
        version: &ObjectVersion,
        landing: &Landing,
        blocks: Range<u64>,
        priority: Priority,
        progress: &watch::Sender<u64>,
    ) -> Result<(), FsError> {
        let entry = match landing {
            Landing::Disk(entry) => entry,
            Landing::Stream { stream, lease, .. } => {
                return self
                    .stream_into(version, blocks, priority, stream, lease, progress)
                    .await;
            }
        };
        let _slot = self.slot(priority).await;
        let (first, last) = (blocks.start, blocks.end);
        tracing::trace!(first, last, priority = priority.label(), "span start");
        for _ in blocks.clone() {
            crate::metrics::metrics().fetched_block(priority.label());
        }
        let writer = self
            .tiers
            .disk()
            .and_then(|cache| cache.span_writer(entry, blocks));
        if let Some(mut writer) = writer {
            let range = writer.range();
            // Pieces are written as they arrive, on this task: page-cache writes of a few
            // hundred KiB, cheaper here than the hop to a blocking thread.
            let mut sink = |at: u64, piece: &[u8]| {
                writer.push(at, piece).map_err(|e| StoreError::Other {
                    operation: "cache write".into(),
                    message: e.to_string(),
                })?;
                let stored = writer.blocks_stored();
                progress.send_if_modified(|done| std::mem::replace(done, stored) != stored);
                Ok(())
            };
            self.store.get_range_into(version, range, &mut sink).await?;
            writer.finish();
            tracing::trace!(first, last, "span end");
            return Ok(());
        }
        // No room on disk: one GET, kept in memory rather than fetched again per block.
        let bs = self.tiers.block_size;
        let range = first * bs..(last * bs).min(version.size);
        let bytes = self.store.get_range(version, range).await?;
        for index in first..last {
            let from = ((index - first) * bs) as usize;
            let block = bytes.slice(from..(from + bs as usize).min(bytes.len()));
            self.keep_in_memory(version, index, block).await;
        }
        Ok(())
    }

    /// Fetches `blocks` of `version` with one GET for `stream`, which holds each block (and
    /// with it `lease`) as soon as it is complete, until it has been read.
    async fn stream_into(
        &self,
        version: &ObjectVersion,
        blocks: Range<u64>,
        priority: Priority,
        stream: &Weak<Stream>,
        lease: &Arc<Lease>,
        progress: &watch::Sender<u64>,
    ) -> Result<(), FsError> {
        let (first, last) = (blocks.start, blocks.end);
        tracing::trace!(
            first,
            last,
            priority = priority.label(),
            "stream span start"
        );
        for _ in blocks.clone() {
            crate::metrics::metrics().fetched_block(priority.label());
        }
        let mut blocks = BlockCollector::new(
            blocks,
            self.tiers.block_size,
            version.size,
            &self.tiers.buffers,
        );
        let range = blocks.range();
        let mut sink = |at: u64, piece: &[u8]| {
            let done = blocks
                .push(at, piece)
                .map_err(|message| StoreError::Other {
                    operation: "stream span".into(),
                    message,
                })?;
            for (index, bytes) in done {
                // Every open of the file is closed: nobody is left to read it.
                if let Some(stream) = stream.upgrade() {
                    stream.hold(index, bytes, lease);
                }
                progress.send_replace(index - first + 1);
            }
            Ok(())
        };
        self.store.get_range_into(version, range, &mut sink).await?;
        crate::read::stream::span_fetched(stream, first, last);
        Ok(())
    }
}
