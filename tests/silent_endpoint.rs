//! An endpoint that accepts connections and never answers (a hung load balancer, a dead
//! proxy, a black-holed server) fails reads and the mount-time check within the bound of
//! `S3Config::max_wait_without_answer`, with an error, never with wrong bytes. A small TCP
//! proxy in front of the local S3 server is switched between forwarding and swallowing.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::check::{pread_exact, within};
use common::mount::{endpoint_args, is_mounted, modelfs_bin, s3_env, Mount};
use common::process::{output_within, unmount_lazily};
use common::s3::{Endpoint, LocalServer};
use common::PseudoRandomReader;
use modelfs_fs::store::S3Config;

const BUCKET: &str = "models";
const MIB: u64 = 1 << 20;
/// Process start, FUSE round trips and scheduling on a loaded test machine, on top of a bound.
const SLACK: Duration = Duration::from_secs(3);

/// A TCP proxy to `upstream` that can go silent: while silent it accepts connections and
/// reads requests but sends nothing back, on new connections and on those it was already
/// forwarding. When it speaks again it closes every connection it silenced (as a restarted
/// server would) and forwards new ones.
struct Proxy {
    url: String,
    state: Arc<ProxyState>,
}

struct ProxyState {
    upstream: SocketAddr,
    /// Even: forwarding; odd: silent. A connection forwards only during the epoch it was
    /// accepted in, so one that was silenced never forwards again.
    epoch: AtomicU64,
    /// Requests read while silent (counted by their `HTTP/1.1` request lines).
    swallowed: AtomicU64,
    /// The client side of every connection since the last time the proxy spoke again.
    clients: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    fn start(upstream: SocketAddr, silent: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let state = Arc::new(ProxyState {
            upstream,
            epoch: AtomicU64::new(u64::from(silent)),
            swallowed: AtomicU64::new(0),
            clients: Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        // The threads live as long as the test process; the mount guards close the sockets.
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let state = shared.clone();
                if let Ok(clone) = client.try_clone() {
                    state.clients().push(clone);
                }
                std::thread::spawn(move || state.serve(client));
            }
        });
        Proxy { url, state }
    }

    fn set_silent(&self, silent: bool) {
        let epoch = self.state.epoch.load(Ordering::SeqCst);
        if is_silent(epoch) == silent {
            return;
        }
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
        if !silent {
            for client in self.state.clients().drain(..) {
                let _ = client.shutdown(Shutdown::Both);
            }
        }
    }

    fn swallowed(&self) -> u64 {
        self.state.swallowed.load(Ordering::SeqCst)
    }
}

