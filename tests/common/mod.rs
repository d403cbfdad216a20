//! Shared harness for the end-to-end tests: real S3 protocol servers on loopback (the
//! project's s3s-based `LocalS3`, and moto's server from PyPI) and real FUSE mounts of the
//! `modelfs` binary, all torn down by guards even when a test fails.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod cgroup;
pub mod check;
pub mod csi;
pub mod http_fake;
pub mod kube_api;
pub mod moto;
pub mod mount;
pub mod pod_identity_agent;
pub mod process;
pub mod residency;
pub mod s3;
pub mod suite;
pub mod tmpfs;

use std::io::Read;
use std::path::Path;

/// Deterministic pseudo-random bytes (splitmix64), so expected data can be recomputed.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A reader of `len` pseudo-random bytes that never holds them all in memory.
pub struct PseudoRandomReader {
    seed: u64,
    remaining: u64,
    chunk: Vec<u8>,
    pos: usize,
}

impl PseudoRandomReader {
    /// `len` bytes from `seed`.
    pub fn new(seed: u64, len: u64) -> Self {
        PseudoRandomReader {
            seed,
            remaining: len,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for PseudoRandomReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        if self.pos == self.chunk.len() {
            self.seed = self.seed.wrapping_add(1);
            self.chunk = pseudo_random(self.seed, 1 << 20);
            self.pos = 0;
        }
        let n = buf
            .len()
            .min(self.chunk.len() - self.pos)
            .min(self.remaining as usize);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Reads `len` bytes at `offset` of `path` with pread (short only at end of file).
pub fn pread(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

/// The text of `GET /metrics` from a mount's `--metrics-addr`.
pub fn scrape_metrics(addr: &str) -> String {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).expect("connect metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    text
}

/// Writes dirty pages back, then drops the page cache (needs root), so the next reads come
/// from disk.
pub fn drop_page_cache() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches (needs root)");
}

/// ComfyUI's asset scan: the 8-byte length, then the JSON header, of every model.
pub fn scan_header(path: &Path) -> usize {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).expect("open");
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0).expect("length");
    let n = u64::from_le_bytes(len) as usize;
    let mut json = vec![0u8; n];
    file.read_exact_at(&mut json, 8).expect("json");
    let value: serde_json::Value = serde_json::from_slice(&json).expect("header is JSON");
    value.as_object().map_or(0, |o| o.len())
}
