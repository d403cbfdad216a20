//! Credentials for `authenticationSource: pod` volumes, with the pod's own tokens:
//! - the role named on the pod's service account (annotation `eks.amazonaws.com/role-arn`, as
//!   IRSA uses), assumed through STS `AssumeRoleWithWebIdentity`; the role's trust policy
//!   decides which service accounts may assume it;
//! - otherwise the service account's EKS Pod Identity association, through the node's Pod
//!   Identity agent (the pod's token for `pods.eks.amazonaws.com`).
//!
//! The plugin's own credentials play no part.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use aws_sdk_sts::config::{BehaviorVersion, Region};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::runtime::Handle;

use crate::cluster::ClusterApi;
use crate::handoff::VolumeCredentials;
use crate::pod_identity::PodIdentity;

/// The service-account annotation naming the IAM role its pods assume.
pub const ROLE_ANNOTATION: &str = "eks.amazonaws.com/role-arn";

/// STS and Pod Identity agent calls give up after this long (kubelet retries the publish).
const STS_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the EKS Pod Identity agent answers on every node (its documented address).
pub const DEFAULT_POD_IDENTITY_AGENT_URL: &str = "http://169.254.170.23/v1/credentials";

/// Why a pod's credentials could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The service account carries no role annotation and has no Pod Identity association.
    #[error(
        "service account {account} names no IAM role (annotation {ROLE_ANNOTATION}) and has no \
         EKS Pod Identity association"
    )]
    NoRole {
        /// `namespace/name`.
        account: String,
    },
    /// STS answered and refused (the role's trust policy, an expired or foreign token).
    #[error("STS refused role {role} to service account {account}: {message}")]
    Refused {
        /// The role ARN.
        role: String,
        /// `namespace/name`.
        account: String,
        /// STS's error code and message.
        message: String,
    },
    /// The Kubernetes API or STS could not be asked (network, API server, RBAC).
    #[error("cannot get credentials for service account {account}: {message}")]
    Unavailable {
        /// `namespace/name`.
        account: String,
        /// The cause.
        message: String,
    },
}

/// Turns a pod's identity into credentials for one of its volumes.
pub trait CredentialSource: Send + Sync + 'static {
    /// Credentials of the role on `pod`'s service account, for requests in `region` (the
    /// volume's, when it names one). Blocking: called from the node server's threads.
    fn exchange(
        &self,
        pod: &PodIdentity,
        region: Option<&str>,
    ) -> Result<VolumeCredentials, CredentialError>;
}

/// The real source: the Kubernetes API for the annotation, STS for the exchange.
pub struct StsWebIdentity {
    runtime: Handle,
    cluster: Arc<dyn ClusterApi>,
    sts_endpoint: Option<String>,
    agent_url: Option<String>,
}

impl StsWebIdentity {
    /// Calls STS at `sts_endpoint` (default: the regional AWS endpoint) and `cluster` from
    /// tasks on `runtime`.
    pub fn new(
        runtime: Handle,
        cluster: Arc<dyn ClusterApi>,
        sts_endpoint: Option<String>,
    ) -> StsWebIdentity {
        StsWebIdentity {
            runtime,
            cluster,
            sts_endpoint,
            agent_url: None,
        }
    }

    /// The same source, asking the Pod Identity agent at `url` for pods whose service
    /// account names no role.
    pub fn with_pod_identity_agent(mut self, url: Option<String>) -> StsWebIdentity {
        self.agent_url = url;
        self
    }

