//! What the read path knows about model files.
//!
//! - `.safetensors`/`.sft`: the header (`u64` little-endian length `N`, then `N` bytes of JSON)
//!   ends at `8 + N`. Reads inside it are header scans (ComfyUI reads every model's header at
//!   start-up) and must never start a download of the file; a read reaching more than
//!   [`LOAD_MARGIN`] past it means the model is being loaded.
//! - `.ckpt`, `.pt`, `.pth`, `.bin`, `.gguf`: no header to parse; the file counts as being
//!   loaded once reads have touched several distinct blocks.
//!
//! Header lengths are validated (at most 100,000,000 bytes, within the file); anything odd
//! falls back to the generic behaviour.

use std::collections::BTreeSet;

/// Largest safetensors header the format allows.
pub const MAX_HEADER_LEN: u64 = 100_000_000;
/// How far past the header a read must reach before a safetensors file counts as being
/// loaded: the kernel's readahead after a header read can run a little past the header, and
/// that alone must not start a download of the whole file.
pub const LOAD_MARGIN: u64 = 1 << 20;
/// Distinct blocks read before a non-safetensors model file counts as being loaded.
const BLOCKS_BEFORE_LOADING: usize = 4;

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

/// Per open file: has the model started loading?
#[derive(Debug)]
pub struct LoadDetector {
    kind: FileKind,
    header_end: Option<u64>,
    touched: BTreeSet<u64>,
    loading: bool,
}

impl LoadDetector {
    /// A detector for a file of `kind`.
    pub fn new(kind: FileKind) -> LoadDetector {
        LoadDetector {
            kind,
            header_end: None,
            touched: BTreeSet::new(),
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

    /// Records a read of `offset..end` (block size `bs`); true the first time the file
    /// counts as being loaded.
    pub fn observe(&mut self, offset: u64, end: u64, bs: u64) -> bool {
        if self.loading {
            return false;
        }
        let now_loading = match self.kind {
            FileKind::Safetensors => self.header_end.is_some_and(|h| end > h + LOAD_MARGIN),
            FileKind::OtherModel => {
                for b in offset / bs..=end.saturating_sub(1) / bs {
                    self.touched.insert(b);
                }
                self.touched.len() >= BLOCKS_BEFORE_LOADING
            }
            FileKind::Other => false,
        };
        self.loading = now_loading;
        now_loading
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
    fn header_reads_never_mean_loading() {
        let mut d = LoadDetector::new(FileKind::Safetensors);
        assert!(!d.observe(0, 8, 1 << 20));
        d.set_header_end(5000);
        assert!(!d.observe(0, 5000, 1 << 20));
        assert!(d.in_header(4000));
        assert!(
            !d.observe(5000, 70_000, 1 << 20),
            "readahead just past the header"
        );
        assert!(d.observe(5000, 5000 + (2 << 20), 1 << 20), "a data read");
        assert!(!d.observe(9000, 10000, 1 << 20), "reported once");
        let mut other = LoadDetector::new(FileKind::OtherModel);
        let bs = 1 << 20;
        assert!(!other.observe(0, 10, bs));
        assert!(!other.observe(50 * bs, 50 * bs + 10, bs));
        assert!(!other.observe(3 * bs, 3 * bs + 10, bs));
        assert!(other.observe(9 * bs, 9 * bs + 10, bs));
        let mut broken = LoadDetector::new(FileKind::Safetensors);
        broken.not_safetensors();
        assert!(
            !broken.in_header(0),
            "an invalid header falls back to generic reads"
        );
        let mut plain = LoadDetector::new(FileKind::Other);
        assert!(!plain.observe(0, 100 * bs, bs));
    }
}
