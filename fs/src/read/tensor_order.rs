//! The order in which a loader will want a safetensors file's blocks, from its header.
//!
//! safetensors writers store tensors by descending dtype, then by name, so a file of several
//! dtypes (fp16 weights with fp32 norms, say) holds one region per dtype. Loaders read tensors
//! either in file order (`cp`, newer `safe_open().keys()`, which lists tensors by offset) or
//! by name (older `load_file`, anything that sorts the keys): a load by name walks every
//! dtype region at once, a few MiB here, a few MiB there. A sweep in file order then fetches
//! one region while the loader waits for blocks of the others.
//!
//! The header tells the orders apart. A sweep starts in file order from the read that showed
//! the load; a load by name shows itself by a jump (a read that continues no recent one) to
//! just before a tensor that comes first by name: only tiny tensors (read with the header's
//! pages) before it by name, and far from the start of the data, where file order begins.
//! The sweep then takes the rest in name order (see `sweep`).

use std::ops::Range;

/// How far before a tensor a read may begin and still be the loader's read of it: the
/// kernel's readahead for a page fault starts half its window (the mount's 4 MiB) before
/// the faulting page.
const BEGIN_SLACK: u64 = 4 << 20;

/// Most tensors taken from one header (a header is at most 100 MB; real ones hold a few
/// thousand).
const MAX_TENSORS: usize = 1 << 20;

/// The byte ranges of a safetensors file's tensors, in name order.
#[derive(Debug)]
pub struct TensorLayout {
    by_name: Vec<Range<u64>>,
    /// Starts of the tensors a load by name begins with (see [`TensorLayout::parse`]).
    name_first: Vec<u64>,
}

impl TensorLayout {
    /// Parses `header` (the file's first bytes: 8-byte length, then the JSON) of a file of
    /// `size` bytes. `None` for anything that is not a well-formed header whose tensors lie
    /// inside the file: the caller then sweeps in file order.
    pub fn parse(header: &[u8], size: u64) -> Option<TensorLayout> {
        let header_end = super::load_detect::header_end(header, size)?;
        let json = header.get(8..usize::try_from(header_end).ok()?)?;
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json).ok()?;
        let mut named: Vec<(&str, Range<u64>)> = Vec::with_capacity(map.len());
        for (name, info) in &map {
            if name == "__metadata__" {
                continue;
            }
            let offsets = info.get("data_offsets")?.as_array()?;
            let [from, to] = offsets.as_slice() else {
                return None;
            };
            let (from, to) = (from.as_u64()?, to.as_u64()?);
            let (start, end) = (header_end.checked_add(from)?, header_end.checked_add(to)?);
            if from > to || end > size || named.len() == MAX_TENSORS {
                return None;
            }
            if start < end {
                named.push((name, start..end));
            }
        }
        named.sort_by(|a, b| a.0.cmp(b.0));
        let by_name: Vec<Range<u64>> = named.into_iter().map(|(_, range)| range).collect();
        // The tensors first by name up to the first big one: a loader by name reads the
        // small ones from the header's pages and faults first on one of these.
        let mut before = 0u64;
        let mut name_first = Vec::new();
        for range in &by_name {
            if range.start > header_end + BEGIN_SLACK {
                name_first.push(range.start);
            }
            before += range.end - range.start;
            if before > BEGIN_SLACK {
                break;
            }
        }
        Some(TensorLayout {
            by_name,
            name_first,
        })
    }

    /// Whether a jump to `offset` is a loader by name beginning: it lands at most
    /// [`BEGIN_SLACK`] before one of the tensors first by name.
    pub fn begins_load_by_name(&self, offset: u64) -> bool {
        self.name_first
            .iter()
            .any(|&start| offset <= start && offset.saturating_add(BEGIN_SLACK) >= start)
    }

    /// Every block of the file (`bs` bytes each, `size` bytes in all) in the order a loader
    /// by name first needs it, then the blocks no tensor covers.
    pub fn name_order_blocks(&self, bs: u64, size: u64) -> Vec<u64> {
        let blocks = size.div_ceil(bs);
        let mut seen = vec![false; blocks as usize];
        let mut order = Vec::with_capacity(seen.len());
        let tensor_blocks = self
            .by_name
            .iter()
            .flat_map(|range| range.start / bs..=(range.end - 1) / bs);
        for index in tensor_blocks.chain(0..blocks) {
            if let Some(seen) = seen.get_mut(index as usize).filter(|seen| !**seen) {
                *seen = true;
                order.push(index);
            }
        }
        order
    }
}

