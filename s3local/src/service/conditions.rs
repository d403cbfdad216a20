//! Conditional requests (`If-Match`, `If-None-Match`, `If-Modified-Since`,
//! `If-Unmodified-Since`) and byte ranges, evaluated against an object's metadata the way
//! S3 does for GetObject and HeadObject.

use std::ops::Range as ByteRange;
use std::time::{SystemTime, UNIX_EPOCH};

use s3s::dto::{ETagCondition, Range, Timestamp};

use crate::store::ObjectMeta;

/// The preconditions of a read request.
#[derive(Debug, Default)]
pub(crate) struct Preconditions<'a> {
    pub if_match: Option<&'a ETagCondition>,
    pub if_none_match: Option<&'a ETagCondition>,
    pub if_modified_since: Option<&'a Timestamp>,
    pub if_unmodified_since: Option<&'a Timestamp>,
}

/// The [`Preconditions`] of a request whose input has the four conditional fields (s3s
/// generates `HeadObjectInput` and `GetObjectInput` as unrelated types).
macro_rules! read_preconditions {
    ($input:expr) => {
        $crate::service::conditions::Preconditions {
            if_match: $input.if_match.as_ref(),
            if_none_match: $input.if_none_match.as_ref(),
            if_modified_since: $input.if_modified_since.as_ref(),
            if_unmodified_since: $input.if_unmodified_since.as_ref(),
        }
    };
}
pub(crate) use read_preconditions;

/// How a read request must be answered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Serve the object.
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    PreconditionFailed,
}

/// Whether an `If-Match` / `If-None-Match` `condition` names the object `meta` (`*` names
/// any object).
pub(crate) fn condition_matches(condition: &ETagCondition, meta: &ObjectMeta) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(etag) => meta.etag_matches(etag.value()),
    }
}

/// `last_modified` at the one-second precision of HTTP dates.
fn http_time(time: SystemTime) -> Timestamp {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Timestamp::from(UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

impl Preconditions<'_> {
    /// Evaluates the preconditions in RFC 9110 order, with S3's precedence: a passing
    /// `If-Match` overrides `If-Unmodified-Since`, a failing `If-None-Match` overrides
    /// `If-Modified-Since`.
    pub fn evaluate(&self, meta: &ObjectMeta) -> Verdict {
        let modified = http_time(meta.last_modified);
        match self.if_match {
            Some(condition) if !condition_matches(condition, meta) => {
                return Verdict::PreconditionFailed
            }
            Some(_) => {}
            None => {
                if self
                    .if_unmodified_since
                    .is_some_and(|since| modified > *since)
                {
                    return Verdict::PreconditionFailed;
                }
            }
        }
        match self.if_none_match {
            Some(condition) if condition_matches(condition, meta) => Verdict::NotModified,
            Some(_) => Verdict::Proceed,
            None if self
                .if_modified_since
                .is_some_and(|since| modified <= *since) =>
            {
                Verdict::NotModified
            }
            None => Verdict::Proceed,
        }
    }
}

/// The bytes a `Range` header selects in an object of `size` bytes; `None` when it cannot be
/// satisfied (416). Like S3, any range on an empty object is unsatisfiable.
pub(crate) fn resolve_range(range: &Range, size: u64) -> Option<ByteRange<u64>> {
    if size == 0 {
        return None;
    }
    range.check(size).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use s3s::dto::ETag;

    use super::*;

    fn etag(v: &str) -> ETagCondition {
        ETagCondition::ETag(ETag::Strong(v.into()))
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp::from(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn verdicts_follow_s3_precedence() {
        use Verdict::{NotModified, PreconditionFailed, Proceed};

        // Written half a second into second 1000, which is what HTTP dates compare.
        let last_modified = UNIX_EPOCH + Duration::from_millis(1_000_500);
        let m = ObjectMeta::fixture("k", "\"abc\"", last_modified);
        let (good, bad, any) = (etag("abc"), etag("zzz"), ETagCondition::Any);
        let (same, before) = (at(1000), at(999));
        let cases = [
            // (If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since) → verdict
            (None, None, None, None, Proceed),
            (Some(&good), None, None, None, Proceed),
            (Some(&any), None, None, None, Proceed),
            (Some(&bad), None, None, None, PreconditionFailed),
            (None, Some(&good), None, None, NotModified),
            (None, Some(&bad), None, None, Proceed),
            (Some(&bad), Some(&bad), None, None, PreconditionFailed),
            (None, None, Some(&same), None, NotModified),
            (None, None, Some(&before), None, Proceed),
            (None, None, None, Some(&same), Proceed),
            (None, None, None, Some(&before), PreconditionFailed),
            // A matching If-Match wins over a failing If-Unmodified-Since.
            (Some(&good), None, None, Some(&before), Proceed),
        ];
        for (if_match, if_none_match, if_modified_since, if_unmodified_since, verdict) in cases {
            let preconditions = Preconditions {
                if_match,
                if_none_match,
                if_modified_since,
                if_unmodified_since,
            };
            assert_eq!(preconditions.evaluate(&m), verdict, "{preconditions:?}");
        }
    }

    #[test]
    fn ranges() {
        let int = |first, last| Range::Int { first, last };
        assert_eq!(resolve_range(&int(0, Some(3)), 10), Some(0..4));
        assert_eq!(resolve_range(&int(5, None), 10), Some(5..10));
        assert_eq!(resolve_range(&int(5, Some(100)), 10), Some(5..10));
        assert_eq!(resolve_range(&Range::Suffix { length: 3 }, 10), Some(7..10));
        assert_eq!(
            resolve_range(&Range::Suffix { length: 30 }, 10),
            Some(0..10)
        );
        assert_eq!(resolve_range(&int(10, None), 10), None);
        assert_eq!(resolve_range(&int(0, None), 0), None);
        assert_eq!(resolve_range(&Range::Suffix { length: 1 }, 0), None);
    }
}
