//! A daemon that lives for weeks (issue 19): keys that change every metadata TTL and 200,000
//! lookups through a real mount must not grow its inode table or its memory.
//!
//! Each round a writer puts a new generation of keys and deletes the previous one (through
//! the S3 API, and for most keys straight into the server's store: a debug-built SDK request
//! costs milliseconds of CPU, and the daemon sees the same listings either way). Until the
//! writes are done and a TTL has passed since, the test stats names that never existed;
//! then it stats every new key (the kernel now holds its inode) and every deleted key (its
//! dentry has expired, so the kernel asks the daemon again, hears ENOENT, drops the dentry
//! and forgets the inode). Every name is either new or past its entry TTL, so each stat
//! reaches the daemon (the daemon's own lookup count is checked).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};

use common::mount::Mount;
use common::s3::LocalServer;

const BUCKET: &str = "models";
/// The mount's metadata TTL (entries, attributes and listings).
const TTL: Duration = Duration::from_secs(1);
/// Keys of one generation.
const KEYS: usize = 1_000;
/// Keys of a generation put and deleted through the S3 API (the others go to the store).
const API_KEYS: usize = 100;
/// Threads that stat at once.
const STATTERS: usize = 4;
const WARM_UP_ROUNDS: usize = 2;
const LOOKUPS: usize = 200_000;
/// How far the daemon's RSS may rise between the warm-up and the end of the churn.
const RSS_MARGIN_KIB: u64 = 6 * 1024;

/// A 100-byte tail, so a leaked inode (key, name and index entry) costs visible memory.
fn key(round: usize, i: usize) -> String {
    format!("gen{round:04}-{i:05}-{}", "x".repeat(100))
}

/// Puts and deletes keys through the S3 API, many requests in flight, or in the store.
struct Writer<'a> {
    server: &'a LocalServer,
    client: aws_sdk_s3::Client,
    runtime: tokio::runtime::Runtime,
}

impl Writer<'_> {
    fn new(server: &LocalServer) -> Writer<'_> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Writer {
            server,
            client: common::s3::client(&server.endpoint),
            runtime,
        }
    }

    /// Puts the keys of generation `put` and deletes those of `delete`.
    fn churn(&self, put: usize, delete: Option<usize>) {
        let store = self.server.store();
        for i in API_KEYS..KEYS {
            store.put_bytes(BUCKET, &key(put, i), b"w").expect("put");
            if let Some(round) = delete {
                store.delete(BUCKET, &key(round, i)).expect("delete");
            }
        }
        let client = Arc::new(self.client.clone());
        let puts = (0..API_KEYS).map(|i| (key(put, i), true));
        let deletes = delete
            .into_iter()
            .flat_map(|round| (0..API_KEYS).map(move |i| (key(round, i), false)));
        let requests = stream::iter(puts.chain(deletes))
            .map(|(key, put)| {
                let client = client.clone();
                async move {
                    let sent = if put {
                        client
                            .put_object()
                            .bucket(BUCKET)
                            .key(&key)
                            .body(b"w".to_vec().into())
                            .send()
                            .await
                            .map(drop)
                            .map_err(|e| format!("{e:?}"))
                    } else {
                        client
                            .delete_object()
                            .bucket(BUCKET)
                            .key(&key)
                            .send()
                            .await
                            .map(drop)
                            .map_err(|e| format!("{e:?}"))
                    };
                    sent.unwrap_or_else(|e| panic!("{key}: {e}"));
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>();
        self.runtime.block_on(requests);
    }
}

fn value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{series} missing from:\n{text}")) as u64
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Stats `names` from [`STATTERS`] threads; panics unless each exists exactly when `exists`.
/// Returns the number of stats.
fn stat_all(mount: &Mount, names: &[String], exists: bool) -> usize {
    std::thread::scope(|scope| {
        for chunk in names.chunks(names.len().div_ceil(STATTERS).max(1)) {
            scope.spawn(move || {
                for name in chunk {
                    let found = std::fs::symlink_metadata(mount.join(name));
                    assert_eq!(found.is_ok(), exists, "{name}: {found:?}");
                }
            });
        }
    });
    names.len()
}

/// Stats names that never existed from [`STATTERS`] threads until `done` says so. Returns
/// the number of stats.
fn stat_misses_until(mount: &Mount, round: usize, done: &(dyn Fn() -> bool + Sync)) -> usize {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..STATTERS {
            scope.spawn(|| {
                while !done() {
                    let name = format!("never-{round}-{}", next.fetch_add(1, Ordering::Relaxed));
                    let found = std::fs::symlink_metadata(mount.join(&name));
                    assert!(found.is_err(), "{name}: {found:?}");
                }
            });
        }
    });
    next.into_inner()
}

