//! A fake EKS Pod Identity agent on loopback: `GET /v1/credentials` with the pod's token in
//! `Authorization` answers the credentials of the role associated with that token (as the
//! real agent answers for the token's service account), 400 for an unknown token. Every
//! session it hands out is also given to `on_issue` (so the test's S3 server honours it).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};

use super::moto::AssumedRole;

type Associations = Arc<Mutex<HashMap<String, String>>>;

/// A running fake agent; stops with the test.
pub struct FakePodIdentityAgent {
    associations: Associations,
    pub url: String,
    _runtime: tokio::runtime::Runtime,
}

impl FakePodIdentityAgent {
    pub fn start(on_issue: Arc<dyn Fn(AssumedRole) + Send + Sync>) -> FakePodIdentityAgent {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!(
            "http://{}/v1/credentials",
            listener.local_addr().expect("addr")
        );
        let associations: Associations = Arc::default();
        let table = associations.clone();
        let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (table, on_issue, issued) = (table.clone(), on_issue.clone(), issued.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<_>| {
                        let role = req
                            .headers()
                            .get(hyper::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|token| table.lock().expect("table").get(token).cloned());
                        let answer = match role {
                            Some(role_arn) => {
                                let n = issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let session = AssumedRole {
                                    role_arn,
                                    access_key_id: format!("ASIAPODIDENTITY{n:05}"),
                                    secret_access_key: format!("pod-identity-secret-{n}"),
                                    session_token: format!("pod-identity-session-{n}"),
                                };
                                on_issue(session.clone());
                                let body = serde_json::json!({
                                    "AccessKeyId": session.access_key_id,
                                    "SecretAccessKey": session.secret_access_key,
                                    "Token": session.session_token,
                                    "AccountId": "123456789012",
                                    "Expiration": "2030-01-01T00:00:00Z"
                                });
                                Response::new(Full::new(Bytes::from(body.to_string())))
                            }
                            None => {
                                let mut response = Response::new(Full::new(Bytes::from_static(
                                    b"{\"code\":\"InvalidToken\"}",
                                )));
                                *response.status_mut() = StatusCode::BAD_REQUEST;
                                response
                            }
                        };
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakePodIdentityAgent {
            associations,
            url,
            _runtime: runtime,
        }
    }

    /// Pods presenting `token` get credentials of `role_arn`.
    pub fn associate(&self, token: &str, role_arn: &str) {
        self.associations
            .lock()
            .expect("table")
            .insert(token.to_string(), role_arn.to_string());
    }
}
