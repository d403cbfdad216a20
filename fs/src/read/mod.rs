//! The read path: *what* to fetch for each read of a pinned object version.
//!
//! A FUSE read of `offset..offset+len` is split into fixed-size blocks fetched by the
//! [`fetch`] engine (memory, disk, then one ranged GET with `If-Match` per block, single-flight).
//! Around it, per open file:
//!
//! - safetensors headers are kept in a small memory cache of their own, so repeated header
//!   scans (ComfyUI's asset scan) need no I/O, and reads inside a header never trigger
//!   readahead;
//! - a [`Readahead`] window grows on sequential reads (tolerating the kernel's out-of-order
//!   async reads) and resets on jumps; random reads fetch only the aligned blocks they touch;
//! - once a model file is being loaded ([`load_detect`]), a [`sweep`] fetches every remaining
//!   block at full concurrency from the read position, while demand reads go first; a model
//!   the disk cache cannot hold is streamed through memory instead ([`stream`]), never
//!   fetched twice.
//!
//! Cache keys include the ETag, so a block of one version is never served for another.

mod block_buffers;
mod fetch;
mod header_scan;
pub mod load_detect;
mod readahead;
mod span_size;
mod stream;
mod sweep;
mod sweep_plan;
mod tensor_order;

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;

pub use fetch::{Fetcher, Priority, SharedTiers};
pub use readahead::Readahead;

use crate::cache::disk::{CacheEntry, EntryId};
use crate::cache::{DiskCache, MemoryTier};
use crate::error::FsError;
use crate::store::{ObjectStore, ObjectVersion};
use load_detect::{FileKind, LoadDetector};

/// Bytes fetched first to learn a safetensors header: most headers (LoRAs, checkpoints of
/// a few hundred tensors) fit, and the transfer costs well under a millisecond next to a
/// block's ten.
pub const HEADER_PROBE: u64 = 64 << 10;

/// Most FUSE reads the kernel sends at once (the mount's `max_background`); each holds a
/// reply of up to 1 MiB.
pub const MAX_READS_IN_FLIGHT: u64 = 64;

/// Unused block buffers kept for the next blocks a streamed load collects (see
/// `block_buffers`): enough for the bursts between a stream's blocks landing and the memory
/// tier letting older ones go.
pub const SPARE_BLOCK_BUFFERS: u64 = 32;

/// The start of a safetensors file, kept in memory: where its header ends, and its first
/// bytes (the header, or the whole probe when that is longer, since the kernel's reads
/// around a small header reach past it in whole pages).
#[derive(Clone, Debug)]
struct FileStart {
    header_end: u64,
    bytes: Bytes,
}

/// Tunables of the read path.
#[derive(Clone, Debug)]
pub struct ReadConfig {
    /// Bytes per block: the unit of fetching and caching.
    pub block_size: u64,
    /// Memory budget for block data in bytes: cached blocks plus the downloads of background
    /// fetches in flight (see [`ReadConfig::memory_tier_bytes`]).
    pub memory_cache_bytes: u64,
    /// Memory budget for safetensors headers.
    pub header_cache_bytes: u64,
    /// Largest readahead window, in blocks.
    pub max_readahead_blocks: u64,
    /// Most background fetches (readahead and sweeps) in flight at once, across all files.
    pub prefetch_concurrency: usize,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            block_size: 1 << 20,
            memory_cache_bytes: 512 << 20,
            header_cache_bytes: 64 << 20,
            max_readahead_blocks: 32,
            // 32 sweep GETs of 8 MiB (256 MiB in flight): on 2 cores, 16 left the link idle
            // while the daemon and the reader had the CPU (cold mmap load 2.4 s vs 2.0 s).
            prefetch_concurrency: 32,
        }
    }
}

impl ReadConfig {
    /// Most bytes outside the memory tier: one sweep span per background slot, a reply buffer
    /// for each of the kernel's [`MAX_READS_IN_FLIGHT`] reads, and the spare block buffers.
    pub fn in_flight_bytes(&self) -> u64 {
        self.prefetch_concurrency as u64 * sweep_plan::SPAN_BLOCKS * self.block_size
            + (MAX_READS_IN_FLIGHT + SPARE_BLOCK_BUFFERS) * self.block_size
    }

