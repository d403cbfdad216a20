//! Who may do what: the server's owner may do everything; each [`ReadOnlyUser`] may list
//! buckets and read (GetObject, HeadObject) keys under its prefixes only, and is refused
//! everything else with `AccessDenied` (403), as an IAM policy with `s3:ListBucket` and
//! `s3:GetObject` on `arn:aws:s3:::bucket/prefix*` would. Tests use it to give one endpoint
//! several identities with different rights.

use std::collections::HashMap;

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{s3_error, S3Result};

/// A user who may list and read keys under `read_prefixes` (an empty prefix: every key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOnlyUser {
    /// Access key id.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
    /// Key prefixes the user may read.
    pub read_prefixes: Vec<String>,
}

/// The server's identities: the owner and its read-only users.
#[derive(Debug)]
pub(crate) struct Users {
    owner: String,
    secrets: HashMap<String, String>,
    readers: HashMap<String, Vec<String>>,
}

impl Users {
    /// The owner (`access_key`, `secret_key`) and `readers`.
    pub(crate) fn new(access_key: &str, secret_key: &str, readers: &[ReadOnlyUser]) -> Users {
        let mut secrets = HashMap::from([(access_key.to_string(), secret_key.to_string())]);
        let mut prefixes = HashMap::new();
        for reader in readers {
            secrets.insert(reader.access_key.clone(), reader.secret_key.clone());
            prefixes.insert(reader.access_key.clone(), reader.read_prefixes.clone());
        }
        Users {
            owner: access_key.to_string(),
            secrets,
            readers: prefixes,
        }
    }

    /// Whether `access_key` may run `operation` on `path`.
    fn allows(&self, access_key: &str, operation: &str, path: &S3Path) -> bool {
        if access_key == self.owner {
            return true;
        }
        let Some(prefixes) = self.readers.get(access_key) else {
            return false;
        };
        match (operation, path) {
            (
                "ListBuckets" | "ListObjects" | "ListObjectsV2" | "HeadBucket"
                | "GetBucketLocation",
                _,
            ) => true,
            ("GetObject" | "HeadObject", S3Path::Object { key, .. }) => {
                prefixes.iter().any(|p| key.starts_with(p.as_str()))
            }
            _ => false,
        }
    }
}

#[async_trait::async_trait]
impl S3Auth for Users {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.secrets.get(access_key) {
            Some(secret) => Ok(SecretKey::from(secret.as_str())),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

/// [`Users`] shared between the authentication and the access check.
#[derive(Debug, Clone)]
pub(crate) struct SharedUsers(pub(crate) std::sync::Arc<Users>);

#[async_trait::async_trait]
impl S3Auth for SharedUsers {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        self.0.get_secret_key(access_key).await
    }
}

#[async_trait::async_trait]
impl S3Access for SharedUsers {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(credentials) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "Anonymous access is not allowed"));
        };
        if self
            .0
            .allows(&credentials.access_key, cx.s3_op().name(), cx.s3_path())
        {
            Ok(())
        } else {
            Err(s3_error!(AccessDenied, "Access Denied"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(key: &str) -> S3Path {
        S3Path::Object {
            bucket: "b".into(),
            key: key.into(),
        }
    }

    #[test]
    fn readers_list_and_read_their_prefixes_only() {
        let users = Users::new(
            "owner",
            "s",
            &[ReadOnlyUser {
                access_key: "alice".into(),
                secret_key: "a".into(),
                read_prefixes: vec!["loras/".into()],
            }],
        );
        assert!(users.allows("owner", "PutObject", &object("x")));
        assert!(users.allows(
            "alice",
            "ListObjectsV2",
            &S3Path::Bucket { bucket: "b".into() }
        ));
        assert!(users.allows("alice", "GetObject", &object("loras/a")));
        assert!(users.allows("alice", "HeadObject", &object("loras/a")));
        assert!(!users.allows("alice", "GetObject", &object("checkpoints/a")));
        assert!(!users.allows("alice", "PutObject", &object("loras/a")));
        assert!(!users.allows("mallory", "ListObjectsV2", &S3Path::Root));
    }
}
