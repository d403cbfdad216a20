//! A fake Kubernetes API server on loopback, for the plugin's API calls: it answers
//! `GET /api/v1/namespaces/NS/serviceaccounts/NAME` and `.../configmaps/NAME` from tables the
//! test edits, records `POST .../events`, and answers 404 otherwise. The plugin reaches it
//! through a kubeconfig file (`KUBECONFIG`), as any client outside a cluster does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

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

type Accounts = Arc<Mutex<Tables>>;

/// A running fake API server; stops with the test process's runtime.
pub struct FakeKubeApi {
    accounts: Accounts,
    url: String,
    _runtime: tokio::runtime::Runtime,
}

impl FakeKubeApi {
    pub fn start() -> FakeKubeApi {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let accounts: Accounts = Arc::default();
        let table = accounts.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let table = table.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let table = table.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, Infallible>(answer(&table, &Request::from_parts(parts, body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeKubeApi {
            accounts,
            url,
            _runtime: runtime,
        }
    }

    /// Creates or replaces service account `namespace/name`, annotated with `role` when given.
    pub fn set_service_account(&self, namespace: &str, name: &str, role: Option<&str>) {
        self.accounts.lock().expect("table").accounts.insert(
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
        self.accounts
            .lock()
            .expect("table")
            .config_maps
            .insert((namespace.to_string(), name.to_string()), data);
    }

    /// The Events posted so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.accounts.lock().expect("table").events.clone()
    }

    /// Writes a kubeconfig for this server into `dir`; returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: plugin\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: plugin\ncurrent-context: fake\n",
            self.url
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

fn answer(tables: &Accounts, req: &Request<Bytes>) -> Response<Full<Bytes>> {
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
    let (status, body) = match found {
        Some(body) => (StatusCode::OK, body),
        None => (
            StatusCode::NOT_FOUND,
            serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found"
            }),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

fn service_account(namespace: &str, name: &str, role: Option<&str>) -> serde_json::Value {
    let mut metadata = serde_json::json!({"name": name, "namespace": namespace, "uid": "u-1"});
    if let Some(role) = role {
        metadata["annotations"] = serde_json::json!({"eks.amazonaws.com/role-arn": role});
    }
    serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata})
}
