//! S3's full-object checksums: what a HeadObject with `ChecksumMode=ENABLED` says the whole
//! object's CRC is, as uploaded. The disk cache checks it before sealing an entry for
//! passthrough, so a sealed entry holds the bytes that were uploaded, not only the bytes that
//! were received.

use std::fmt;

use crc_fast::CrcAlgorithm;

/// The CRC of a whole object, as S3 stores it for single-part uploads and for multipart
/// uploads of type `FULL_OBJECT`. (`COMPOSITE` checksums of multipart uploads are CRCs of the
/// parts' CRCs: they cannot be checked from the content alone, and are never one of these.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FullObjectChecksum {
    /// `x-amz-checksum-crc64nvme` (S3's default since 2025).
    Crc64Nvme(u64),
    /// `x-amz-checksum-crc32c` (Castagnoli).
    Crc32c(u32),
    /// `x-amz-checksum-crc32` (ISO-HDLC).
    Crc32(u32),
}

/// The checksum values a HeadObject answered, as their base64 header strings.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChecksumHeaders<'a> {
    /// `x-amz-checksum-crc64nvme`.
    pub crc64nvme: Option<&'a str>,
    /// `x-amz-checksum-crc32c`.
    pub crc32c: Option<&'a str>,
    /// `x-amz-checksum-crc32`.
    pub crc32: Option<&'a str>,
    /// `x-amz-checksum-type`: `FULL_OBJECT` or `COMPOSITE`.
    pub checksum_type: Option<&'a str>,
}

impl FullObjectChecksum {
    /// The full-object checksum the headers carry; `None` when there is none, when it is
    /// `COMPOSITE` (or its value has a `-N` part count), or when a value is malformed (logged
    /// at debug). A value without `x-amz-checksum-type` (servers older than that header)
    /// counts as full-object unless it carries a part count.
    pub fn from_headers(key: &str, headers: &ChecksumHeaders<'_>) -> Option<FullObjectChecksum> {
        if headers
            .checksum_type
            .is_some_and(|t| !t.eq_ignore_ascii_case("FULL_OBJECT"))
        {
            return None;
        }
        let parsed = if let Some(value) = headers.crc64nvme {
            decode_be::<8>(value).map(|b| FullObjectChecksum::Crc64Nvme(u64::from_be_bytes(b)))
        } else if let Some(value) = headers.crc32c {
            decode_be::<4>(value).map(|b| FullObjectChecksum::Crc32c(u32::from_be_bytes(b)))
        } else if let Some(value) = headers.crc32 {
            decode_be::<4>(value).map(|b| FullObjectChecksum::Crc32(u32::from_be_bytes(b)))
        } else {
            return None;
        };
        if parsed.is_none() {
            tracing::debug!(
                key,
                ?headers,
                "ignoring a checksum that is not a full-object CRC"
            );
        }
        parsed
    }

