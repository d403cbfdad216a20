//! A fake EKS Pod Identity agent on loopback: `GET /v1/credentials` with the pod's token in
//! `Authorization` answers the credentials of the role associated with that token (as the
//! real agent answers for the token's service account), 400 for an unknown token. Every
//! session it hands out is also given to `on_issue` (so the test's S3 server honours it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::Bytes;
use hyper::Request;

use super::http_fake::{json, FakeHttp};
use super::moto::AssumedRole;

type Associations = Arc<Mutex<HashMap<String, String>>>;

/// A running fake agent; stops when dropped.
pub struct FakePodIdentityAgent {
    associations: Associations,
    /// Its credentials URL.
    pub url: String,
    _server: FakeHttp,
}

impl FakePodIdentityAgent {
    pub fn start(on_issue: Arc<dyn Fn(AssumedRole) + Send + Sync>) -> FakePodIdentityAgent {
        let associations: Associations = Arc::default();
        let table = associations.clone();
        let issued = AtomicU64::new(0);
        let server = FakeHttp::start(Arc::new(move |req: Request<Bytes>| {
            let role = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|token| table.lock().expect("table").get(token).cloned());
            let Some(role_arn) = role else {
                return json(400, &serde_json::json!({"code": "InvalidToken"}));
            };
            let n = issued.fetch_add(1, Ordering::Relaxed);
            let session = AssumedRole {
                role_arn,
                access_key_id: format!("ASIAPODIDENTITY{n:05}"),
                secret_access_key: format!("pod-identity-secret-{n}"),
                session_token: format!("pod-identity-session-{n}"),
            };
            on_issue(session.clone());
            json(
                200,
                &serde_json::json!({
                    "AccessKeyId": session.access_key_id,
                    "SecretAccessKey": session.secret_access_key,
                    "Token": session.session_token,
                    "AccountId": "123456789012",
                    "Expiration": "2030-01-01T00:00:00Z"
                }),
            )
        }));
        FakePodIdentityAgent {
            associations,
            url: format!("{}/v1/credentials", server.url),
            _server: server,
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
