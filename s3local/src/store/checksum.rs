//! [`ObjectChecksum`]: the full-object checksum S3 keeps with each object (CRC64NVME unless
//! the uploader sent another), and [`ChecksumWriter`], which computes it while the bytes are
//! written.

use std::fmt;

use base64_simd::STANDARD as BASE64;
use crc_fast::{CrcAlgorithm, Digest};

/// A whole object's CRC, as S3 returns it in `x-amz-checksum-<algorithm>` with
/// `x-amz-checksum-type: FULL_OBJECT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectChecksum {
    /// CRC64NVME, what S3 computes when the uploader sends no checksum.
    Crc64Nvme(u64),
    /// CRC32C (Castagnoli).
    Crc32c(u32),
    /// CRC32 (ISO-HDLC).
    Crc32(u32),
}

impl ObjectChecksum {
    /// The algorithm's name as in the header (`crc64nvme`, `crc32c`, `crc32`).
    pub fn algorithm(&self) -> &'static str {
        match self {
            ObjectChecksum::Crc64Nvme(_) => "crc64nvme",
            ObjectChecksum::Crc32c(_) => "crc32c",
            ObjectChecksum::Crc32(_) => "crc32",
        }
    }

    /// The value as S3 sends it: base64 of the big-endian bytes.
    pub fn to_base64(&self) -> String {
        match *self {
            ObjectChecksum::Crc64Nvme(v) => BASE64.encode_to_string(v.to_be_bytes()),
            ObjectChecksum::Crc32c(v) | ObjectChecksum::Crc32(v) => {
                BASE64.encode_to_string(v.to_be_bytes())
            }
        }
    }

    /// Parses a header value of `algorithm`; `None` if it is not base64 of the right length.
    pub fn from_base64(algorithm: &str, value: &str) -> Option<ObjectChecksum> {
        let bytes = BASE64.decode_to_vec(value.trim()).ok()?;
        match algorithm {
            "crc64nvme" => Some(ObjectChecksum::Crc64Nvme(u64::from_be_bytes(
                bytes.try_into().ok()?,
            ))),
            "crc32c" => Some(ObjectChecksum::Crc32c(u32::from_be_bytes(
                bytes.try_into().ok()?,
            ))),
            "crc32" => Some(ObjectChecksum::Crc32(u32::from_be_bytes(
                bytes.try_into().ok()?,
            ))),
            _ => None,
        }
    }

    /// The checksum of `algorithm` over `data` (CRC64NVME when `algorithm` is `None`);
    /// `None` for an algorithm this store does not know.
    pub fn of(algorithm: Option<&str>, data: &[u8]) -> Option<ObjectChecksum> {
        let like = match algorithm {
            None => None,
            Some(name) => Some(ObjectChecksum::from_name(name)?),
        };
        let mut writer = ChecksumWriter::new(like);
        writer.update(data);
        Some(writer.finish())
    }

    /// A checksum of algorithm `name`, of value 0 (a template for [`ChecksumWriter::new`]).
    fn from_name(name: &str) -> Option<ObjectChecksum> {
        match name {
            "crc64nvme" => Some(ObjectChecksum::Crc64Nvme(0)),
            "crc32c" => Some(ObjectChecksum::Crc32c(0)),
            "crc32" => Some(ObjectChecksum::Crc32(0)),
            _ => None,
        }
    }

    /// Parses the sidecar form, `<algorithm>:<base64>` (what [`fmt::Display`] writes).
    pub(crate) fn parse(text: &str) -> Option<ObjectChecksum> {
        let (algorithm, value) = text.split_once(':')?;
        ObjectChecksum::from_base64(algorithm, value)
    }
}

impl fmt::Display for ObjectChecksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.to_base64())
    }
}

/// A full-object checksum being computed over content written in order.
pub struct ChecksumWriter {
    like: ObjectChecksum,
    digest: Digest,
}

impl ChecksumWriter {
    /// A computation of `like`'s algorithm (CRC64NVME when `None`).
    pub fn new(like: Option<ObjectChecksum>) -> ChecksumWriter {
        let like = like.unwrap_or(ObjectChecksum::Crc64Nvme(0));
        let crc = match like {
            ObjectChecksum::Crc64Nvme(_) => CrcAlgorithm::Crc64Nvme,
            ObjectChecksum::Crc32c(_) => CrcAlgorithm::Crc32Iscsi,
            ObjectChecksum::Crc32(_) => CrcAlgorithm::Crc32IsoHdlc,
        };
        ChecksumWriter {
            like,
            digest: Digest::new(crc),
        }
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.digest.update(data);
    }

    /// The checksum of everything fed.
    pub fn finish(&self) -> ObjectChecksum {
        let value = self.digest.finalize();
        // 32-bit CRCs come back in the low half.
        match self.like {
            ObjectChecksum::Crc64Nvme(_) => ObjectChecksum::Crc64Nvme(value),
            ObjectChecksum::Crc32c(_) => ObjectChecksum::Crc32c(value as u32),
            ObjectChecksum::Crc32(_) => ObjectChecksum::Crc32(value as u32),
        }
    }
}

impl fmt::Debug for ChecksumWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChecksumWriter")
            .field("algorithm", &self.like.algorithm())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values_and_round_trips() {
        // The CRC catalogue's check values over "123456789".
        let data = b"123456789";
        let crc64 = ObjectChecksum::of(None, data).unwrap();
        assert_eq!(crc64, ObjectChecksum::Crc64Nvme(0xae8b_1486_0a79_9888));
        assert_eq!(
            ObjectChecksum::of(Some("crc32c"), data),
            Some(ObjectChecksum::Crc32c(0xe306_9283))
        );
        assert_eq!(
            ObjectChecksum::of(Some("crc32"), data),
            Some(ObjectChecksum::Crc32(0xcbf4_3926))
        );
        assert_eq!(ObjectChecksum::of(Some("sha1"), data), None);
        assert_eq!(ObjectChecksum::parse(&crc64.to_string()), Some(crc64));
        assert_eq!(
            ObjectChecksum::from_base64("crc32c", "3q2+7w=="),
            Some(ObjectChecksum::Crc32c(0xdead_beef))
        );
        assert_eq!(ObjectChecksum::from_base64("crc64nvme", "3q2+7w=="), None);
    }
}
