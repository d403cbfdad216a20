//! moto's S3 server (PyPI `moto[server]`), a second, independent S3 implementation on
//! loopback, killed on drop.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::s3::Endpoint;

/// A running `moto_server`.
pub struct MotoServer {
    child: Child,
    /// How to reach it.
    pub endpoint: Endpoint,
}

impl MotoServer {
    /// Starts `moto_server` on a free loopback port. Panics with set-up instructions when it
    /// is not installed (the test command installs it; a silent skip would hide a gap).
    pub fn start() -> MotoServer {
        MotoServer::spawn(Command::new("moto_server"))
    }

    fn spawn(mut command: Command) -> MotoServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start moto_server ({e}); install it with scripts/setup.sh --with-tests (pip install 'moto[server]')")
            });
        let mut server = MotoServer {
            child,
            endpoint: Endpoint {
                url: format!("http://127.0.0.1:{port}"),
                region: "us-east-1".into(),
                access_key: "moto-test".into(),
                secret_key: "moto-test-secret".into(),
            },
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("moto_server exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }
}

impl MotoServer {
    /// Every role session moto's STS handed out.
    pub fn assumed_roles(&self) -> Vec<AssumedRole> {
        let answer = self.http("GET", "/moto-api/data.json", "", "");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let data: serde_json::Value = serde_json::from_str(body).expect("moto's data.json");
        let field = |s: &serde_json::Value, name: &str| s[name].as_str().unwrap_or("").to_string();
        data["sts"]["AssumedRole"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| AssumedRole {
                role_arn: field(s, "role_arn"),
                access_key_id: field(s, "access_key_id"),
                secret_access_key: field(s, "secret_access_key"),
                session_token: field(s, "session_token"),
            })
            .collect()
    }

    /// One HTTP/1.1 request on a fresh connection; the whole answer as text.
    fn http(&self, method: &str, path: &str, headers: &str, body: &str) -> String {
        use std::io::{Read, Write};
        let address = self.endpoint.url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).expect("connect to moto");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{headers}Content-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("receive");
        answer
    }
}

/// One session of moto's STS.
#[derive(Clone, Debug)]
pub struct AssumedRole {
    pub role_arn: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
