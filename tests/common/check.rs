//! Checks for the reliability tests: every byte a read returns compared with the source, work
//! run under a deadline (a hung FUSE read fails the test instead of hanging it), the daemon's
//! peak memory, and single values from its Prometheus endpoint.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// Runs `work` on its own thread and returns its result; panics if it takes longer than
/// `limit` (the thread is left behind, blocked; the mount guards unblock it on cleanup).
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: not done after {limit:?}"),
        // The worker panicked: its message is already printed.
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the worker panicked"),
    }
}

/// Reads `len` bytes at `offset` of `file` and checks every byte against `expected` (the whole
/// object). Panics on any wrong byte and on an early end of file; returns the error of a read
/// that failed (after checking the bytes that came before it, since the kernel answers a read
/// that fails part way with the bytes it has).
pub fn pread_exact(
    file: &File,
    expected: &[u8],
    offset: u64,
    len: usize,
    what: &str,
) -> std::io::Result<()> {
    let want = (expected.len() as u64)
        .saturating_sub(offset)
        .min(len as u64) as usize;
    let mut buf = vec![0u8; want];
    let mut done = 0;
    let mut failed = None;
    while done < want {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => panic!(
                "{what}: end of file at {} of {}",
                offset + done as u64,
                expected.len()
            ),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let start = offset as usize;
    if buf[..done] != expected[start..start + done] {
        let first = (0..done)
            .find(|&i| buf[i] != expected[start + i])
            .unwrap_or_default();
        panic!(
            "{what}: wrong bytes reading {len} at {offset}: first difference at {} \
             (got {:#04x}, want {:#04x}; zero-filled from there: {})",
            offset + first as u64,
            buf[first],
            expected[start + first],
            buf[first..done].iter().all(|b| *b == 0)
        );
    }
    failed.map_or(Ok(()), Err)
}

/// Reads all of `path` front to back in `chunk`-byte preads, checking every byte; on the
/// first failed read returns its offset and error (the bytes before it were checked).
pub fn read_whole(path: &Path, expected: &[u8], chunk: usize) -> Result<(), (u64, std::io::Error)> {
    let file = File::open(path).map_err(|e| (0, e))?;
    let what = path.display().to_string();
    let mut offset = 0u64;
    while offset < expected.len() as u64 {
        pread_exact(&file, expected, offset, chunk, &what).map_err(|e| (offset, e))?;
        offset += chunk as u64;
    }
    let mut past_end = [0u8; 1];
    assert_eq!(
        file.read_at(&mut past_end, expected.len() as u64)
            .map_err(|e| (offset, e))?,
        0,
        "{what}: bytes past the end"
    );
    Ok(())
}

/// Peak resident memory (VmHWM) of process `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A loopback address with a port that was free a moment ago (for `--metrics-addr`).
pub fn free_local_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("127.0.0.1:{port}")
}

/// The value of `series` (exact name and labels) at the Prometheus endpoint `addr`; `None`
/// when the endpoint or the series is missing.
pub fn metric(addr: &str, series: &str) -> Option<f64> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines()
        .find(|l| l.split(' ').next() == Some(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
