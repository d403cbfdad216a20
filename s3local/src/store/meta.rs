//! Object metadata and its JSON sidecar (`<hash>.meta` next to the object's bytes).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::checksum::ObjectChecksum;

/// What the store knows about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The S3 key, exactly as written.
    pub key: String,
    /// Size of the content in bytes.
    pub size: u64,
    /// Quoted hex MD5 of the content, like the ETag of a single-part S3 PUT (`"9e10…"`).
    pub etag: String,
    /// When the object was written.
    pub last_modified: SystemTime,
    /// The full-object checksum (`None` for objects stored before the store kept one).
    pub checksum: Option<ObjectChecksum>,
}

impl ObjectMeta {
    /// The ETag without its surrounding quotes.
    pub fn etag_value(&self) -> &str {
        self.etag.trim_matches('"')
    }

    /// Whether an ETag given by a client (quoted or not, or `*`) names this object's content.
    pub fn etag_matches(&self, candidate: &str) -> bool {
        let candidate = candidate.trim();
        let candidate = candidate.strip_prefix("W/").unwrap_or(candidate);
        candidate == "*" || candidate.trim_matches('"') == self.etag_value()
    }

    /// The sidecar document.
    pub(crate) fn to_sidecar(&self) -> Vec<u8> {
        let nanos = self
            .last_modified
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut doc = json!({
            "version": 1,
            "key": self.key,
            "size": self.size,
            "etag": self.etag,
            // u128 does not fit JSON numbers everywhere; nanoseconds until 2554 fit a u64.
            "last_modified_unix_nanos": u64::try_from(nanos).unwrap_or(u64::MAX),
        });
        if let Some(checksum) = self.checksum {
            doc["checksum"] = json!(checksum.to_string());
        }
        doc.to_string().into_bytes()
    }

    /// Parses a sidecar document; `None` if it is not one.
    pub(crate) fn from_sidecar(bytes: &[u8]) -> Option<ObjectMeta> {
        let doc: Value = serde_json::from_slice(bytes).ok()?;
        let nanos = doc.get("last_modified_unix_nanos")?.as_u64()?;
        Some(ObjectMeta {
            key: doc.get("key")?.as_str()?.to_string(),
            size: doc.get("size")?.as_u64()?,
            etag: doc.get("etag")?.as_str()?.to_string(),
            last_modified: UNIX_EPOCH + Duration::from_nanos(nanos),
            // Sidecars written before checksums were kept have none.
            checksum: doc
                .get("checksum")
                .and_then(Value::as_str)
                .and_then(ObjectChecksum::parse),
        })
    }
}

#[cfg(test)]
impl ObjectMeta {
    /// An empty object `key` with no checksum, for unit tests of what looks at its name,
    /// ETag (quoted) or time.
    pub(crate) fn fixture(key: &str, etag: &str, last_modified: SystemTime) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: 0,
            etag: etag.to_string(),
            last_modified,
            checksum: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ObjectMeta {
        let last_modified = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        ObjectMeta {
            size: 42,
            checksum: Some(ObjectChecksum::Crc64Nvme(0x0123_4567_89ab_cdef)),
            ..ObjectMeta::fixture("a//b/../ü x", "\"0123abcd\"", last_modified)
        }
    }

    #[test]
    fn sidecar_round_trip() {
        let meta = sample();
        assert_eq!(
            ObjectMeta::from_sidecar(&meta.to_sidecar()),
            Some(meta.clone())
        );
        let older = ObjectMeta {
            checksum: None,
            ..meta
        };
        assert_eq!(
            ObjectMeta::from_sidecar(&older.to_sidecar()),
            Some(older),
            "sidecars without a checksum still load"
        );
        assert_eq!(ObjectMeta::from_sidecar(b"{}"), None);
        assert_eq!(ObjectMeta::from_sidecar(b"not json"), None);
    }

    #[test]
    fn etag_matching() {
        let meta = sample();
        assert_eq!(meta.etag_value(), "0123abcd");
        assert!(meta.etag_matches("\"0123abcd\""));
        assert!(meta.etag_matches("0123abcd"));
        assert!(meta.etag_matches("W/\"0123abcd\""));
        assert!(meta.etag_matches("*"));
        assert!(!meta.etag_matches("\"other\""));
    }
}
