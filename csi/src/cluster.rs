//! What the plugin reads from and tells the Kubernetes API about the pods it serves: a
//! service account's annotations, a ConfigMap's value, and Events on a pod. One lazily made
//! client (in-cluster configuration, or `KUBECONFIG` outside a cluster).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{ConfigMap, Event, ObjectReference, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use tokio::sync::OnceCell;

/// The pod a volume is published for, as kubelet names it (`podInfoOnMount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's uid.
    pub uid: String,
}

/// Context key: the pod's name.
pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
/// Context key: the pod's uid.
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";

impl PodRef {
    /// The pod named in a volume context, when kubelet sent its name and namespace.
    pub fn from_context(context: &HashMap<String, String>) -> Option<PodRef> {
        let get = |key: &str| {
            context
                .get(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Some(PodRef {
            namespace: get(crate::pod_identity::POD_NAMESPACE)?,
            name: get(POD_NAME)?,
            uid: get(POD_UID).unwrap_or_default(),
        })
    }
}

/// A call to the API server failed; the message says which and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClusterError(pub String);

/// The API calls the Node service makes.
#[tonic::async_trait]
pub trait ClusterApi: Send + Sync + 'static {
    /// The annotations of service account `namespace/name`.
    async fn service_account_annotations(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<HashMap<String, String>, ClusterError>;
    /// Value `key` of ConfigMap `namespace/name`; `None` when the map or the key is missing.
    async fn config_map_value(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Option<String>, ClusterError>;
    /// Records an Event of type Normal on `pod`.
    async fn pod_event(
        &self,
        pod: &PodRef,
        reason: &str,
        message: &str,
    ) -> Result<(), ClusterError>;
}

/// The API server, through kube-rs.
#[derive(Default)]
pub struct KubeApi {
    client: OnceCell<kube::Client>,
}

impl KubeApi {
    async fn client(&self) -> Result<kube::Client, ClusterError> {
        self.client
            .get_or_try_init(kube::Client::try_default)
            .await
            .cloned()
            .map_err(|e| ClusterError(format!("no Kubernetes client: {e}")))
    }
}

#[tonic::async_trait]
impl ClusterApi for KubeApi {
    async fn service_account_annotations(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<HashMap<String, String>, ClusterError> {
        let accounts: kube::Api<ServiceAccount> =
            kube::Api::namespaced(self.client().await?, namespace);
        let account = accounts.get(name).await.map_err(|e| {
            ClusterError(format!("reading service account {namespace}/{name}: {e}"))
        })?;
        Ok(account
            .metadata
            .annotations
            .unwrap_or_default()
            .into_iter()
            .collect())
    }

    async fn config_map_value(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Option<String>, ClusterError> {
        let maps: kube::Api<ConfigMap> = kube::Api::namespaced(self.client().await?, namespace);
        let map = maps
            .get_opt(name)
            .await
            .map_err(|e| ClusterError(format!("reading ConfigMap {namespace}/{name}: {e}")))?;
        Ok(map.and_then(|m| m.data).and_then(|d| d.get(key).cloned()))
    }

    async fn pod_event(
        &self,
        pod: &PodRef,
        reason: &str,
        message: &str,
    ) -> Result<(), ClusterError> {
        let events: kube::Api<Event> = kube::Api::namespaced(self.client().await?, &pod.namespace);
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.modelfs-", pod.name)),
                namespace: Some(pod.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name.clone()),
                namespace: Some(pod.namespace.clone()),
                uid: Some(pod.uid.clone()).filter(|u| !u.is_empty()),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some("Normal".into()),
            reporting_component: Some(crate::identity::DRIVER_NAME.into()),
            reporting_instance: std::env::var("NODE_NAME").ok(),
            event_time: Some(MicroTime(now)),
            action: Some("Publish".into()),
            count: Some(1),
            ..Event::default()
        };
        events
            .create(&kube::api::PostParams::default(), &event)
            .await
            .map(drop)
            .map_err(|e| {
                ClusterError(format!(
                    "recording an event on pod {}/{}: {e}",
                    pod.namespace, pod.name
                ))
            })
    }
}
