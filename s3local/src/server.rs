//! [`LocalS3`]: the S3 service served over HTTP on loopback, on its own tokio runtime in a
//! background thread, so it works the same from plain `#[test]` functions, from async code
//! and from the `modelfs demo` command.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::service::S3Service;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::access::{ReadOnlyUser, SessionIssuer};
use crate::faults::Faults;
use crate::service::LocalS3Service;
use crate::shaping::Shaping;
use crate::stats::RequestStats;
use crate::store::FileStore;

/// Worker threads of the server's runtime.
const WORKERS: usize = 2;

/// How long shutdown waits for blocking file work still in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How to run a [`LocalS3`].
#[derive(Clone, Debug)]
pub struct LocalS3Config {
    /// Directory of the [`FileStore`] (created if missing; existing content is served).
    pub root: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Access key id clients must sign with.
    pub access_key: String,
    /// Secret key clients must sign with.
    pub secret_key: String,
    /// Region clients should be configured with (signatures for any region are accepted).
    pub region: String,
    /// Response shaping (first-byte latency, bandwidth caps) for benchmarks; off by default.
    pub shaping: Shaping,
    /// Users besides the owner, each limited to reading its prefixes (none by default).
    pub readers: Vec<ReadOnlyUser>,
    /// An STS whose temporary credentials are honoured (none by default).
    pub sessions: Option<Arc<dyn SessionIssuer>>,
    /// CPUs every thread of the server may run on (`sched_setaffinity`), so a benchmark can
    /// keep the endpoint off the cores of the system it measures. Empty (the default): wherever
    /// the scheduler puts them.
    pub cpus: Vec<usize>,
}

impl LocalS3Config {
    /// Access key id used by [`LocalS3Config::new`].
    pub const DEFAULT_ACCESS_KEY: &'static str = "modelfs-test";
    /// Secret key used by [`LocalS3Config::new`].
    pub const DEFAULT_SECRET_KEY: &'static str = "modelfs-test-secret";
    /// Region used by [`LocalS3Config::new`].
    pub const DEFAULT_REGION: &'static str = "us-east-1";

    /// A configuration serving the store at `root` on `127.0.0.1:0` with the default
    /// credentials and region.
    pub fn new(root: impl Into<PathBuf>) -> LocalS3Config {
        LocalS3Config {
            root: root.into(),
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            access_key: Self::DEFAULT_ACCESS_KEY.to_string(),
            secret_key: Self::DEFAULT_SECRET_KEY.to_string(),
            region: Self::DEFAULT_REGION.to_string(),
            shaping: Shaping::default(),
            readers: Vec::new(),
            sessions: None,
            cpus: Vec::new(),
        }
    }
}

/// A running local S3 server. Dropping it stops the server: the listener closes, open
/// connections are aborted and the server thread is joined.
#[derive(Debug)]
pub struct LocalS3 {
    config: LocalS3Config,
    addr: SocketAddr,
    service: LocalS3Service,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LocalS3 {
    /// Opens (or creates) the store at `config.root`, binds `config.bind` and starts serving.
    /// Returns once the listener is bound and the server thread is running.
    pub fn start(config: LocalS3Config) -> io::Result<LocalS3> {
        let store = Arc::new(FileStore::open(&config.root)?);
        let service = LocalS3Service::new(store).with_shaping(config.shaping);
        let http = service.clone().into_http_service(
            &config.access_key,
            &config.secret_key,
            &config.readers,
            config.sessions.clone(),
        );

        let listener = std::net::TcpListener::bind(config.bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;

        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let cpus = config.cpus.clone();
        let thread = std::thread::Builder::new()
            .name(format!("s3local-{}", addr.port()))
            .spawn(move || serve_thread(listener, http, cpus, shutdown_rx, ready_tx))?;
        let started = ready_rx.recv().unwrap_or_else(|_| {
            Err(io::Error::other(
                "the local S3 server thread exited during startup",
            ))
        });
        if let Err(err) = started {
            let _ = thread.join();
            return Err(err);
        }
        tracing::debug!(%addr, root = %config.root.display(), "local S3 server started");
        Ok(LocalS3 {
            config,
            addr,
            service,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// CPU seconds (user + system) the server's threads have used since it started: what
    /// serving cost, apart from a client in the same process. `None` if the clock rate is
    /// unknown.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let server = format!("s3local-{}", self.addr.port());
        let workers = format!("{server}w");
        crate::cpu::threads_cpu_seconds(|name| name == server || name == workers)
    }

    /// `http://HOST:PORT` (a loopback address when bound to an unspecified one).
    pub fn endpoint_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        format!("http://{addr}")
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Access key id clients must sign with.
    pub fn access_key(&self) -> &str {
        &self.config.access_key
    }

    /// Secret key clients must sign with.
    pub fn secret_key(&self) -> &str {
        &self.config.secret_key
    }

    /// Region clients should use.
    pub fn region(&self) -> &str {
        &self.config.region
    }

    /// The configuration the server was started with.
    pub fn config(&self) -> &LocalS3Config {
        &self.config
    }

    /// The store behind the server (seed or inspect objects without HTTP).
    pub fn store(&self) -> &Arc<FileStore> {
        self.service.store()
    }

    /// The faults the server injects: add rules at any time, also while clients run (none
    /// by default).
    pub fn faults(&self) -> &Arc<Faults> {
        self.service.faults()
    }

    /// A snapshot of the request counters.
    pub fn stats(&self) -> RequestStats {
        self.service.stats()
    }

    /// Sets every request counter to zero.
    pub fn reset_stats(&self) {
        self.service.reset_stats();
    }

    /// Stops the server and waits for its thread (what dropping it does).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!(addr = %self.addr, "the local S3 server thread panicked");
            }
        }
    }
}

impl Drop for LocalS3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Restricts the calling thread to `cpus`; does nothing when `cpus` is empty.
fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: an all-zero `cpu_set_t` is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {cpu} is out of range"),
            ));
        }
        // SAFETY: `cpu` is below CPU_SETSIZE, checked above.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Body of the server thread: pins itself, builds the runtime, reports readiness, serves until
