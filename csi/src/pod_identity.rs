//! Who a pod is, as kubelet tells the plugin in a volume's context: its namespace, its
//! service account and a service-account token for the `sts.amazonaws.com` audience.
//!
//! Kubelet adds these keys when the CSIDriver object has `podInfoOnMount: true` and
//! `tokenRequests: [{audience: sts.amazonaws.com}]`; with `requiresRepublish: true` it sends a
//! fresh token before the old one expires.

use std::collections::HashMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::volume_context::VolumeContextError;

/// Context key: the pod's namespace.
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
/// Context key: the pod's service account.
pub const SERVICE_ACCOUNT_NAME: &str = "csi.storage.k8s.io/serviceAccount.name";
/// Context key: the tokens kubelet requested for the CSIDriver's `tokenRequests`.
pub const SERVICE_ACCOUNT_TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";
/// The audience STS accepts for AssumeRoleWithWebIdentity.
pub const STS_AUDIENCE: &str = "sts.amazonaws.com";
/// The audience the EKS Pod Identity agent accepts.
pub const POD_IDENTITY_AUDIENCE: &str = "pods.eks.amazonaws.com";

/// A pod's identity and its token for STS.
#[derive(Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's service account.
    pub service_account: String,
    token: String,
    agent_token: Option<String>,
}

impl std::fmt::Debug for PodIdentity {
    // The token is a credential: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodIdentity")
            .field("namespace", &self.namespace)
            .field("service_account", &self.service_account)
            .field("token", &"<redacted>")
            .field(
                "agent_token",
                &self.agent_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Deserialize)]
struct Token {
    token: String,
}

impl PodIdentity {
    /// Reads the pod's identity from a volume context; the error names the missing key and
    /// the CSIDriver setting that provides it.
    pub fn from_context(
        context: &HashMap<String, String>,
    ) -> Result<PodIdentity, VolumeContextError> {
        let missing = |key: &'static str, reason: &str| VolumeContextError::InvalidAttribute {
            key,
            value: String::new(),
            reason: format!(
                "{reason}; authenticationSource pod needs the CSIDriver's podInfoOnMount: true \
                 and tokenRequests for audience {STS_AUDIENCE}"
            ),
        };
        let get = |key: &'static str| {
            context
                .get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| missing(key, "kubelet did not send it"))
        };
        let namespace = get(POD_NAMESPACE)?.to_string();
        let service_account = get(SERVICE_ACCOUNT_NAME)?.to_string();
        let tokens: HashMap<String, Token> = serde_json::from_str(get(SERVICE_ACCOUNT_TOKENS)?)
            .map_err(|_| missing(SERVICE_ACCOUNT_TOKENS, "not the JSON kubelet sends"))?;
        let token = tokens
            .get(STS_AUDIENCE)
            .map(|t| t.token.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| missing(SERVICE_ACCOUNT_TOKENS, "no token for the STS audience"))?;
        let agent_token = tokens
            .get(POD_IDENTITY_AUDIENCE)
            .map(|t| t.token.trim().to_string())
            .filter(|t| !t.is_empty());
        Ok(PodIdentity {
            namespace,
            service_account,
            token,
            agent_token,
        })
    }

    /// The token, for the one call that sends it to STS.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The token for the EKS Pod Identity agent, when the CSIDriver asks for one.
    pub fn agent_token(&self) -> Option<&str> {
        self.agent_token.as_deref()
    }

    /// A digest of the token: tells whether kubelet sent a new one, without keeping it.
    pub fn token_digest(&self) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(self.token.as_bytes());
        digest.update([0]);
        digest.update(self.agent_token.as_deref().unwrap_or("").as_bytes());
        digest.finalize().into()
    }

    /// `namespace/service-account`, for log lines.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.namespace, self.service_account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(token_json: &str) -> HashMap<String, String> {
        [
            (POD_NAMESPACE, "comfyui"),
            (SERVICE_ACCOUNT_NAME, "comfyui"),
            (SERVICE_ACCOUNT_TOKENS, token_json),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn the_sts_token_is_read_and_never_printed() {
        let json = r#"{"sts.amazonaws.com":{"token":"eyJ.secret.sig","expirationTimestamp":"2026-12-05T04:00:00Z"}}"#;
        let pod = PodIdentity::from_context(&context(json)).unwrap();
        assert_eq!(pod.token(), "eyJ.secret.sig");
        assert_eq!(pod.describe(), "comfyui/comfyui");
        assert!(!format!("{pod:?}").contains("secret"));
        let other = r#"{"sts.amazonaws.com":{"token":"eyJ.other.sig"}}"#;
        let next = PodIdentity::from_context(&context(other)).unwrap();
        assert_ne!(pod.token_digest(), next.token_digest());
    }

    #[test]
    fn a_context_without_the_token_names_the_key_and_the_csidriver_setting() {
        for json in ["", "not json", r#"{"other-audience":{"token":"x"}}"#] {
            let err = PodIdentity::from_context(&context(json)).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(SERVICE_ACCOUNT_TOKENS), "{text}");
            assert!(text.contains("tokenRequests"), "{text}");
            assert!(!text.contains("not json"), "{text}");
        }
        let mut no_namespace = context(r#"{"sts.amazonaws.com":{"token":"x"}}"#);
        no_namespace.remove(POD_NAMESPACE);
        let err = PodIdentity::from_context(&no_namespace).unwrap_err();
        assert!(err.to_string().contains(POD_NAMESPACE), "{err}");
    }
}
