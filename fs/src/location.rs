//! Parsing `s3://BUCKET[/PREFIX]` into a bucket and a normalized key prefix.

use std::fmt;
use std::str::FromStr;

/// Where the models tree lives: a bucket and a key prefix that is either empty or ends in `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket name.
    pub bucket: String,
    /// The key prefix; empty (whole bucket) or ending with `/`.
    pub prefix: String,
}

/// Why an `s3://` URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocationError {
    /// The URL does not start with `s3://`.
    #[error("expected s3://BUCKET[/PREFIX], got {0:?}")]
    NotS3Url(String),
    /// The bucket name breaks S3's naming rules.
    #[error("invalid bucket name {name:?}: {reason}")]
    InvalidBucket {
        /// The bucket name given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The prefix contains a segment that cannot be a directory name.
    #[error("invalid prefix {0:?}: empty, '.' or '..' path segments are not allowed")]
    InvalidPrefix(String),
}

impl FromStr for S3Location {
    type Err = LocationError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| LocationError::NotS3Url(url.to_string()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        validate_bucket(bucket)?;
        let trimmed = prefix.trim_end_matches('/');
        if !trimmed.is_empty()
            && trimmed
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(LocationError::InvalidPrefix(prefix.to_string()));
        }
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{trimmed}/")
        };
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix,
        })
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Checks S3's general-purpose bucket naming rules (3–63 characters of lowercase letters,
/// digits, `.` and `-`, starting and ending with a letter or digit).
fn validate_bucket(name: &str) -> Result<(), LocationError> {
    let fail = |reason| {
        Err(LocationError::InvalidBucket {
            name: name.to_string(),
            reason,
        })
    };
    if name.len() < 3 || name.len() > 63 {
        return fail("must be 3 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return fail("only lowercase letters, digits, '.' and '-' are allowed");
    }
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !edge_ok(name.as_bytes()[0]) || !edge_ok(name.as_bytes()[name.len() - 1]) {
        return fail("must start and end with a letter or digit");
    }
    if name.contains("..") {
        return fail("must not contain two adjacent periods");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_normalizes_prefix() {
        let l: S3Location = "s3://models".parse().unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("models", ""));
        let l: S3Location = "s3://models/ComfyUI/models".parse().unwrap();
        assert_eq!(l.prefix, "ComfyUI/models/");
        let l: S3Location = "s3://models/ComfyUI/models/".parse().unwrap();
        assert_eq!(l.prefix, "ComfyUI/models/");
        let l: S3Location = "s3://models/".parse().unwrap();
        assert_eq!(l.prefix, "");
    }

    #[test]
    fn rejects_bad_urls_buckets_and_prefixes() {
        assert!(matches!(
            "models".parse::<S3Location>(),
            Err(LocationError::NotS3Url(_))
        ));
        for bad in [
            "s3://Models",
            "s3://ab",
            "s3://-ab",
            "s3://a..b",
            "s3://a_b",
        ] {
            assert!(
                matches!(
                    bad.parse::<S3Location>(),
                    Err(LocationError::InvalidBucket { .. })
                ),
                "{bad}"
            );
        }
        for bad in ["s3://models/a//b", "s3://models/../x", "s3://models/a/./b"] {
            assert!(
                matches!(
                    bad.parse::<S3Location>(),
                    Err(LocationError::InvalidPrefix(_))
                ),
                "{bad}"
            );
        }
    }
}