    /// What the memory tier may hold: the memory budget less the bytes in flight, so the
    /// daemon's block data stays within `memory_cache_bytes` (at least 16 blocks).
    pub fn memory_tier_bytes(&self) -> u64 {
        self.memory_cache_bytes
            .saturating_sub(self.in_flight_bytes())
            .max(16 * self.block_size)
    }
}

#[derive(Debug)]
struct AccessState {
    readahead: Readahead,
    load: LoadDetector,
    jumps: sweep_plan::ReadJumps,
    /// How the file's load is served, once it is being loaded.
    loading: Loading,
}

/// How a file being loaded is served.
#[derive(Debug, Default)]
enum Loading {
    /// Not being loaded (as far as this open knows).
    #[default]
    No,
    /// Swept to disk (from the moment the load shows, while the cache decides whether it can
    /// hold the file).
    Disk(Arc<sweep_plan::SweepPlan>),
    /// Streamed through memory: the disk cache cannot hold it.
    Stream(Arc<stream::Stream>),
}

impl Loading {
    fn plan(&self) -> Option<&Arc<sweep_plan::SweepPlan>> {
        match self {
            Loading::No => None,
            Loading::Disk(plan) => Some(plan),
            Loading::Stream(stream) => Some(stream.plan()),
        }
    }
}

/// What one read sets going besides its own fetch, decided by [`BlockReader::plan_read`].
struct ReadPlan {
    /// Where the read's missing blocks come from.
    route: Route,
    /// A sweep to start: its plan, and the file's first bytes when they hold all the header.
    sweep: Option<(Arc<sweep_plan::SweepPlan>, Option<Bytes>)>,
    /// Blocks to read ahead in the background.
    read_ahead: std::ops::Range<u64>,
}

/// Where a read's missing blocks come from.
enum Route {
    /// One by one, through the tiers (readahead may run ahead).
    Blocks,
    /// Streamed to disk in spans (a file being loaded that the cache holds).
    Disk,
    /// Held by the file's stream, or fetched one by one into memory (see [`stream`]).
    Stream(Arc<stream::Stream>),
}

/// One open file: its pinned version, its disk cache entry (if any) and its access pattern.
#[derive(Debug)]
pub struct OpenObject {
    /// The version every read of this handle returns.
    pub version: ObjectVersion,
    /// The version's disk cache entry, held (and so protected from eviction) while open.
    pub disk: Option<Arc<CacheEntry>>,
    kind: FileKind,
    access: Mutex<AccessState>,
}

/// Reads byte ranges of pinned object versions through the cache tiers.
pub struct BlockReader {
    fetcher: Arc<Fetcher>,
    headers: moka::future::Cache<(Arc<str>, Arc<str>), FileStart>,
    scans: header_scan::HeaderScans,
    bucket: String,
    /// The store's endpoint and addressing style: part of every disk entry's identity.
    origin: String,
    config: ReadConfig,
}

