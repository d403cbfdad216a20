//! A fake Kubernetes API server on loopback, for the plugin's API calls: it answers
//! `GET /api/v1/namespaces/NS/serviceaccounts/NAME` and `.../configmaps/NAME` from tables the
//! test edits, records `POST .../events`, and answers 404 otherwise. The plugin reaches it
//! through a kubeconfig file (`KUBECONFIG`), as any client outside a cluster does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};

use super::http_fake::{json, FakeHttp};

/// What the server knows and what it was told.
#[derive(Default)]
struct Tables {
    /// Service accounts and the role each names.
    accounts: HashMap<(String, String), Option<String>>,
    /// ConfigMaps' data.
    config_maps: HashMap<(String, String), HashMap<String, String>>,
    /// Events posted, as JSON.
    events: Vec<serde_json::Value>,
}

type SharedTables = Arc<Mutex<Tables>>;

/// A running fake API server; stops when dropped.
pub struct FakeKubeApi {
    tables: SharedTables,
    server: FakeHttp,
}

impl FakeKubeApi {
    pub fn start() -> FakeKubeApi {
        let tables: SharedTables = Arc::default();
        let shared = tables.clone();
        let server = FakeHttp::start(Arc::new(move |req| answer(&shared, &req)));
        FakeKubeApi { tables, server }
    }

    /// Creates or replaces service account `namespace/name`, annotated with `role` when given.
    pub fn set_service_account(&self, namespace: &str, name: &str, role: Option<&str>) {
        self.tables.lock().expect("table").accounts.insert(
            (namespace.to_string(), name.to_string()),
            role.map(str::to_string),
        );
    }

    /// Creates or replaces ConfigMap `namespace/name` with `data`.
    pub fn set_config_map(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let data = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.tables
            .lock()
            .expect("table")
            .config_maps
            .insert((namespace.to_string(), name.to_string()), data);
    }

    /// The Events posted so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.tables.lock().expect("table").events.clone()
    }

    /// Writes a kubeconfig for this server into `dir`; returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: plugin\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: plugin\ncurrent-context: fake\n",
            self.server.url
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

fn answer(tables: &SharedTables, req: &Request<Bytes>) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    let mut tables = tables.lock().expect("table");
    let get = req.method() == hyper::Method::GET;
    let found = match parts.as_slice() {
        ["api", "v1", "namespaces", namespace, "serviceaccounts", name] if get => tables
            .accounts
            .get(&(namespace.to_string(), name.to_string()))
            .map(|role| service_account(namespace, name, role.as_deref())),
        ["api", "v1", "namespaces", namespace, "configmaps", name] if get => tables
            .config_maps
            .get(&(namespace.to_string(), name.to_string()))
            .map(|data| {
                serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": namespace},
                    "data": data
                })
            }),
        ["api", "v1", "namespaces", _, "events"] if req.method() == hyper::Method::POST => {
            let event: serde_json::Value =
                serde_json::from_slice(req.body()).unwrap_or(serde_json::Value::Null);
            let mut created = event.clone();
            created["metadata"]["name"] = "event-1".into();
            tables.events.push(event);
            Some(created)
        }
        _ => None,
    };
    match found {
        Some(body) => json(200, &body),
        None => json(
            404,
            &serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found"
            }),
        ),
    }
}

fn service_account(namespace: &str, name: &str, role: Option<&str>) -> serde_json::Value {
    let mut metadata = serde_json::json!({"name": name, "namespace": namespace, "uid": "u-1"});
    if let Some(role) = role {
        metadata["annotations"] = serde_json::json!({"eks.amazonaws.com/role-arn": role});
    }
    serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata})
}