/// told to stop, then drops every connection task.
fn serve_thread(
    listener: std::net::TcpListener,
    http: S3Service,
    cpus: Vec<usize>,
    shutdown: oneshot::Receiver<()>,
    ready: std_mpsc::SyncSender<io::Result<()>>,
) {
    if let Err(err) = pin_current_thread(&cpus) {
        let _ = ready.send(Err(err));
        return;
    }
    // Workers inherit this thread's CPUs; blocking-pool threads may be started from anywhere,
    // so every runtime thread pins itself too.
    let port = listener.local_addr().map_or(0, |addr| addr.port());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .thread_name(format!("s3local-{port}w"))
        // Kept, not retired after 10 s idle: an exited thread's CPU would drop out of
        // `LocalS3::cpu_seconds`.
        .thread_keep_alive(Duration::from_secs(24 * 3600))
        .on_thread_start(move || {
            if let Err(err) = pin_current_thread(&cpus) {
                tracing::warn!(%err, "local S3 server: cannot pin a runtime thread");
            }
        })
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let listener = {
        let _entered = runtime.enter();
        TcpListener::from_std(listener)
    };
    let listener = match listener {
        Ok(listener) => listener,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    runtime.block_on(accept_loop(listener, http, shutdown));
    // Dropping the runtime's tasks closes every connection; blocking file work in flight
    // gets a short grace period.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
}

/// Accepts connections and serves each (HTTP/1.1 or HTTP/2) on its own task until
/// `shutdown` fires.
async fn accept_loop(listener: TcpListener, http: S3Service, mut shutdown: oneshot::Receiver<()>) {
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let socket = match accepted {
            Ok((socket, _peer)) => socket,
            Err(err) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(%err, "local S3 server: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let http = http.clone();
        tokio::spawn(async move {
            let served = ConnBuilder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), http)
                .await;
            if let Err(err) = served {
                tracing::debug!(%err, "local S3 server: connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_stops_quickly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = LocalS3::start(LocalS3Config::new(dir.path())).expect("start");
        assert!(server.endpoint_url().starts_with("http://127.0.0.1:"));
        assert_eq!(server.access_key(), "modelfs-test");
        assert_eq!(server.secret_key(), "modelfs-test-secret");
        assert_eq!(server.region(), "us-east-1");
        let addr = server.local_addr();
        // An idle connection must not keep the server alive.
        let _idle = std::net::TcpStream::connect(addr).expect("connect");
        let started = std::time::Instant::now();
        drop(server);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "listener closed"
        );
    }

    /// The CPUs a thread may run on, from its `status` file under `/proc`.
    fn allowed_cpus(thread_dir: &str) -> String {
        let status =
            std::fs::read_to_string(format!("{thread_dir}/status")).expect("thread status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list")
            .trim()
            .to_string()
    }

    #[test]
    fn every_server_thread_runs_on_the_configured_cpus() {
        // The last CPU this process may use, so the test also runs under `taskset`.
        let mine = allowed_cpus("/proc/thread-self");
        let cpu: usize = mine
            .split(',')
            .next_back()
            .and_then(|range| range.split('-').next_back())
            .and_then(|n| n.parse().ok())
            .expect("a CPU");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = LocalS3Config::new(dir.path());
        config.cpus = vec![cpu];
        let server = LocalS3::start(config).expect("start");
        // This server's threads only (other tests run servers at the same time).
        let prefix = format!("s3local-{}", server.local_addr().port());
        let mut server_threads = 0;
        for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
            let tid = task
                .expect("task")
                .file_name()
                .to_string_lossy()
                .to_string();
            let name =
                std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
            if name.starts_with(&prefix) {
                server_threads += 1;
                let allowed = allowed_cpus(&format!("/proc/self/task/{tid}"));
                assert_eq!(allowed, cpu.to_string(), "thread {}", name.trim());
            }
        }
        assert!(
            server_threads > WORKERS,
            "server thread and workers: {server_threads}"
        );
        // The test's own thread is not touched.
        assert_eq!(allowed_cpus("/proc/thread-self"), mine);
    }

    #[test]
    fn a_cpu_that_does_not_exist_fails_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = LocalS3Config::new(dir.path());
        config.cpus = vec![usize::MAX];
        assert!(LocalS3::start(config).is_err());
    }

    #[tokio::test]
    async fn can_be_dropped_inside_a_runtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = LocalS3::start(LocalS3Config::new(dir.path())).expect("start");
        drop(server);
    }
}