impl std::fmt::Debug for BlockReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockReader")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl BlockReader {
    /// A reader over `bucket` in `store` with tiers of its own (one volume per process).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        bucket: &str,
        config: ReadConfig,
        disk: Option<Arc<DiskCache>>,
    ) -> Arc<BlockReader> {
        let tiers = SharedTiers::new(&config, disk);
        BlockReader::with_tiers(store, bucket, config, &tiers)
    }

    /// A reader over `bucket` in `store` through tiers shared with the process's other
    /// volumes.
    pub fn with_tiers(
        store: Arc<dyn ObjectStore>,
        bucket: &str,
        config: ReadConfig,
        tiers: &SharedTiers,
    ) -> Arc<BlockReader> {
        let origin = store.origin().address();
        let fetcher = Arc::new(Fetcher::new(store, tiers));
        let headers = moka::future::Cache::builder()
            .weigher(|_k: &(Arc<str>, Arc<str>), v: &FileStart| {
                v.bytes.len().try_into().unwrap_or(u32::MAX)
            })
            .max_capacity(config.header_cache_bytes)
            .build();
        Arc::new(BlockReader {
            fetcher,
            headers,
            scans: header_scan::HeaderScans::default(),
            bucket: bucket.to_string(),
            origin,
            config,
        })
    }

    /// If `file`'s disk entry is complete but not verified, checks every block's CRC in the
    /// background and seals it, so later opens (in any process) can use passthrough.
    pub fn verify_in_background(&self, file: &OpenObject) {
        if let Some(entry) = &file.disk {
            self.fetcher.verify_in_background(entry);
        }
    }

    /// The fetch engine.
    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
    }

    /// The memory tier (for its counters).
    pub fn memory(&self) -> &MemoryTier {
        self.fetcher.tiers().memory()
    }

    /// The disk tier, if configured.
    pub fn disk(&self) -> Option<&Arc<DiskCache>> {
        self.fetcher.tiers().disk()
    }

    /// The block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.config.block_size
    }

    /// Starts reading `version`: opens (or creates) its disk cache entry.
    pub async fn open(&self, version: ObjectVersion) -> OpenObject {
        let disk = match self.fetcher.tiers().disk() {
            Some(cache) if version.size > 0 => {
                let cache = cache.clone();
                let id = EntryId {
                    origin: self.origin.clone(),
                    bucket: self.bucket.clone(),
                    key: version.key.to_string(),
                    etag: version.etag.to_string(),
                    size: version.size,
                    block_size: self.config.block_size,
                };
                let checksum = version.checksum;
                tokio::task::spawn_blocking(move || cache.entry_for(&id, checksum))
                    .await
                    .ok()
                    .flatten()
            }
            _ => None,
        };
        let kind = FileKind::from_key(&version.key);
        let mut load = LoadDetector::new(kind);
        if kind == FileKind::Safetensors {
            if let Some(start) = self
                .headers
                .get(&(version.key.clone(), version.etag.clone()))
                .await
            {
                load.set_header_end(start.header_end);
            }
        }
        OpenObject {
            version,
            disk,
            kind,
            access: Mutex::new(AccessState {
                readahead: Readahead::default(),
                load,
                jumps: sweep_plan::ReadJumps::default(),
                loading: Loading::No,
            }),
        }
    }

    /// Called when `file`, in folder `dir`, has been opened: if the folder is being scanned
    /// for headers (see [`header_scan`]), learns in the background the headers of the next
    /// safetensors files after it (`files_after`, asked for only then) that are not known.
    pub async fn opened_in(
        self: &Arc<Self>,
        file: &OpenObject,
        dir: u64,
        files_after: impl FnOnce() -> Vec<ObjectVersion>,
    ) {
        if file.kind != FileKind::Safetensors || !self.scans.note(dir) {
            return;
        }
        let ahead: Vec<ObjectVersion> = files_after()
            .into_iter()
            .filter(|v| FileKind::from_key(&v.key) == FileKind::Safetensors && v.size > 0)
            .take(header_scan::SCAN_AHEAD)
            .filter(|v| !self.header_known(v) && self.scans.claim(v))
            .collect();
        if ahead.is_empty() {
            return;
        }
        tracing::debug!(
            dir,
            files = ahead.len(),
            "header scan: learning headers ahead"
        );
        let this = self.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            futures::stream::iter(ahead)
                .for_each_concurrent(header_scan::SCAN_CONCURRENCY, |version| {
                    let this = this.clone();
                    async move {
                        let file = this.open(version).await;
                        if let Err(e) = this.known_header(&file, 0).await {
                            tracing::debug!(key = %file.version.key, "header prefetch failed: {e}");
                        }
                        this.prove_read(&file.version).await;
                        this.scans.release(&file.version);
                    }
                })
                .await;
        });
    }

    /// Asks S3 whether this volume may read `version`, unless its credentials showed that
    /// already. A header learned from a tier other volumes fill proves nothing, and the open
    /// of the file would then send the HeadObject: a scan asks for its files' proofs
    /// together, not one after another as it opens them.
    async fn prove_read(&self, version: &ObjectVersion) {
        let store = self.fetcher.store();
        if store.proves_read(&version.key, &version.etag) {
            return;
        }
        if let Err(e) = store.head(&version.key).await {
            tracing::debug!(key = %version.key, "header scan: read proof failed: {e}");
        }
    }

    fn header_known(&self, version: &ObjectVersion) -> bool {
        self.headers
            .contains_key(&(version.key.clone(), version.etag.clone()))
    }

    /// Reads up to `len` bytes at `offset` for a FUSE reply; short only at the end of the
    /// object.
    pub async fn read(
        self: &Arc<Self>,
        file: &Arc<OpenObject>,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, FsError> {
        let size = file.version.size;
        if offset >= size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = offset.saturating_add(len).min(size);
        let bytes = self.read_range(file, offset, end).await?;
        self.fetcher.served(file, offset, end);
        Ok(bytes)
    }

    /// Bytes `offset..end` of `file` (within the object).
    async fn read_range(
        self: &Arc<Self>,
        file: &Arc<OpenObject>,
        offset: u64,
        end: u64,
    ) -> Result<Bytes, FsError> {
        let mut start = None;
        if file.kind == FileKind::Safetensors {
            if let Some(known) = self.known_header(file, end).await? {
                if end <= known.len() as u64 {
                    return Ok(known.slice(offset as usize..end as usize));
                }
                start = Some(known);
            }
        }
        let plan = self.plan_read(file, offset, end, start);
        let route = self.start_background(file, plan);

        let bs = self.config.block_size;
        let (first, last) = (offset / bs, (end - 1) / bs);
        if let Some(bytes) = self.fetcher.read_known_range(file, offset, end).await {
            return Ok(bytes);
        }
        // A file being loaded streams its missing blocks to disk, reads them back from the
        // page cache in one piece, and fetches a little ahead of each reader; anything that
        // did not land there goes the block path below.
        if let (Some(entry), Route::Disk) = (file.disk.as_ref(), &route) {
            let until = first + self.fetcher.span_blocks();
            self.fetcher
                .fetch_to_disk(&file.version, entry, first..=last, until)
                .await;
            if let Some(bytes) = self.fetcher.read_known_range(file, offset, end).await {
                return Ok(bytes);
            }
        }
        let entry = file.disk.as_ref();
        let stream = match &route {
            Route::Stream(stream) => Some(stream),
            _ => None,
        };
        if let Some(stream) = stream {
            stream.note_reading(first..=last);
            // A streamed span is held in memory until read: it keeps the budgeted size.
            let until = first + sweep_plan::SPAN_BLOCKS;
            self.fetcher
                .fetch_to_stream(&file.version, entry, stream, first..=last, until)
                .await;
        }
        let blocks = try_join_all((first..=last).map(|index| async move {
            match stream.and_then(|stream| stream.peek(index)) {
                Some(held) => Ok(held),
                None => {
                    self.fetcher
                        .block(&file.version, entry, index, Priority::Demand)
                        .await
                }
            }
        }))
        .await?;
        if let Some(stream) = stream {
            // A block fetched ahead is let go once all of it has been read.
            for (index, block) in (first..=last).zip(&blocks) {
                let block_start = index * bs;
                let from = offset.max(block_start) - block_start;
                let to = end.min(block_start + block.len() as u64) - block_start;
                if let Some(done) = stream.consumed(index, from..to) {
                    self.fetcher
                        .keep_in_memory(&file.version, index, done)
                        .await;
                }
            }
        }
        if let [block] = blocks.as_slice() {
            let start = (offset - first * bs) as usize;
            return Ok(block.slice(start..start + (end - offset) as usize));
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (index, block) in (first..=last).zip(blocks) {
            let block_start = index * bs;
            let from = offset.max(block_start) - block_start;
            let to = end.min(block_start + block.len() as u64) - block_start;
            out.extend_from_slice(&block[from as usize..to as usize]);
        }
        Ok(out.freeze())
    }

    /// What this handle knows of the file's first bytes, learning the safetensors header
    /// first if it does not know it yet: every later decision (is this read a header scan or
    /// a model load?) depends on where the header ends. Returns the file's first bytes as
    /// far as they are known in memory (at least up to `want_end` right after learning).
    ///
    /// Learning costs one small ranged GET ([`HEADER_PROBE`] bytes) that the caller is
    /// answered from; the rest of block 0 comes in a second GET, made at the same time, into
    /// the caches. A header scan (ComfyUI reads every model's header at start-up) then waits
    /// for a few KiB per file instead of a whole block, and still leaves block 0 cached for
    /// the next scan.
    async fn known_header(
        &self,
        file: &OpenObject,
        want_end: u64,
    ) -> Result<Option<Bytes>, FsError> {
        let key = (file.version.key.clone(), file.version.etag.clone());
        if let Some(start) = self.headers.get(&key).await {
            let mut access = file.access.lock().unwrap_or_else(|e| e.into_inner());
            if access.load.header_end().is_none() {
                access.load.set_header_end(start.header_end);
            }
            return Ok(Some(start.bytes));
        }
        let known = {
            let access = file.access.lock().unwrap_or_else(|e| e.into_inner());
            access.load.header_end().is_some() || !access.load.in_header(0)
        };
        if known {
            return Ok(self.headers.get(&key).await.map(|start| start.bytes));
        }
        let probe = self
            .fetcher
            .block_prefix(
                &file.version,
                file.disk.as_ref(),
                0,
                HEADER_PROBE.max(want_end),
            )
            .await?;
        let Some(header_end) = load_detect::header_end(&probe, file.version.size) else {
            file.access
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .load
                .not_safetensors();
            return Ok(Some(probe));
        };
        file.access
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .load
            .set_header_end(header_end);
        let bytes = if header_end <= probe.len() as u64 {
            probe
        } else if header_end <= self.config.block_size {
            let block0 = self
                .fetcher
                .block(&file.version, file.disk.as_ref(), 0, Priority::Demand)
                .await?;
            block0.slice(..(header_end as usize).min(block0.len()))
        } else {
            // A header larger than a block is not kept; reads of it go through the blocks.
            return Ok(Some(probe));
        };
        // A copy: a slice would keep a whole cached block alive behind a small weight.
        let start = FileStart {
            header_end,
            bytes: Bytes::copy_from_slice(&bytes),
        };
        self.headers.insert(key, start.clone()).await;
        Ok(Some(start.bytes))
    }

    /// Decides, under the file's access lock, what a read of `offset..end` sets going
    /// besides its own fetch; `file_start` is what is known of the file's first bytes (a
    /// safetensors header). Starts nothing: [`BlockReader::start_background`] does.
    fn plan_read(
        &self,
        file: &OpenObject,
        offset: u64,
        end: u64,
        file_start: Option<Bytes>,
    ) -> ReadPlan {
        let bs = self.config.block_size;
        let no_room = file.disk.as_ref().is_some_and(|e| e.no_room().is_some());
        let mut access = file.access.lock().unwrap_or_else(|e| e.into_inner());
        let access = &mut *access;
        let jumped = !access.load.in_header(offset) && access.jumps.observe(offset, end);
        // Another open of this file streams it (a loader's threads each open it): its
        // reads go through that stream too.
        if no_room && !matches!(access.loading, Loading::Stream(_)) {
            if let Some(stream) = self.fetcher.stream(&file.version) {
                access.loading = Loading::Stream(stream);
            }
        }
        let mut sweep = None;
        if access.load.observe(offset, end, bs, file.version.size)
            && file.disk.is_some()
            && matches!(access.loading, Loading::No)
        {
            let plan = Arc::new(sweep_plan::SweepPlan::new(
                offset / bs,
                bs,
                file.version.size,
                &access.jumps,
            ));
            // The header, when it is all known, shows a load by name (`tensor_order`).
            let header = file_start.filter(|bytes| {
                access
                    .load
                    .header_end()
                    .is_some_and(|end| end <= bytes.len() as u64)
            });
            sweep = Some((plan.clone(), header));
            access.loading = Loading::Disk(plan);
        } else if let Some(plan) = access.loading.plan().filter(|_| jumped) {
            plan.note_jump(offset);
        }
        let route = match &access.loading {
            Loading::Stream(stream) => Route::Stream(stream.clone()),
            Loading::Disk(_) if !no_room => Route::Disk,
            _ => Route::Blocks,
        };
        // Inside the header nothing is prefetched; once a sweep fetches the whole file in
        // 8 MiB spans, 1 MiB readahead GETs would only take its slots and cut its spans into
        // single blocks. Nor for a file the cache cannot hold: its stream reads ahead, and
        // readahead would fetch blocks the stream holds.
        let read_ahead =
            if access.load.in_header(offset) || no_room || !matches!(route, Route::Blocks) {
                0..0
            } else {
                access.readahead.observe(
                    offset,
                    end,
                    bs,
                    self.config.max_readahead_blocks,
                    file.version.size.div_ceil(bs),
                )
            };
        ReadPlan {
            route,
            sweep,
            read_ahead,
        }
    }

    /// Carries out `plan` for `file`: starts its sweep and its readahead as tasks of their
    /// own. Returns where the read's missing blocks come from.
    fn start_background(self: &Arc<Self>, file: &Arc<OpenObject>, plan: ReadPlan) -> Route {
        if let Some((sweep_plan, header)) = plan.sweep {
            sweep::spawn(
                self.fetcher.clone(),
                file,
                sweep_plan,
                header,
                self.config.prefetch_concurrency,
            );
        }
        for index in plan.read_ahead {
            if file
                .disk
                .as_ref()
                .is_some_and(|entry| entry.is_checked(index))
            {
                continue; // on disk already: nothing to fetch, no reason to read it now
            }
            let (fetcher, file) = (self.fetcher.clone(), file.clone());
            tokio::spawn(async move {
                let entry = file.disk.as_ref();
                if let Err(e) = fetcher
                    .block(&file.version, entry, index, Priority::Background)
                    .await
                {
                    tracing::debug!(key = %file.version.key, index, "readahead failed: {e}");
                }
            });
        }
        plan.route
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    /// The block size of the tests with a disk tier.
    const BS: u64 = 1 << 16;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// The default configuration with blocks of [`BS`] bytes.
    fn small_blocks() -> ReadConfig {
        ReadConfig {
            block_size: BS,
            ..ReadConfig::default()
        }
    }

    fn reader(store: Arc<MemoryStore>, block_size: u64) -> Arc<BlockReader> {
        BlockReader::new(
            store,
            "bucket",
            ReadConfig {
                block_size,
                memory_cache_bytes: 1 << 20,
                header_cache_bytes: 1 << 20,
                max_readahead_blocks: 4,
                prefetch_concurrency: 4,
            },
            None,
        )
    }

    /// A reader without a disk tier over a store holding `data` at `key`, and a handle open
    /// on that version.
    async fn open_object(
        key: &str,
        data: Vec<u8>,
        block_size: u64,
    ) -> (Arc<MemoryStore>, Arc<BlockReader>, Arc<OpenObject>) {
        let store = Arc::new(MemoryStore::new());
        let info = store.put(key, data);
        let reader = reader(store.clone(), block_size);
        let file = Arc::new(reader.open(info.version()).await);
        (store, reader, file)
    }

    #[tokio::test]
    async fn reads_across_block_boundaries_are_byte_exact() {
        let data = pattern(10_000);
        let (_, reader, file) = open_object("obj", data.clone(), 1000).await;
        for (offset, len) in [(0, 10), (995, 10), (0, 10_000), (2500, 3333), (9990, 100)] {
            let got = reader.read(&file, offset, len).await.unwrap();
            let end = (offset + len).min(10_000) as usize;
            assert_eq!(&got[..], &data[offset as usize..end], "{offset}+{len}");
        }
        assert!(reader.read(&file, 10_000, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_planner_reads_ahead_only_on_sequential_reads_and_starts_nothing() {
        let (store, reader, file) = open_object("obj", pattern(64_000), 1000).await;
        let first = reader.plan_read(&file, 0, 1000, None);
        assert!(
            first.read_ahead.is_empty(),
            "a handle's first read prefetches nothing"
        );
        let second = reader.plan_read(&file, 1000, 2000, None);
        assert_eq!(second.read_ahead.start, 2, "the block after the read");
        assert!(!second.read_ahead.is_empty());
        let jump = reader.plan_read(&file, 50_000, 51_000, None);
        assert!(jump.read_ahead.is_empty(), "a jump resets readahead");
        for plan in [first, second, jump] {
            assert!(matches!(plan.route, Route::Blocks));
            assert!(plan.sweep.is_none(), "no disk cache, no sweep");
        }
        assert!(store.ranges().is_empty(), "planning fetches nothing");
    }

    #[tokio::test]
    async fn a_load_shows_in_the_plan_as_one_sweep_then_routes_reads_to_disk() {
        let data = pattern(40 * BS as usize);
        let t = reader_with_disk("m.bin", &data, small_blocks()).await;
        let mut sweeps = 0;
        let mut routed_to_disk = 0;
        for index in 0..20 {
            let plan = t
                .reader
                .plan_read(&t.file, index * BS, (index + 1) * BS, None);
            sweeps += usize::from(plan.sweep.is_some());
            if sweeps > 0 {
                assert!(plan.read_ahead.is_empty(), "no readahead once a sweep runs");
            }
            routed_to_disk += usize::from(matches!(plan.route, Route::Disk));
        }
        assert_eq!(sweeps, 1, "a load starts one sweep");
        assert!(
            routed_to_disk > 0,
            "reads of a file being loaded stream to disk"
        );
        assert!(t.store.ranges().is_empty(), "planning fetches nothing");
    }

    #[tokio::test]
    async fn cached_blocks_are_not_fetched_twice() {
        let (store, reader, file) = open_object("obj", pattern(4000), 1000).await;
        reader.read(&file, 3000, 500).await.unwrap(); // a jump: no readahead
        let gets = store.ranges().len();
        reader.read(&file, 3100, 100).await.unwrap();
        assert_eq!(store.ranges().len(), gets);
    }

    /// A reader with a disk tier over a store holding `data` at `key`, and a handle open on
    /// that version.
    struct DiskReader {
        store: Arc<MemoryStore>,
        reader: Arc<BlockReader>,
        file: Arc<OpenObject>,
        disk: Arc<DiskCache>,
        /// The cache directory, removed when the test ends.
        _dir: tempfile::TempDir,
    }

    async fn reader_with_disk(key: &str, data: &[u8], config: ReadConfig) -> DiskReader {
        reader_with_cache(key, data, config, 1 << 30).await
    }

    /// [`reader_with_disk`] with a disk cache limited to `limit` bytes.
    async fn reader_with_cache(
        key: &str,
        data: &[u8],
        config: ReadConfig,
        limit: u64,
    ) -> DiskReader {
        let store = Arc::new(MemoryStore::new());
        let info = store.put(key, data.to_vec());
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskCache::open(&crate::cache::DiskCacheConfig {
            dir: dir.path().to_path_buf(),
            size: crate::cache::CacheSize::Bytes(limit),
        })
        .unwrap();
        let reader = BlockReader::new(store.clone(), "bucket", config, Some(disk.clone()));
        let file = Arc::new(reader.open(info.version()).await);
        DiskReader {
            store,
            reader,
            file,
            disk,
            _dir: dir,
        }
    }

    #[tokio::test]
    async fn a_header_probe_answers_from_a_small_get_and_still_caches_block_0() {
        let json = br#"{"t":{"dtype":"U8","shape":[3000000],"data_offsets":[0,3000000]}}"#;
        let mut data = (json.len() as u64).to_le_bytes().to_vec();
        data.extend_from_slice(json);
        data.extend(pattern(3_000_000));
        let (store, reader, file) = open_object("m.safetensors", data.clone(), 1 << 20).await;
        // The kernel's first read of a scan: a few pages at offset 0.
        let got = reader.read(&file, 0, 16384).await.unwrap();
        assert_eq!(&got[..], &data[..16384]);
        let first = store.ranges()[0].clone();
        assert_eq!(first, 0..HEADER_PROBE, "answered from the probe");
        // Reads in the probe (around the header) need no GET; the rest of block 0 arrives in
        // one more GET and is cached: the whole block then needs none.
        let got = reader.read(&file, 8, 40000).await.unwrap();
        assert_eq!(&got[..], &data[8..40008]);
        let block0 = reader.read(&file, 0, 1 << 20).await.unwrap();
        assert_eq!(&block0[..], &data[..1 << 20]);
        assert_eq!(store.ranges(), vec![0..HEADER_PROBE, HEADER_PROBE..1 << 20]);
        // A second handle knows the header without any request.
        let other = Arc::new(reader.open(file.version.clone()).await);
        let got = reader.read(&other, 0, 8).await.unwrap();
        assert_eq!(&got[..], &data[..8]);
        assert_eq!(store.ranges().len(), 2);
    }

    #[tokio::test]
    async fn a_loading_reader_streams_its_blocks_and_the_next_ones_to_disk_in_one_get() {
        let data = pattern(20 * BS as usize);
        let t = reader_with_disk("m.bin", &data, small_blocks()).await;
        let (file, store) = (&t.file, &t.store);
        let entry = file.disk.clone().unwrap();
        // Block 6 is on disk already: the run ahead stops before it.
        let at = 6 * BS as usize;
        t.disk.write_block(&entry, 6, &data[at..at + BS as usize]);
        let fetcher = t.reader.fetcher();
        fetcher
            .fetch_to_disk(&file.version, &entry, 3..=4, 11)
            .await;
        assert_eq!(store.ranges(), vec![3 * BS..6 * BS]);
        // Every block of the run is on disk and read from there in one piece, no GET.
        let (from, to) = (3 * BS + 10, 6 * BS + 5);
        let got = fetcher.read_known_range(file, from, to).await.unwrap();
        assert_eq!(&got[..], &data[from as usize..to as usize]);
        // A reader of stored blocks fetches nothing, not even ahead of them.
        fetcher
            .fetch_to_disk(&file.version, &entry, 4..=5, 12)
            .await;
        assert_eq!(store.ranges().len(), 1);
        // A read at the last block runs to the end of the file, not beyond.
        fetcher
            .fetch_to_disk(&file.version, &entry, 18..=18, 26)
            .await;
        assert_eq!(store.ranges()[1], 18 * BS..20 * BS);
    }

    #[tokio::test]
    async fn a_load_by_name_is_swept_in_name_order() {
        const MIB: u64 = 1 << 20;
        // A loader by name goes a.tiny, b.w, c.norm, d.w; a sweep in file order from b.w
        // would fetch d.w before c.norm.
        let tensor_order::TwoRegions {
            header: mut data,
            size,
            data_start,
            c_norm,
            b_w,
            d_w,
        } = tensor_order::two_regions();
        data.extend(pattern((size - data_start) as usize));
        // One span at a time: the order of the GETs is the sweep's order.
        let config = ReadConfig {
            prefetch_concurrency: 1,
            ..ReadConfig::default()
        };
        let t = reader_with_disk("m.safetensors", &data, config).await;
        let (reader, file) = (&t.reader, &t.file);
        reader.read(file, 0, 16384).await.unwrap();
        // The kernel's reads for the fault at b.w: a 4 MiB window from 2 MiB before it.
        let reads = (0..4).map(|i| reader.read(file, b_w - 2 * MIB + i * MIB, MIB));
        for got in futures::future::join_all(reads).await {
            assert_eq!(got.unwrap().len() as u64, MIB);
        }
        let entry = file.disk.clone().unwrap();
        let last = size.div_ceil(MIB) - 1;
        for _ in 0..500 {
            if entry.all_checked(0..=last) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            entry.all_checked(0..=last),
            "the sweep fetched the whole file"
        );
        let ranges = t.store.ranges();
        let first_get = |offset: u64| {
            ranges
                .iter()
                .position(|r| r.contains(&offset))
                .unwrap_or_else(|| panic!("no GET for {offset} in {ranges:?}"))
        };
        assert!(
            first_get(c_norm + 6 * MIB) < first_get(d_w + 4 * MIB),
            "c.norm before d.w: {ranges:?}"
        );
        let got = reader.read(file, 0, size).await.unwrap();
        assert!(got[..] == data[..], "byte-exact");
    }

    #[tokio::test]
    async fn a_model_the_disk_cannot_hold_is_streamed_through_memory_and_fetched_once() {
        let data = pattern(96 * BS as usize);
        let config = ReadConfig {
            prefetch_concurrency: 8,
            ..small_blocks()
        };
        // A cache of a sixth of the file.
        let t = reader_with_cache("m.bin", &data, config, 16 * BS).await;
        let entry = t.file.disk.clone().unwrap();
        // A loader's reads, front to back, 128 KiB at a time.
        let step = 2 * BS as usize;
        for at in (0..data.len()).step_by(step) {
            let got = t
                .reader
                .read(&t.file, at as u64, step as u64)
                .await
                .unwrap();
            assert!(got[..] == data[at..at + step], "bytes at {at}");
            // The sweep decides while the reader goes on; give it a turn.
            tokio::task::yield_now().await;
        }
        // The sweep's admission runs on a blocking thread: it may decide after the last read.
        let mut no_room = entry.no_room();
        for _ in 0..500 {
            if no_room.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            no_room = entry.no_room();
        }
        let no_room = no_room.expect("the cache refused the file");
        assert_eq!(no_room.limit, 16 * BS);
        let fetched: u64 = t.store.ranges().iter().map(|r| r.end - r.start).sum();
        let size = data.len() as u64;
        assert!(
            fetched <= size + size / 20,
            "{fetched} bytes fetched for {size}"
        );
        let stored = entry.entry.records().unwrap().iter().flatten().count() as u64;
        assert!(
            stored <= 16,
            "{stored} blocks written for a file the cache cannot hold"
        );
    }

    #[tokio::test]
    async fn a_new_version_fails_reads_of_the_pinned_one() {
        let (store, reader, file) = open_object("obj", pattern(4000), 1000).await;
        reader.read(&file, 3000, 10).await.unwrap();
        store.put("obj", vec![1u8; 4000]);
        let err = reader.read(&file, 0, 10).await.unwrap_err();
        assert_eq!(err.errno(), libc::ESTALE);
        // Blocks already read from the pinned version stay consistent with it.
        let again = reader.read(&file, 3000, 10).await.unwrap();
        assert_eq!(&again[..], &pattern(4000)[3000..3010]);
    }
}
