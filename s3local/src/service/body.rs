//! [`FileBody`]: a GetObject response body streamed from an open file in fixed-size chunks.

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
use tokio::task::JoinHandle;
use tokio::time::Sleep;

use crate::shaping::Pace;
use crate::stats::Counters;

/// Bytes read from the file per chunk.
pub(crate) const CHUNK: u64 = 256 * 1024;

/// Streams `remaining` bytes of `file` from `offset`, reading each chunk on the blocking pool
/// (one chunk at a time, so the file's cursor is this body's alone), so the file is never held in memory and the open descriptor pins
/// the version being served. Counts the bytes it yields in `bytes_sent`.
pub(crate) struct FileBody {
    file: Arc<File>,
    offset: u64,
    remaining: u64,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
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
            file: Arc::new(file),
            offset,
            remaining: len,
            pending: None,
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

/// Reads the chunk at `offset` into a buffer that is not zeroed first (std's `read_to_end`
/// reads into spare capacity). Only this body's task moves the file's cursor.
fn read_chunk(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    use std::io::{Read, Seek, SeekFrom};
    let mut reader = file;
    reader.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len);
    reader.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Bytes::from(buf))
}

impl Stream for FileBody {
    type Item = Result<Bytes, StdError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(delay) = this.delay.as_mut() {
            ready!(delay.as_mut().poll(cx));
            this.delay = None;
        }
        if this.pending.is_none() && this.remaining > 0 && !this.released {
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
        let handle = match this.pending.as_mut() {
            Some(handle) => handle,
            None if this.remaining == 0 => return Poll::Ready(None),
            None => {
                this.released = false;
                // Bounded by CHUNK, so the conversion cannot truncate.
                let len = this.remaining.min(CHUNK) as usize;
                let file = Arc::clone(&this.file);
                let offset = this.offset;
                this.pending.insert(tokio::task::spawn_blocking(move || {
                    read_chunk(&file, offset, len)
                }))
            }
        };
        let result = ready!(Pin::new(handle).poll(cx));
        this.pending = None;
        let chunk = match result {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(err)) => {
                this.remaining = 0;
                return Poll::Ready(Some(Err(Box::new(err))));
            }
            Err(join) => {
                this.remaining = 0;
                return Poll::Ready(Some(Err(Box::new(join))));
            }
        };
        let n = chunk.len() as u64;
        this.offset += n;
        this.remaining -= n;
        Counters::add(&this.counters.bytes_sent, n);
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

impl Drop for FileBody {
    fn drop(&mut self) {
        // A read in flight finishes on its own; nothing waits for it.
        if let Some(handle) = self.pending.take() {
            handle.abort();
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
    async fn truncated_file_is_an_error() {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(b"short").expect("write");
        let mut body = FileBody::new(file, 0, 100, Arc::new(Counters::default()));
        assert!(body.next().await.expect("item").is_err());
        assert!(body.next().await.is_none());
    }
}
