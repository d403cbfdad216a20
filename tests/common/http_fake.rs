//! A small HTTP/1.1 server on loopback for the tests' fake control-plane endpoints (the
//! Kubernetes API, the EKS Pod Identity agent): every request, its body read whole, goes to
//! one handler. It stops when dropped.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

/// What answers each request.
pub type Handler = Arc<dyn Fn(Request<Bytes>) -> Response<Full<Bytes>> + Send + Sync>;

/// A running server.
pub struct FakeHttp {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _runtime: tokio::runtime::Runtime,
}

impl FakeHttp {
    pub fn start(handler: Handler) -> FakeHttp {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = match body.collect().await {
                                Ok(collected) => collected.to_bytes(),
                                Err(_) => Bytes::new(),
                            };
                            Ok::<_, Infallible>(handler(Request::from_parts(parts, body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeHttp {
            url,
            _runtime: runtime,
        }
    }
}

/// A JSON answer with `status`.
pub fn json(status: u16, body: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}
