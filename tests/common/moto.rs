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
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start moto_server ({e}); install it with scripts/setup-tests.sh (pip install 'moto[server]')")
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

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
