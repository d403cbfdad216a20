//! Who may do what: the server's owner may do everything; each [`ReadOnlyUser`] may list
//! buckets and read (GetObject, HeadObject) keys under its prefixes only, and is refused
//! everything else with `AccessDenied` (403), as an IAM policy with `s3:ListBucket` and
//! `s3:GetObject` on `arn:aws:s3:::bucket/prefix*` would. Tests use it to give one endpoint
//! several identities with different rights.
//!
//! A [`SessionIssuer`] stands for STS: keys it issued are accepted with their session token
//! (the signed `x-amz-security-token` header must match), with the read prefixes of the role
//! the session belongs to, as S3 honours the temporary credentials of an assumed role.

use std::collections::HashMap;
use std::sync::Arc;

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

/// Temporary credentials an STS issued, and what their role may read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedSession {
    /// The session's secret key.
    pub secret_key: String,
    /// The session token requests must carry.
    pub session_token: String,
    /// Key prefixes the session's role may read (empty: list only).
    pub read_prefixes: Vec<String>,
}

/// Where temporary credentials come from (a test's STS).
pub trait SessionIssuer: Send + Sync + std::fmt::Debug {
    /// The session `access_key` belongs to, if this issuer issued it.
    fn session(&self, access_key: &str) -> Option<IssuedSession>;
}

/// The server's identities: the owner, its read-only users and the sessions of an issuer.
#[derive(Debug)]
pub(crate) struct Users {
    owner: String,
    secrets: HashMap<String, String>,
    readers: HashMap<String, Vec<String>>,
    sessions: Option<Arc<dyn SessionIssuer>>,
}

impl Users {
    /// The owner (`access_key`, `secret_key`) and `readers`.
    pub(crate) fn new(
        access_key: &str,
        secret_key: &str,
        readers: &[ReadOnlyUser],
        sessions: Option<Arc<dyn SessionIssuer>>,
    ) -> Users {
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
            sessions,
        }
    }

    fn session(&self, access_key: &str) -> Option<IssuedSession> {
        self.sessions.as_ref()?.session(access_key)
    }

    /// Whether `access_key` may run `operation` on `path`.
    fn allows(&self, access_key: &str, operation: &str, path: &S3Path) -> bool {
        if access_key == self.owner {
            return true;
        }
        let session = self.session(access_key);
        let Some(prefixes) = self
            .readers
            .get(access_key)
            .or(session.as_ref().map(|s| &s.read_prefixes))
        else {
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
            None => match self.session(access_key) {
                Some(session) => Ok(SecretKey::from(session.secret_key.as_str())),
                None => Err(s3_error!(InvalidAccessKeyId)),
            },
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
        if let Some(session) = self.0.session(&credentials.access_key) {
            let token = cx
                .headers()
                .get("x-amz-security-token")
                .and_then(|v| v.to_str().ok());
            if token != Some(session.session_token.as_str()) {
                return Err(s3_error!(
                    InvalidToken,
                    "The session token is missing or wrong"
                ));
            }
        }
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
            None,
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