/// A header for tensors (name, length), stored like safetensors writers do: the ones in
/// `first_group` first, each group by name.
#[cfg(test)]
pub(crate) fn safetensors_header(tensors: &[(&str, u64)], first_group: &[&str]) -> (Vec<u8>, u64) {
    let mut stored: Vec<&(&str, u64)> = tensors.iter().collect();
    stored.sort_by_key(|(name, _)| (!first_group.contains(name), *name));
    let mut at = 0;
    let entries: Vec<String> = stored
        .iter()
        .map(|(name, len)| {
            let entry = format!(
                r#""{name}":{{"dtype":"U8","shape":[{len}],"data_offsets":[{at},{}]}}"#,
                at + len
            );
            at += len;
            entry
        })
        .collect();
    let json = format!(
        r#"{{"__metadata__":{{"format":"pt"}},{}}}"#,
        entries.join(",")
    );
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    let size = bytes.len() as u64 + at;
    (bytes, size)
}

/// The tests' file of two regions: stored a.tiny (4 KiB) and c.norm (12 MiB), the fp32
/// region, then b.w and d.w (8 MiB each); by name a load goes a.tiny, b.w, c.norm, d.w,
/// back and forth between the regions.
#[cfg(test)]
pub(crate) struct TwoRegions {
    pub header: Vec<u8>,
    pub size: u64,
    pub data_start: u64,
    pub c_norm: u64,
    pub b_w: u64,
    pub d_w: u64,
}

#[cfg(test)]
pub(crate) fn two_regions() -> TwoRegions {
    const MIB: u64 = 1 << 20;
    let tensors = [
        ("a.tiny", 4096),
        ("b.w", 8 * MIB),
        ("c.norm", 12 * MIB),
        ("d.w", 8 * MIB),
    ];
    let (header, size) = safetensors_header(&tensors, &["a.tiny", "c.norm"]);
    let data_start = header.len() as u64;
    let (c_norm, b_w) = (data_start + 4096, data_start + 4096 + 12 * MIB);
    TwoRegions {
        header,
        size,
        data_start,
        c_norm,
        b_w,
        d_w: b_w + 8 * MIB,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::tensor_order::safetensors_header as header;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_load_by_name_takes_blocks_in_name_order_from_the_first_tensor_by_name() {
        let TwoRegions {
            header: bytes,
            size,
            data_start: data,
            c_norm,
            b_w,
            d_w,
        } = two_regions();
        let layout = TensorLayout::parse(&bytes, size).unwrap();
        // a.tiny came with the header's pages; the loader's first fault is at b.w, and the
        // kernel's read for it begins 2 MiB before.
        assert!(layout.begins_load_by_name(b_w - 2 * MIB));
        assert!(layout.begins_load_by_name(b_w));
        assert!(!layout.begins_load_by_name(b_w + MIB), "inside b.w");
        // Reads at the start of the data or elsewhere (model order, shuffled) do not: 20 MiB
        // come before d.w by name.
        for offset in [data, data + MIB, c_norm + 2 * MIB, d_w - MIB, d_w] {
            assert!(!layout.begins_load_by_name(offset), "{offset}");
        }
        let order = layout.name_order_blocks(MIB, size);
        let at = |offset: u64| order.iter().position(|&b| b == offset / MIB).unwrap();
        assert_eq!(at(data), 0, "a.tiny first");
        assert_eq!(at(b_w), 1, "then b.w");
        assert!(
            at(b_w + 7 * MIB) < at(c_norm + 2 * MIB),
            "b.w before c.norm"
        );
        assert!(at(c_norm + 2 * MIB) < at(d_w + MIB), "c.norm before d.w");
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..size.div_ceil(MIB)).collect::<Vec<_>>(),
            "every block once"
        );
    }

    #[test]
    fn file_order_fits_a_file_whose_first_tensor_by_name_is_stored_first() {
        let (bytes, size) = header(&[("a", 8 * MIB), ("b", 8 * MIB)], &[]);
        let layout = TensorLayout::parse(&bytes, size).unwrap();
        let data = bytes.len() as u64;
        for offset in [data, data + 4 * MIB, data + 8 * MIB] {
            assert!(!layout.begins_load_by_name(offset), "{offset}");
        }
    }

    #[test]
    fn headers_that_do_not_add_up_give_no_layout() {
        let (bytes, size) = header(&[("a", 100)], &[]);
        assert!(
            TensorLayout::parse(&bytes, size - 1).is_none(),
            "past the end"
        );
        for json in [
            r#"{"a":{"data_offsets":[10,5]}}"#,
            r#"{"a":{"data_offsets":[0]}}"#,
            r#"{"a":{"shape":[1]}}"#,
            r#"["a"]"#,
            "not json",
        ] {
            let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(json.as_bytes());
            let size = bytes.len() as u64 + 100;
            assert!(TensorLayout::parse(&bytes, size).is_none(), "{json}");
        }
    }
}
