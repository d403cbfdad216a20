//! What the read path knows about model files.
//!
//! - `.safetensors`/`.sft`: the header (`u64` little-endian length `N`, then `N` bytes of JSON)
//!   ends at `8 + N`. Reads inside it are header scans (ComfyUI reads every model's header at
//!   start-up) and must never start a download of the file.
//! - A model (those, and `.ckpt`, `.pt`, `.pth`, `.bin`, `.gguf`) counts as being loaded once
//!   past its header a sequential run of reads reaches [`RUN_TO_LOAD`], large reads (the
//!   kernel's full-size requests, which loaders reading whole tensors make in any order) add
//!   up to [`LARGE_TO_LOAD`], or reads have touched a quarter of its blocks. Random small
//!   reads do none of these, so they fetch only their own blocks.
//!
//! Header lengths are validated (at most 100,000,000 bytes, within the file); anything odd
//! falls back to the generic behaviour.

use std::collections::BTreeSet;

/// Largest safetensors header the format allows.
pub const MAX_HEADER_LEN: u64 = 100_000_000;
/// A sequential run of reads this long (in the data region) means the model is being
/// loaded: loaders read tensors front to back, random readers and header scans do not.
pub const RUN_TO_LOAD: u64 = 4 << 20;
/// Reads that start this close to where a run ended continue it (the kernel delivers
/// asynchronous reads slightly out of order).
const RUN_SLACK: u64 = 256 << 10;
/// Runs remembered per open file (several threads read different tensors at once).
const MAX_RUNS: usize = 16;
/// A read at least this long is a large read (the kernel's requests for a small `pread` or a
/// page fault are smaller; for a whole tensor they are full-size, 1 MiB).
const LARGE_READ: u64 = 512 << 10;
/// Large reads past the header adding up to this mean the model is being loaded, in
/// whatever order its tensors are read (ComfyUI's threads read them in model order). Eight
/// threads' first 2 MiB `pread`s reach the daemon as about 15 MiB of large reads at once;
/// at 16 MiB the sweep waited for their answers (65 ms of a 1.3 s cold load).
pub const LARGE_TO_LOAD: u64 = 8 << 20;
/// Share of a file's blocks that, once read, means it is being loaded even without long runs
/// (loaders that touch many small tensors in name order).
const SHARE_TO_LOAD: u64 = 4;

/// The kind of file, from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A safetensors model.
    Safetensors,
    /// Another big model format (`.ckpt`, `.pt`, `.pth`, `.bin`, `.gguf`).
    OtherModel,
    /// Anything else.
    Other,
}

impl FileKind {
    /// Classifies by extension (case-insensitive).
    pub fn from_key(key: &str) -> FileKind {
        let ext = key
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "safetensors" | "sft" => FileKind::Safetensors,
            "ckpt" | "pt" | "pth" | "bin" | "gguf" => FileKind::OtherModel,
            _ => FileKind::Other,
        }
    }
}

/// The end of the safetensors header given the file's first bytes, if valid.
pub fn header_end(first_bytes: &[u8], file_size: u64) -> Option<u64> {
    let n = u64::from_le_bytes(first_bytes.get(..8)?.try_into().ok()?);
    let end = 8u64.checked_add(n)?;
    ((2..=MAX_HEADER_LEN).contains(&n) && end <= file_size).then_some(end)
}

/// The sequential runs of a file's recent reads, `(start, end)`, at most [`MAX_RUNS`].
#[derive(Debug, Default)]
pub struct RecentRuns {
    runs: Vec<(u64, u64)>,
}

impl RecentRuns {
    /// Records a read of `offset..end`: it joins every run it touches or nearly touches,
    /// before or after (the kernel's reads of one readahead window arrive in any order).
    /// Returns the length of the run it is now part of, and whether it joined none (a jump).
    pub fn observe(&mut self, offset: u64, end: u64) -> (u64, bool) {
        let (mut start, mut stop) = (offset, end);
        let before = self.runs.len();
        self.runs.retain(|&(run_start, run_end)| {
            let near = offset <= run_end + RUN_SLACK && end + RUN_SLACK >= run_start;
            if near {
                (start, stop) = (start.min(run_start), stop.max(run_end));
            }
            !near
        });
        let jumped = self.runs.len() == before;
        if self.runs.len() == MAX_RUNS {
            self.runs.remove(0);
        }
        self.runs.push((start, stop));
        (stop - start, jumped)
    }
}

/// Per open file: has the model started loading?
#[derive(Debug)]
pub struct LoadDetector {
    kind: FileKind,
    header_end: Option<u64>,
    runs: RecentRuns,
    touched: BTreeSet<u64>,
    /// Bytes of large reads past the header.
    large: u64,
    loading: bool,
}

impl LoadDetector {
    /// A detector for a file of `kind`.
    pub fn new(kind: FileKind) -> LoadDetector {
        LoadDetector {
            kind,
            header_end: None,
            runs: RecentRuns::default(),
            touched: BTreeSet::new(),
            large: 0,
            loading: false,
        }
    }

    /// Records the safetensors header end once known.
    pub fn set_header_end(&mut self, end: u64) {
        self.header_end = Some(end);
    }

    /// The file's first bytes are not a valid safetensors header: treat it as a plain file.
    pub fn not_safetensors(&mut self) {
        if self.kind == FileKind::Safetensors {
            self.kind = FileKind::Other;
        }
    }

    /// The known header end.
    pub fn header_end(&self) -> Option<u64> {
        self.header_end
    }

    /// Whether reads at `offset` are still inside the header (no readahead there).
    pub fn in_header(&self, offset: u64) -> bool {
        self.kind == FileKind::Safetensors && self.header_end.is_none_or(|end| offset < end)
    }

