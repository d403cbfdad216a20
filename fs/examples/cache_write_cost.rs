//! CPU-seconds per GiB of ways to put downloaded bytes into a cache file and hand them to a
//! reader, without the network or FUSE around them: what a different cold path would save.
//!
//! ```sh
//! cargo build --release -p modelfs-fs --example cache_write_cost
//! sync; echo 3 > /proc/sys/vm/drop_caches
//! taskset -c 1 target/release/examples/cache_write_cost <mode> <file> [GiB]
//! ```
//!
//! Every mode takes 1 MiB blocks arriving in 64 KiB pieces:
//! - `buffered`: each piece written through the page cache, the block read back for the
//!   reader, the pages written back 32 MiB and dropped 128 MiB behind (today's disk path);
//! - `direct-pooled`: pieces copied into a 4 KiB-aligned block taken from a pool, written
//!   with `O_DIRECT`, the block itself handed to the reader and kept (192 MiB of blocks, like
//!   the memory tier), then returned to the pool;
//! - `direct-fresh`: the same with a newly allocated block each time (what holding blocks
//!   without a pool costs: every block's pages are faulted in anew).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Instant;

const BLOCK: usize = 1 << 20;
const PIECE: usize = 64 << 10;
const HELD_BLOCKS: usize = 192;
const WRITE_BACK_LAG: u64 = 32;
const DROP_LAG: u64 = 128;

/// A 4 KiB-aligned 1 MiB buffer.
struct Aligned(Box<[u8]>, usize);

impl Aligned {
    fn new() -> Aligned {
        let mut v = vec![0u8; BLOCK + 4096].into_boxed_slice();
        let skew = (4096 - v.as_ptr() as usize % 4096) % 4096;
        v[skew] = 1; // a fresh allocation's pages are touched by the copy, as in a daemon
        Aligned(v, skew)
    }

    fn block(&mut self) -> &mut [u8] {
        &mut self.0[self.1..self.1 + BLOCK]
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain old data; zeroed is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

fn range_op(file: &File, block: u64, flags: libc::c_uint, drop: bool) {
    let (offset, len) = ((block * BLOCK as u64) as i64, BLOCK as i64);
    // SAFETY: a valid fd and range; both calls only advise the kernel.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, flags);
        if drop {
            libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED);
        }
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(path)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: cache_write_cost buffered|direct-pooled|direct-fresh FILE [GiB]");
        std::process::exit(2);
    };
    let gib: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(4);
    let source: Vec<u8> = (0..BLOCK).map(|i| (i * 31 + i / 4093) as u8).collect();
    let _ = std::fs::remove_file(path);
    let file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(path)?;
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut pool: Vec<Aligned> = Vec::new();
    let mut held: VecDeque<Aligned> = VecDeque::new();
    let mut read_back = vec![0u8; BLOCK];
    let mut checksum = 0u64;
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    for index in 0..gib * 1024 {
        let offset = index * BLOCK as u64;
        if mode == "buffered" {
            for (k, piece) in source.chunks(PIECE).enumerate() {
                file.write_all_at(piece, offset + (k * PIECE) as u64)?;
            }
            file.read_exact_at(&mut read_back, offset)?;
            checksum += read_back[index as usize % BLOCK] as u64;
            if index >= WRITE_BACK_LAG {
                range_op(
                    &file,
                    index - WRITE_BACK_LAG,
                    libc::SYNC_FILE_RANGE_WRITE,
                    false,
                );
            }
            if index >= DROP_LAG {
                let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                range_op(&file, index - DROP_LAG, wait, true);
            }
            continue;
        }
        let mut block = match mode.as_str() {
            "direct-pooled" => pool.pop().unwrap_or_else(Aligned::new),
            "direct-fresh" => Aligned::new(),
            other => panic!("unknown mode {other}"),
        };
        for (k, piece) in source.chunks(PIECE).enumerate() {
            block.block()[k * PIECE..k * PIECE + piece.len()].copy_from_slice(piece);
        }
        direct.write_all_at(block.block(), offset)?;
        checksum += block.block()[index as usize % BLOCK] as u64;
        held.push_back(block);
        if held.len() > HELD_BLOCKS {
            if let Some(old) = held.pop_front().filter(|_| mode == "direct-pooled") {
                pool.push(old);
            }
        }
    }
    let (cpu, wall) = (cpu_seconds() - cpu, wall.elapsed().as_secs_f64());
    println!(
        "{mode}: {:.3} CPU-s/GiB, {:.3} s/GiB (checksum {checksum})",
        cpu / gib as f64,
        wall / gib as f64
    );
    std::fs::remove_file(path)
}
