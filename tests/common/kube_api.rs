//! A fake Kubernetes API server on loopback, for the plugin's reads of service accounts: it
//! answers `GET /api/v1/namespaces/NS/serviceaccounts/NAME` from a table the test edits, and
//! 404 otherwise. The plugin reaches it through a kubeconfig file (`KUBECONFIG`), as any
//! client outside a cluster does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};

type Accounts = Arc<Mutex<HashMap<(String, String), Option<String>>>>;

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
                    let service = hyper::service::service_fn(move |req| {
                        let table = table.clone();
                        async move { Ok::<_, Infallible>(answer(&table, &req)) }
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
        self.accounts.lock().expect("table").insert(
            (namespace.to_string(), name.to_string()),
            role.map(str::to_string),
        );
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

fn answer<B>(accounts: &Accounts, req: &Request<B>) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    let found = match parts.as_slice() {
        ["api", "v1", "namespaces", namespace, "serviceaccounts", name]
            if req.method() == hyper::Method::GET =>
        {
            accounts
                .lock()
                .expect("table")
                .get(&(namespace.to_string(), name.to_string()))
                .map(|role| service_account(namespace, name, role.as_deref()))
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
