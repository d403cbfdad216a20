//! Credentials handed to a volume from outside (a pod's role, exchanged by the CSI plugin)
//! that can be replaced while the volume is mounted, when the plugin refreshes them.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use aws_credential_types::provider::{self, ProvideCredentials};
use aws_credential_types::Credentials;

/// Temporary credentials of one volume: an access key, its secret, a session token.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionCredentials {
    /// The access key id (not secret; it names the session in S3's logs).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token that came with them.
    pub session_token: String,
    /// When they stop working.
    pub expires: SystemTime,
}

impl std::fmt::Debug for SessionCredentials {
    // The secret and the token never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expires", &self.expires)
            .finish()
    }
}

/// A credentials provider whose credentials can be swapped: every request signs with the
/// latest ones. Clones share the credentials.
#[derive(Debug, Clone)]
pub struct ReplaceableCredentials {
    current: Arc<RwLock<Credentials>>,
}

impl ReplaceableCredentials {
    /// Starts with `initial`.
    pub fn new(initial: &SessionCredentials) -> ReplaceableCredentials {
        ReplaceableCredentials {
            current: Arc::new(RwLock::new(to_sdk(initial))),
        }
    }

    /// Signs every later request with `next`.
    pub fn replace(&self, next: &SessionCredentials) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        *current = to_sdk(next);
    }
}

impl ProvideCredentials for ReplaceableCredentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        provider::future::ProvideCredentials::ready(Ok(current.clone()))
    }
}

fn to_sdk(credentials: &SessionCredentials) -> Credentials {
    Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.clone(),
        Some(credentials.session_token.clone()),
        Some(credentials.expires),
        "modelfs-volume",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(key: &str) -> SessionCredentials {
        SessionCredentials {
            access_key_id: key.into(),
            secret_access_key: format!("{key}-secret"),
            session_token: format!("{key}-token"),
            expires: SystemTime::now() + std::time::Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn requests_after_a_replace_get_the_new_credentials() {
        let provider = ReplaceableCredentials::new(&session("ASIAONE"));
        let first = provider.provide_credentials().await.unwrap();
        assert_eq!(first.access_key_id(), "ASIAONE");
        assert_eq!(first.session_token(), Some("ASIAONE-token"));
        provider.replace(&session("ASIATWO"));
        let second = provider.provide_credentials().await.unwrap();
        assert_eq!(second.access_key_id(), "ASIATWO");
        assert_eq!(second.secret_access_key(), "ASIATWO-secret");
    }

    #[test]
    fn debug_output_hides_the_secret_and_the_token() {
        let text = format!("{:?}", session("ASIAONE"));
        assert!(text.contains("ASIAONE"));
        assert!(!text.contains("ASIAONE-secret"), "{text}");
        assert!(!text.contains("ASIAONE-token"), "{text}");
    }
}
