//! How much of a file is in the page cache, asked with `mincore(2)` over a read-only mapping
//! (which reads nothing), and the cache entry files of the disk cache.

use std::path::{Path, PathBuf};

/// Bytes of `path` in the page cache (whole pages; the last one counts whole).
pub fn resident_bytes(path: &Path) -> std::io::Result<u64> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    // SAFETY: a read-only shared mapping of a file nobody truncates while we look; it is
    // only given to mincore(2), never read.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let page = 4096u64;
    let mut pages = vec![0u8; len.div_ceil(page) as usize];
    // SAFETY: `map` is a live mapping of `len` bytes, `pages` has one byte per page of it.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            len as usize,
            pages.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(pages.iter().filter(|p| *p & 1 == 1).count() as u64 * page)
}

/// The data files of the cache entries under `cache_dir` (`v1/objects/*/*/data`).
pub fn cache_data_files(cache_dir: &Path) -> Vec<PathBuf> {
    cache_entry_files(cache_dir, "data")
}

/// The files called `name` (`data`, `map`, `verified`) of the cache entries under
/// `cache_dir`.
pub fn cache_entry_files(cache_dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![cache_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == name) {
                found.push(path);
            }
        }
    }
    found
}

/// The data file of the cache entry of the object of `size` bytes (sizes tell entries apart).
pub fn cache_data_file_of_size(cache_dir: &Path, size: u64) -> Option<PathBuf> {
    cache_data_files(cache_dir)
        .into_iter()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == size))
}