    /// Whether the file counts as being loaded (a sweep fetches the rest of it).
    pub fn is_loading(&self) -> bool {
        self.loading
    }

    /// Records a read of `offset..end` of a file of `size` bytes (block size `bs`); true the
    /// first time the file counts as being loaded.
    pub fn observe(&mut self, offset: u64, end: u64, bs: u64, size: u64) -> bool {
        if self.loading || self.kind == FileKind::Other {
            return false;
        }
        let data_start = match self.kind {
            FileKind::Safetensors => match self.header_end {
                Some(h) => h,
                None => return false,
            },
            _ => 0,
        };
        if end <= data_start {
            return false;
        }
        let offset = offset.max(data_start);
        let (run, _) = self.runs.observe(offset, end);
        for b in offset / bs..=(end - 1) / bs {
            self.touched.insert(b);
        }
        if end - offset >= LARGE_READ {
            self.large += end - offset;
        }
        let blocks = size.div_ceil(bs).max(1);
        let share = self.touched.len() as u64 >= (blocks / SHARE_TO_LOAD).max(4);
        self.loading = run >= RUN_TO_LOAD || self.large >= LARGE_TO_LOAD || share;
        self.loading
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_header_bounds() {
        assert_eq!(FileKind::from_key("a/B.SafeTensors"), FileKind::Safetensors);
        assert_eq!(FileKind::from_key("x.gguf"), FileKind::OtherModel);
        assert_eq!(FileKind::from_key("config.yaml"), FileKind::Other);
        assert_eq!(FileKind::from_key("noext"), FileKind::Other);
        let mut first = 100u64.to_le_bytes().to_vec();
        first.extend_from_slice(b"{}");
        assert_eq!(header_end(&first, 1000), Some(108));
        assert_eq!(header_end(&first, 50), None, "beyond the file");
        assert_eq!(
            header_end(&u64::MAX.to_le_bytes(), u64::MAX),
            None,
            "absurd"
        );
        assert_eq!(header_end(&[1, 2, 3], 1000), None, "short");
    }

    #[test]
    fn header_reads_and_random_reads_never_mean_loading() {
        let bs = 1 << 20;
        let size = 1 << 30;
        let mut d = LoadDetector::new(FileKind::Safetensors);
        assert!(!d.observe(0, 8, bs, size), "header end unknown");
        d.set_header_end(5000);
        assert!(!d.observe(0, 5000, bs, size));
        assert!(d.in_header(4000));
        assert!(
            !d.observe(5000, 300_000, bs, size),
            "readahead just past the header"
        );
        for i in 0..40u64 {
            let at = 7_000_000 + i * 20_000_000;
            assert!(!d.observe(at, at + 256 * 1024, bs, size), "random read {i}");
        }
        let mut loader = LoadDetector::new(FileKind::Safetensors);
        loader.set_header_end(5000);
        let mut at = 100 << 20;
        let mut loaded = false;
        while !loaded && at < 200 << 20 {
            loaded = loader.observe(at, at + (1 << 20), bs, size);
            at += 1 << 20;
        }
        assert!(
            loaded && at <= (100 << 20) + RUN_TO_LOAD,
            "a sequential run means loading"
        );
        assert!(!loader.observe(at, at + 10, bs, size), "reported once");

        // The kernel's reads of one 4 MiB readahead window, handled out of order.
        let mut window = LoadDetector::new(FileKind::Safetensors);
        window.set_header_end(5000);
        let at = 300 << 20;
        let order = [0, 3, 2, 1].map(|i| at + i * (1 << 20));
        for (n, offset) in order.into_iter().enumerate() {
            let loaded = window.observe(offset, offset + (1 << 20), bs, size);
            assert_eq!(loaded, n == 3, "after read {n}");
        }

        let mut broken = LoadDetector::new(FileKind::Safetensors);
        broken.not_safetensors();
        assert!(
            !broken.in_header(0),
            "an invalid header falls back to generic reads"
        );
        let mut plain = LoadDetector::new(FileKind::Other);
        assert!(!plain.observe(0, 100 * bs, bs, size));
    }

    #[test]
    fn large_reads_in_any_order_mean_loading() {
        let (bs, size) = (1 << 20, 1 << 30);
        let mut d = LoadDetector::new(FileKind::Safetensors);
        d.set_header_end(5000);
        // 1 MiB reads scattered far apart (tensors in model order): no run, few blocks.
        let reads = LARGE_TO_LOAD / bs;
        for i in 0..reads {
            let at = ((i * 397) % 900 + 10) * bs;
            let loaded = d.observe(at, at + bs, bs, size);
            assert_eq!(loaded, i + 1 == reads, "after {} large reads", i + 1);
        }
        let mut small = LoadDetector::new(FileKind::Safetensors);
        small.set_header_end(5000);
        for i in 0..200u64 {
            let at = ((i * 397) % 1000 + 10) * bs;
            assert!(
                !small.observe(at, at + 256 * 1024, bs, size),
                "small read {i}"
            );
        }
    }

    #[test]
    fn touching_a_quarter_of_a_small_model_means_loading() {
        let bs = 1 << 20;
        let mut d = LoadDetector::new(FileKind::OtherModel);
        let size = 16 * bs;
        assert!(!d.observe(0, 10, bs, size));
        assert!(!d.observe(9 * bs, 9 * bs + 10, bs, size));
        assert!(!d.observe(3 * bs, 3 * bs + 10, bs, size));
        assert!(d.observe(12 * bs, 12 * bs + 10, bs, size));
    }
}