/// Stats this round's keys (they exist) and the previous round's (deleted a TTL ago).
fn stat_generations(mount: &Mount, round: usize) -> usize {
    let new: Vec<String> = (0..KEYS).map(|i| key(round, i)).collect();
    let old: Vec<String> = (0..KEYS * usize::from(round > 0))
        .map(|i| key(round - 1, i))
        .collect();
    stat_all(mount, &new, true) + stat_all(mount, &old, false)
}

#[test]
fn churning_keys_and_200k_lookups_keep_the_inode_table_and_rss_bounded() {
    let server = LocalServer::start(BUCKET);
    let writer = Writer::new(&server);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let ttl = format!("{}ms", TTL.as_millis());
    let mount = Mount::new(
        &server.endpoint,
        &format!("s3://{BUCKET}"),
        // At debug, fuser logs every request: 200,000 lines would time the logger.
        &[
            "--metadata-ttl",
            &ttl,
            "--metrics-addr",
            &addr,
            "--log-level",
            "info",
        ],
    );
    let pid = mount.pid().expect("daemon pid");

    let started = Instant::now();
    let mut lookups = 0;
    let mut warm = None;
    for round in 0.. {
        // A listing fetched during the writes may have missed some of them, so the keys are
        // stat'ed only once it has expired.
        let writes_done = OnceLock::new();
        let expired = || {
            writes_done
                .get()
                .is_some_and(|done: &Instant| done.elapsed() > TTL + Duration::from_millis(50))
        };
        std::thread::scope(|scope| {
            scope.spawn(|| {
                writer.churn(round, round.checked_sub(1));
                let _ = writes_done.set(Instant::now());
            });
            lookups += stat_misses_until(&mount, round, &expired);
        });
        lookups += stat_generations(&mount, round);
        if round + 1 == WARM_UP_ROUNDS {
            let text = common::scrape_metrics(&addr);
            warm = Some((
                rss_kib(pid),
                value(&text, "modelfs_inodes"),
                value(&text, "modelfs_fuse_requests_total{op=\"lookup\"}"),
                lookups,
            ));
        }
        if let Some((.., warm_lookups)) = warm {
            if lookups - warm_lookups >= LOOKUPS {
                break;
            }
        }
    }
    let (rss_before, inodes_before, daemon_lookups_before, warm_lookups) = warm.expect("warmed up");
    // Forgets are queued by the kernel and may trail the last stats a little.
    std::thread::sleep(Duration::from_millis(200));
    let text = common::scrape_metrics(&addr);
    let rss_after = rss_kib(pid);
    let inodes_after = value(&text, "modelfs_inodes");
    let daemon_lookups = value(&text, "modelfs_fuse_requests_total{op=\"lookup\"}");
    let forgets = value(&text, "modelfs_fuse_requests_total{op=\"forget\"}");
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "churn: {} lookups after warm-up ({} reached the daemon, {forgets} forgets in all) \
         in {secs:.1} s; RSS {rss_before} KiB after warm-up, {rss_after} KiB after churn; \
         inodes {inodes_before} after warm-up, {inodes_after} after churn",
        lookups - warm_lookups,
        daemon_lookups - daemon_lookups_before,
    );
    assert!(
        daemon_lookups - daemon_lookups_before >= LOOKUPS as u64,
        "the stats must reach the daemon: {} of {} did",
        daemon_lookups - daemon_lookups_before,
        lookups - warm_lookups
    );
    assert!(
        inodes_after <= inodes_before + KEYS as u64,
        "inodes grew from {inodes_before} after warm-up to {inodes_after} after churn"
    );
    assert!(
        rss_after <= rss_before + RSS_MARGIN_KIB,
        "RSS grew from {rss_before} KiB after warm-up to {rss_after} KiB after churn \
         (margin {RSS_MARGIN_KIB} KiB)"
    );
}