impl ProxyState {
    fn clients(&self) -> std::sync::MutexGuard<'_, Vec<TcpStream>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn forwarding(&self, epoch: u64) -> bool {
        self.epoch.load(Ordering::SeqCst) == epoch && !is_silent(epoch)
    }

    /// Copies requests upstream and answers back while the connection's epoch lasts, then
    /// swallows whatever the client sends until it closes.
    fn serve(self: Arc<Self>, mut client: TcpStream) {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let mut upstream = None;
        if !is_silent(epoch) {
            let Ok(server) = TcpStream::connect(self.upstream) else {
                return;
            };
            if let (Ok(mut from), Ok(mut to)) = (server.try_clone(), client.try_clone()) {
                let state = self.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        if !state.forwarding(epoch) || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
            upstream = Some(server);
        }
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n @ 1..) = client.read(&mut buf) {
            match upstream.as_mut() {
                Some(server) if self.forwarding(epoch) => {
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                _ => {
                    let requests = buf[..n].windows(10).filter(|w| w == b" HTTP/1.1\r").count();
                    self.swallowed.fetch_add(requests as u64, Ordering::SeqCst);
                }
            }
        }
        if let Some(server) = upstream {
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

/// Whether the proxy is silent during `epoch` (odd epochs are).
fn is_silent(epoch: u64) -> bool {
    !epoch.is_multiple_of(2)
}

/// The endpoint of `server`, reached through `proxy`.
fn through(server: &Endpoint, proxy: &Proxy) -> Endpoint {
    Endpoint {
        url: proxy.url.clone(),
        ..server.clone()
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or_default()
}

#[test]
fn a_read_from_a_silent_endpoint_fails_with_eio_within_the_bound_and_the_mount_recovers() {
    let server = LocalServer::start(BUCKET);
    let key = "m/weights.dat";
    server
        .store()
        .put_from_reader(BUCKET, key, PseudoRandomReader::new(9, 4 * MIB))
        .expect("seed object");
    let expected = Arc::new(server.store().get_bytes(BUCKET, key).expect("source bytes"));
    let proxy = Proxy::start(server.server.local_addr(), false);
    // Default timeouts: the figure measured is the default one.
    let mount = Mount::new(
        &through(&server.endpoint, &proxy),
        "s3://models/m",
        &["--metadata-ttl", "1h"],
    );
    // Opened while the endpoint answers: opening needs the listing, reading needs a GET.
    let file = Arc::new(File::open(mount.join("weights.dat")).expect("open"));

    proxy.set_silent(true);
    // One S3 operation waits at most this long; a buffered read may be two (the readahead
    // request, then the kernel's second try of the page it needs).
    let per_operation = S3Config::default().max_wait_without_answer();
    let limit = 2 * per_operation + SLACK;
    let started = Instant::now();
    let (reader, want) = (file.clone(), expected.clone());
    let err = within(
        limit + Duration::from_secs(30),
        "read from a silent endpoint",
        move || pread_exact(&reader, &want, MIB, MIB as usize, "silent read"),
    )
    .expect_err("nobody answers: the read must fail");
    let took = started.elapsed();
    let swallowed = proxy.swallowed();
    eprintln!(
        "silent endpoint: read failed after {:.1} s ({err}); {swallowed} requests swallowed; \
         bound {:.0} s per S3 operation, {:.0} s per read",
        took.as_secs_f64(),
        per_operation.as_secs_f64(),
        (2 * per_operation).as_secs_f64()
    );
    assert_eq!(errno(&err), libc::EIO, "{err}");
    assert!(took <= limit, "took {took:?}, more than {limit:?}");
    assert!(swallowed >= 3, "the SDK's attempts reached the proxy");
    let log = mount.log_text();
    assert!(log.contains("no answer from"), "the log says why:\n{log}");

    // The endpoint answers again: the same handle reads exact bytes.
    proxy.set_silent(false);
    within(Duration::from_secs(60), "read after recovery", move || {
        pread_exact(&file, &expected, MIB, MIB as usize, "recovered read")
    })
    .expect("the mount works again once the endpoint answers");
}

#[test]
fn mounting_a_silent_endpoint_fails_within_the_bound_with_a_clear_message() {
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
    let proxy = Proxy::start(upstream.local_addr().expect("address"), true);
    let endpoint = Endpoint {
        url: proxy.url.clone(),
        region: "us-east-1".into(),
        access_key: "k".into(),
        secret_key: "s".into(),
    };
    let first_byte = Duration::from_secs(2);
    let bound = S3Config {
        first_byte_timeout: first_byte,
        ..S3Config::default()
    }
    .max_wait_without_answer();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(modelfs_bin());
    s3_env(&mut cmd, &endpoint);
    cmd.arg("mount")
        .arg("s3://models")
        .arg(dir.path())
        .args(endpoint_args(&endpoint))
        .args(["--foreground", "--first-byte-timeout", "2s"]);
    let started = Instant::now();
    let out = output_within(
        &mut cmd,
        bound + SLACK + Duration::from_secs(30),
        || false,
        || unmount_lazily(dir.path()),
    );
    let took = started.elapsed();
    let status = out.status;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "silent endpoint: mount failed after {:.1} s (bound {bound:?}): {}",
        took.as_secs_f64(),
        stderr.trim()
    );
    assert!(!status.success(), "the mount must fail");
    assert!(
        stderr.contains("no answer from") && stderr.contains("ListObjectsV2"),
        "the message names the silence and the request: {stderr}"
    );
    assert!(took <= bound + SLACK, "took {took:?}, bound {bound:?}");
    assert!(!is_mounted(dir.path()), "nothing may stay mounted");
    assert!(
        proxy.swallowed() >= 3,
        "the SDK's attempts reached the proxy"
    );
}