    /// The algorithm's name as S3 spells it in header names (`crc64nvme`, `crc32c`, `crc32`).
    pub fn algorithm(&self) -> &'static str {
        match self {
            FullObjectChecksum::Crc64Nvme(_) => "crc64nvme",
            FullObjectChecksum::Crc32c(_) => "crc32c",
            FullObjectChecksum::Crc32(_) => "crc32",
        }
    }

    /// The value as S3 sends it: base64 of the big-endian bytes.
    pub fn to_base64(&self) -> String {
        match *self {
            FullObjectChecksum::Crc64Nvme(v) => aws_smithy_types::base64::encode(v.to_be_bytes()),
            FullObjectChecksum::Crc32c(v) | FullObjectChecksum::Crc32(v) => {
                aws_smithy_types::base64::encode(v.to_be_bytes())
            }
        }
    }

    /// A running computation of the same algorithm, to check `self` against content.
    pub fn digest(&self) -> ChecksumDigest {
        ChecksumDigest {
            like: *self,
            digest: crc_fast::Digest::new(self.crc_algorithm()),
        }
    }

    /// The checksum of `bytes` (one part of the content) in the same algorithm, as a raw
    /// value for [`FullObjectChecksum::combine`].
    pub fn of(&self, bytes: &[u8]) -> u64 {
        crc_fast::checksum(self.crc_algorithm(), bytes)
    }

    /// The checksum, in the same algorithm, of content made of `parts` in order, each given
    /// as its raw checksum and its length: parts checksummed as they arrived need no second
    /// pass over the content.
    pub fn combine(&self, parts: impl IntoIterator<Item = (u64, u64)>) -> FullObjectChecksum {
        let algorithm = self.crc_algorithm();
        let parts: Vec<(u64, u64)> = parts.into_iter().collect();
        // A cache entry's parts are its blocks, all of one length but the last.
        let shift = parts
            .get(1)
            .filter(|_| parts.len() > 2 * ZeroShift::SETUP_COMBINES)
            .map(|&(_, len)| ZeroShift::new(algorithm, len));
        let whole = parts.into_iter().fold(None, |whole, (part, len)| {
            Some(match whole {
                None => part,
                Some(before) => match &shift {
                    Some(shift) if shift.len == len => shift.combine(before, part),
                    _ => crc_fast::checksum_combine(algorithm, before, part, len),
                },
            })
        });
        self.with_value(whole.unwrap_or_else(|| crc_fast::checksum(algorithm, &[])))
    }

    /// The raw value (32-bit CRCs in the low half).
    pub fn value(&self) -> u64 {
        match *self {
            FullObjectChecksum::Crc64Nvme(v) => v,
            FullObjectChecksum::Crc32c(v) | FullObjectChecksum::Crc32(v) => u64::from(v),
        }
    }

    fn crc_algorithm(&self) -> CrcAlgorithm {
        match self {
            FullObjectChecksum::Crc64Nvme(_) => CrcAlgorithm::Crc64Nvme,
            FullObjectChecksum::Crc32c(_) => CrcAlgorithm::Crc32Iscsi,
            FullObjectChecksum::Crc32(_) => CrcAlgorithm::Crc32IsoHdlc,
        }
    }

    /// A checksum of the same algorithm with raw value `value`.
    fn with_value(&self, value: u64) -> FullObjectChecksum {
        match self {
            FullObjectChecksum::Crc64Nvme(_) => FullObjectChecksum::Crc64Nvme(value),
            // 32-bit CRCs come back in the low half.
            FullObjectChecksum::Crc32c(_) => FullObjectChecksum::Crc32c(value as u32),
            FullObjectChecksum::Crc32(_) => FullObjectChecksum::Crc32(value as u32),
        }
    }
}

/// `crc_fast::checksum_combine` for one fixed length of the second part, in 64 XORs instead
/// of the dozens of 64x64 matrix squarings each call makes (tens of microseconds: sealing an
/// 8 GiB entry combined 8,192 parts). The combine is affine in the first CRC, `c1`:
/// `combine(c1, c2, len) = Z(c1) ^ combine(0, 0, len) ^ c2`, with `Z` linear, so `Z` is
/// tabulated once from `combine` itself on each bit of `c1`.
struct ZeroShift {
    len: u64,
    /// `Z` of each bit of the first CRC.
    columns: [u64; 64],
    /// `combine(0, 0, len)`.
    offset: u64,
}

impl ZeroShift {
    /// Calls of `checksum_combine` that building one costs.
    const SETUP_COMBINES: usize = 65;

    fn new(algorithm: CrcAlgorithm, len: u64) -> ZeroShift {
        let offset = crc_fast::checksum_combine(algorithm, 0, 0, len);
        let columns = std::array::from_fn(|bit| {
            crc_fast::checksum_combine(algorithm, 1 << bit, 0, len) ^ offset
        });
        ZeroShift {
            len,
            columns,
            offset,
        }
    }

    /// The CRC of content `a` then `b`, from `crc_a` and `crc_b` (`b` of this shift's length).
    fn combine(&self, crc_a: u64, crc_b: u64) -> u64 {
        let mut shifted = self.offset ^ crc_b;
        let mut bits = crc_a;
        while bits != 0 {
            shifted ^= self.columns[bits.trailing_zeros() as usize];
            bits &= bits - 1;
        }
        shifted
    }
}

impl fmt::Display for FullObjectChecksum {
    /// `crc64nvme:<base64>`, the algorithm and the value as S3 sends it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.to_base64())
    }
}

/// A full-object checksum being computed over content fed in order.
pub struct ChecksumDigest {
    like: FullObjectChecksum,
    digest: crc_fast::Digest,
}

impl ChecksumDigest {
    /// Feeds the next bytes of the content.
    pub fn update(&mut self, bytes: &[u8]) {
        self.digest.update(bytes);
    }

    /// Forgets everything fed: the next bytes start new content.
    pub fn reset(&mut self) {
        self.digest.reset();
    }

    /// The checksum of everything fed, of the algorithm it was started for.
    pub fn finish(&self) -> FullObjectChecksum {
        self.like.with_value(self.digest.finalize())
    }
}

impl fmt::Debug for ChecksumDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChecksumDigest")
            .field("algorithm", &self.like.algorithm())
            .finish_non_exhaustive()
    }
}

