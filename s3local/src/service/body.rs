//! [`FileBody`]: a GetObject response body served from a read-only mapping of the object's
//! file, in fixed-size chunks.

use std::fs::File;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::Stream;
use s3s::stream::{ByteStream, RemainingLength};
use s3s::StdError;
use tokio::time::Sleep;

use crate::shaping::Pace;
use crate::stats::Counters;

/// Bytes per chunk (the unit the shaping releases).
pub(crate) const CHUNK: u64 = 256 * 1024;

/// Streams `remaining` bytes of a file from `offset`. The chunks are slices of one read-only
/// mapping of the window, so the socket copies straight from the page cache: reading each
/// chunk into a fresh buffer first cost this server half its CPU, which on a shared
/// benchmark machine is taken from the client being measured (S3's own CPU is not on the
/// client's machine). The mapping pins the version being served: writes replace an object's
/// file by renaming a new one over it, and nothing truncates a published file.
pub(crate) struct FileBody {
    /// The mapped window (`None` for an empty one), or the error opening it met, which the
    /// first poll reports.
    map: Result<Option<Arc<memmap2::Mmap>>, Option<io::Error>>,
    /// Offset in `map` of the next chunk.
    at: usize,
    remaining: u64,
    counters: Arc<Counters>,
    /// Response shaping (benchmarks only): first-byte latency and bandwidth caps.
    pace: Option<Pace>,
    /// The wait before the next chunk, while shaping holds it back.
    delay: Option<Pin<Box<Sleep>>>,
    /// The next chunk has been released by the shaping (or there is none).
    released: bool,
}

impl FileBody {
    /// A body of `len` bytes of `file` starting at `offset`.
    pub fn new(file: File, offset: u64, len: u64, counters: Arc<Counters>) -> FileBody {
        FileBody {
            map: map_window(&file, offset, len).map_err(Some),
            at: 0,
            remaining: len,
            counters,
            pace: None,
            delay: None,
            released: false,
        }
    }

    /// Shapes this body: chunks are held back as `pace` says.
    pub(crate) fn with_pace(mut self, pace: Option<Pace>) -> FileBody {
        self.pace = pace;
        self
    }
}

/// Maps `offset..offset + len` of `file` read-only and asks the kernel to read it ahead, or
/// says why it cannot (the file is shorter than the window: a truncated object).
fn map_window(file: &File, offset: u64, len: u64) -> io::Result<Option<Arc<memmap2::Mmap>>> {
    if len == 0 {
        return Ok(None);
    }
    let end = offset
        .checked_add(len)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    if file.metadata()?.len() < end {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let len = usize::try_from(len).map_err(io::Error::other)?;
    // SAFETY: a shared read-only mapping of a file that is never truncated or rewritten in
    // place once published (see `FileBody`), checked above to cover the whole window.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map(file)?
    };
    let _ = map.advise(memmap2::Advice::Sequential);
    advise_ahead(&map, 0, READ_AHEAD);
    Ok(Some(Arc::new(map)))
}

/// How far ahead of the chunk being sent the body asks the kernel to read the file.
const READ_AHEAD: usize = 4 * CHUNK as usize;

/// Asks the kernel to start reading `from..from + len` of `map` (clipped to it) into the page
/// cache, so that sending those chunks later finds them there. Advice only.
fn advise_ahead(map: &memmap2::Mmap, from: usize, len: usize) {
    let len = len.min(map.len().saturating_sub(from));
    if len > 0 {
        let _ = map.advise_range(memmap2::Advice::WillNeed, from, len);
    }
}

/// One chunk of a mapped window, as the bytes a [`Bytes`] hands out.
struct MappedChunk {
    map: Arc<memmap2::Mmap>,
    from: usize,
    len: usize,
}

impl AsRef<[u8]> for MappedChunk {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.from..self.from + self.len]
    }
}

impl Stream for FileBody {
    type Item = Result<Bytes, StdError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let map = match &mut this.map {
            Ok(Some(map)) => Arc::clone(map),
            Ok(None) => return Poll::Ready(None),
            Err(err) => {
                this.remaining = 0;
                let err = err.take().unwrap_or_else(|| io::ErrorKind::Other.into());
                return Poll::Ready(Some(Err(Box::new(err))));
            }
        };
        if let Some(delay) = this.delay.as_mut() {
            ready!(delay.as_mut().poll(cx));
            this.delay = None;
        }
        if !this.released {
            this.released = true;
            if let Some(pace) = this.pace.as_mut() {
                let at = pace.release(this.remaining.min(CHUNK));
                if at > tokio::time::Instant::now() {
                    let delay = this.delay.insert(Box::pin(tokio::time::sleep_until(at)));
                    ready!(delay.as_mut().poll(cx));
                    this.delay = None;
                }
            }
        }
        this.released = false;
        // Bounded by CHUNK, so the conversion cannot truncate.
        let len = this.remaining.min(CHUNK) as usize;
        advise_ahead(&map, this.at + READ_AHEAD, len);
        let chunk = Bytes::from_owner(MappedChunk {
            map,
            from: this.at,
            len,
        });
        this.at += len;
        this.remaining -= len as u64;
        Counters::add(&this.counters.bytes_sent, len as u64);
        Poll::Ready(Some(Ok(chunk)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let chunks = self.remaining.div_ceil(CHUNK);
        let chunks = usize::try_from(chunks).unwrap_or(usize::MAX);
        (chunks, Some(chunks))
    }
}

impl ByteStream for FileBody {
    fn remaining_length(&self) -> RemainingLength {
        match usize::try_from(self.remaining) {
            Ok(n) => RemainingLength::new_exact(n),
            Err(_) => RemainingLength::unknown(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn streams_the_requested_window() {
        let mut file = tempfile::tempfile().expect("tempfile");
        let data: Vec<u8> = (0..(CHUNK as usize * 2 + 100))
            .map(|i| (i % 253) as u8)
            .collect();
        file.write_all(&data).expect("write");
        let counters = Arc::new(Counters::default());
        let start = 10u64;
        let len = CHUNK + 50;
        let mut body = FileBody::new(file, start, len, Arc::clone(&counters));
        assert_eq!(body.remaining_length().exact(), Some(len as usize));
        let mut got = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = body.next().await {
            got.extend_from_slice(&chunk.expect("chunk"));
            chunks += 1;
        }
        assert_eq!(chunks, 2);
        assert_eq!(got, &data[start as usize..(start + len) as usize]);
        assert_eq!(counters.snapshot().bytes_sent, len);
    }

    #[tokio::test]
    async fn an_empty_window_ends_at_once() {
        let file = tempfile::tempfile().expect("tempfile");
        let mut body = FileBody::new(file, 0, 0, Arc::new(Counters::default()));
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn truncated_file_is_an_error() {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(b"short").expect("write");
        let mut body = FileBody::new(file, 0, 100, Arc::new(Counters::default()));
        assert!(body.next().await.expect("item").is_err());
        assert!(body.next().await.is_none());
    }
}