    /// Credentials of the pod's Pod Identity association, from the node's agent.
    async fn ask_agent(
        &self,
        url: &str,
        pod: &PodIdentity,
        token: &str,
    ) -> Result<VolumeCredentials, CredentialError> {
        let unavailable = |message: String| CredentialError::Unavailable {
            account: pod.describe(),
            message: format!("EKS Pod Identity agent at {url}: {message}"),
        };
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let request = hyper::Request::get(url)
            .header(hyper::header::AUTHORIZATION, token)
            .body(Full::default())
            .map_err(|e| unavailable(e.to_string()))?;
        let answer = tokio::time::timeout(STS_TIMEOUT, async {
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        })
        .await
        .map_err(|_| unavailable("no answer".to_string()))?
        .map_err(unavailable)?;
        let (status, body) = answer;
        if status.is_client_error() {
            // The agent knows no association for this service account (or the token).
            return Err(CredentialError::NoRole {
                account: pod.describe(),
            });
        }
        if !status.is_success() {
            return Err(unavailable(format!("HTTP {status}")));
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct AgentCredentials {
            access_key_id: String,
            secret_access_key: String,
            token: String,
            expiration: String,
        }
        let given: AgentCredentials = serde_json::from_slice(&body)
            .map_err(|_| unavailable("an answer that is not its credentials JSON".to_string()))?;
        let expires = given
            .expiration
            .parse::<k8s_openapi::jiff::Timestamp>()
            .map_err(|_| unavailable("an unreadable expiration".to_string()))?;
        Ok(VolumeCredentials {
            access_key_id: given.access_key_id,
            secret_access_key: given.secret_access_key,
            session_token: given.token,
            expires_unix: u64::try_from(expires.as_second()).unwrap_or(0),
        })
    }

    async fn role_of(&self, pod: &PodIdentity) -> Result<String, CredentialError> {
        let annotations = self
            .cluster
            .service_account_annotations(&pod.namespace, &pod.service_account)
            .await
            .map_err(|e| CredentialError::Unavailable {
                account: pod.describe(),
                message: e.to_string(),
            })?;
        annotations
            .get(ROLE_ANNOTATION)
            .map(|role| role.trim().to_string())
            .filter(|role| !role.is_empty())
            .ok_or_else(|| CredentialError::NoRole {
                account: pod.describe(),
            })
    }

    async fn assume(
        &self,
        pod: &PodIdentity,
        role: &str,
        region: Option<&str>,
    ) -> Result<VolumeCredentials, CredentialError> {
        let region = region
            .map(str::to_string)
            .or_else(|| std::env::var("AWS_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_string());
        let mut config = aws_sdk_sts::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .timeout_config(
                aws_sdk_sts::config::timeout::TimeoutConfig::builder()
                    .operation_timeout(STS_TIMEOUT)
                    .build(),
            );
        if let Some(endpoint) = &self.sts_endpoint {
            config = config.endpoint_url(endpoint.clone());
        }
        let sts = aws_sdk_sts::Client::from_conf(config.build());
        let answer = sts
            .assume_role_with_web_identity()
            .role_arn(role)
            .role_session_name(session_name(pod))
            .web_identity_token(pod.token())
            .send()
            .await
            .map_err(|e| match &e {
                SdkError::ServiceError(service) => CredentialError::Refused {
                    role: role.to_string(),
                    account: pod.describe(),
                    message: format!(
                        "{}: {}",
                        service.err().code().unwrap_or("error"),
                        service.err().message().unwrap_or("")
                    ),
                },
                _ => CredentialError::Unavailable {
                    account: pod.describe(),
                    message: format!("STS: {}", aws_sdk_sts::error::DisplayErrorContext(&e)),
                },
            })?;
        let credentials = answer
            .credentials
            .ok_or_else(|| CredentialError::Unavailable {
                account: pod.describe(),
                message: "STS answered without credentials".to_string(),
            })?;
        let expires = std::time::SystemTime::try_from(credentials.expiration)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Ok(VolumeCredentials {
            access_key_id: credentials.access_key_id,
            secret_access_key: credentials.secret_access_key,
            session_token: credentials.session_token,
            expires_unix: expires,
        })
    }
}

impl CredentialSource for StsWebIdentity {
    fn exchange(
        &self,
        pod: &PodIdentity,
        region: Option<&str>,
    ) -> Result<VolumeCredentials, CredentialError> {
        self.runtime.block_on(async {
            let (credentials, role) =
                match (self.role_of(pod).await, pod.agent_token(), &self.agent_url) {
                    (Ok(role), _, _) => (self.assume(pod, &role, region).await?, role),
                    (Err(CredentialError::NoRole { .. }), Some(token), Some(url)) => (
                        self.ask_agent(url, pod, token).await?,
                        "its EKS Pod Identity role".to_string(),
                    ),
                    (Err(e), _, _) => return Err(e),
                };
            tracing::info!(
                "assumed {role} for service account {} (key {}, expires in {} s)",
                pod.describe(),
                credentials.access_key_id,
                credentials
                    .expires()
                    .duration_since(std::time::SystemTime::now())
                    .map_or(0, |d| d.as_secs())
            );
            Ok(credentials)
        })
    }
}

/// `modelfs-NAMESPACE-ACCOUNT` in the characters and length STS allows (it shows in
/// CloudTrail, so an operator sees which pod read what).
fn session_name(pod: &PodIdentity) -> String {
    let raw = format!("modelfs-{}-{}", pod.namespace, pod.service_account);
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::pod_identity::{POD_NAMESPACE, SERVICE_ACCOUNT_NAME, SERVICE_ACCOUNT_TOKENS};

    fn pod(namespace: &str, account: &str) -> PodIdentity {
        let context: HashMap<String, String> = [
            (POD_NAMESPACE, namespace),
            (SERVICE_ACCOUNT_NAME, account),
            (
                SERVICE_ACCOUNT_TOKENS,
                r#"{"sts.amazonaws.com":{"token":"t"}}"#,
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        PodIdentity::from_context(&context).unwrap()
    }

    #[test]
    fn session_names_are_what_sts_accepts() {
        assert_eq!(
            session_name(&pod("comfyui", "models")),
            "modelfs-comfyui-models"
        );
        let long = session_name(&pod(&"n".repeat(60), "sa"));
        assert_eq!(long.len(), 64);
        assert!(long.starts_with("modelfs-nnn"));
    }
}