/// Decodes a base64 value of exactly `N` bytes; `None` for anything else (a composite
/// checksum's `-N` suffix is not base64).
fn decode_be<const N: usize>(value: &str) -> Option<[u8; N]> {
    let bytes = aws_smithy_types::base64::decode(value.trim()).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(
        crc64nvme: Option<&str>,
        crc32c: Option<&str>,
        kind: Option<&str>,
    ) -> Option<FullObjectChecksum> {
        FullObjectChecksum::from_headers(
            "k",
            &ChecksumHeaders {
                crc64nvme,
                crc32c,
                crc32: None,
                checksum_type: kind,
            },
        )
    }

    #[test]
    fn base64_big_endian_values_parse_and_print_back() {
        let crc64 = FullObjectChecksum::Crc64Nvme(0x0123_4567_89ab_cdef);
        let text = crc64.to_base64();
        assert_eq!(text, "ASNFZ4mrze8=");
        assert_eq!(full(Some(&text), None, Some("FULL_OBJECT")), Some(crc64));
        let crc32c = FullObjectChecksum::Crc32c(0xdead_beef);
        assert_eq!(crc32c.to_base64(), "3q2+7w==");
        assert_eq!(
            full(None, Some("3q2+7w=="), Some("FULL_OBJECT")),
            Some(crc32c)
        );
        assert_eq!(crc32c.to_string(), "crc32c:3q2+7w==");
    }

    #[test]
    fn composite_and_malformed_checksums_are_none() {
        assert_eq!(full(None, Some("3q2+7w==-3"), Some("COMPOSITE")), None);
        assert_eq!(full(None, Some("3q2+7w==-3"), None), None, "part count");
        assert_eq!(full(None, Some("3q2+7w=="), Some("COMPOSITE")), None);
        assert_eq!(
            full(Some("3q2+7w=="), None, Some("FULL_OBJECT")),
            None,
            "4 bytes for crc64"
        );
        assert_eq!(full(Some("not base64!"), None, None), None);
        assert_eq!(full(None, None, Some("FULL_OBJECT")), None);
        assert!(
            full(None, Some("3q2+7w=="), None).is_some(),
            "no type header"
        );
    }

    #[test]
    fn digests_match_the_published_check_values() {
        // The CRC catalogue's check values: each algorithm over "123456789".
        for (like, check) in [
            (
                FullObjectChecksum::Crc64Nvme(0),
                FullObjectChecksum::Crc64Nvme(0xae8b_1486_0a79_9888),
            ),
            (
                FullObjectChecksum::Crc32c(0),
                FullObjectChecksum::Crc32c(0xe306_9283),
            ),
            (
                FullObjectChecksum::Crc32(0),
                FullObjectChecksum::Crc32(0xcbf4_3926),
            ),
        ] {
            let mut digest = like.digest();
            digest.update(b"1234");
            digest.update(b"56789");
            assert_eq!(digest.finish(), check);
        }
    }

    #[test]
    fn parts_combine_to_the_checksum_of_the_whole() {
        let content: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for like in [
            FullObjectChecksum::Crc64Nvme(0),
            FullObjectChecksum::Crc32c(0),
            FullObjectChecksum::Crc32(0),
        ] {
            let mut whole = like.digest();
            whole.update(&content);
            let parts = content
                .chunks(4096)
                .map(|part| (like.of(part), part.len() as u64));
            assert_eq!(like.combine(parts), whole.finish(), "{}", like.algorithm());
            // Enough parts for the tabulated shift, with a shorter last one.
            let parts = content
                .chunks(64)
                .map(|part| (like.of(part), part.len() as u64));
            assert!(content.chunks(64).len() > 2 * ZeroShift::SETUP_COMBINES);
            assert_eq!(like.combine(parts), whole.finish(), "{}", like.algorithm());
            let mut empty = like.digest();
            empty.update(&[]);
            assert_eq!(like.combine([]), empty.finish());
        }
    }

    #[test]
    fn the_tabulated_shift_combines_as_crc_fast_does() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (algorithm, width) in [
            (CrcAlgorithm::Crc64Nvme, 64),
            (CrcAlgorithm::Crc32Iscsi, 32),
            (CrcAlgorithm::Crc32IsoHdlc, 32),
        ] {
            let mask = if width == 64 {
                u64::MAX
            } else {
                (1 << width) - 1
            };
            for len in [1, 7, 4096, 1 << 20] {
                let shift = ZeroShift::new(algorithm, len);
                for _ in 0..50 {
                    let (a, b) = (next() & mask, next() & mask);
                    assert_eq!(
                        shift.combine(a, b),
                        crc_fast::checksum_combine(algorithm, a, b, len),
                        "{algorithm:?} len {len}"
                    );
                }
            }
        }
    }
}
