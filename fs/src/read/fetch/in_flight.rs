//! The table of blocks in flight: one download per block however many readers (and
//! prefetchers) want it at once. Each download runs as its own task, so it completes (and
//! lands in the tiers) even if every reader waiting for it goes away, and its blocks leave
//! the table when it ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::cache::BlockKey;
use crate::error::FsError;
use crate::store::StoreError;

/// A download shared by everyone waiting for it.
pub(super) type SharedFetch<T> = Shared<BoxFuture<'static, Result<T, FsError>>>;

/// How far a span's download has got: the number of its blocks stored, from its first.
pub(super) type SpanProgress = tokio::sync::watch::Receiver<u64>;

/// A block being fetched: its future (the block's bytes, from whichever tier it landed in)
/// and, for a block of a span, the span's progress, which says when it is stored without
/// reading it back.
#[derive(Clone)]
pub(super) struct InFlight {
    block: SharedFetch<Bytes>,
    span: Option<(SpanProgress, u64)>,
}

impl InFlight {
    /// A block fetched on its own.
    pub(super) fn single(block: SharedFetch<Bytes>) -> InFlight {
        InFlight { block, span: None }
    }

    /// Block `position` (from the span's first) of a span whose progress is `progress`.
    pub(super) fn of_span(
        block: SharedFetch<Bytes>,
        progress: SpanProgress,
        position: u64,
    ) -> Self {
        InFlight {
            block,
            span: Some((progress, position)),
        }
    }

    /// The block's bytes, once fetched.
    pub(super) fn block(&self) -> SharedFetch<Bytes> {
        self.block.clone()
    }

    /// Waits until the fetch has stored the block or given up on it; which of the two is
    /// for the caller to find out from the tiers.
    pub(super) async fn landed(self) {
        match self.span {
            Some((mut stored, position)) => {
                let _ = stored.wait_for(|&done| done > position).await;
            }
            None => {
                let _ = self.block.await;
            }
        }
    }
}

/// The blocks in flight, shared by every volume of the process.
#[derive(Clone, Default)]
pub(super) struct InFlightTable {
    blocks: Arc<Mutex<HashMap<BlockKey, InFlight>>>,
}

/// The table, locked: what is in flight cannot change while it is held.
pub(super) type Table<'a> = MutexGuard<'a, HashMap<BlockKey, InFlight>>;

impl InFlightTable {
    /// Locks the table.
    pub(super) fn lock(&self) -> Table<'_> {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The download of `key` in flight, or `fetch()` started as its own task and registered
    /// for `key`; true when started here.
    pub(super) fn join_or_start<F>(
        &self,
        key: &BlockKey,
        fetch: impl FnOnce() -> F,
    ) -> (SharedFetch<Bytes>, bool)
    where
        F: Future<Output = Result<Bytes, FsError>> + Send + 'static,
    {
        let mut table = self.lock();
        if let Some(existing) = table.get(key) {
            return (existing.block(), false);
        }
        let block = self.run(vec![key.clone()], fetch());
        table.insert(key.clone(), InFlight::single(block.clone()));
        (block, true)
    }

    /// Runs `fetch` as its own task; when it ends, `keys` leave the table. The caller holds
    /// the table's lock while it registers them, so they cannot leave before they are in.
    pub(super) fn run<T, F>(&self, keys: Vec<BlockKey>, fetch: F) -> SharedFetch<T>
    where
        T: Clone + Send + Sync + 'static,
        F: Future<Output = Result<T, FsError>> + Send + 'static,
    {
        let table = self.clone();
        let task = tokio::spawn(async move {
            let result = fetch.await;
            let mut blocks = table.lock();
            for key in &keys {
                blocks.remove(key);
            }
            result
        });
        async move { task.await.unwrap_or_else(|e| Err(join_error(&e))) }
            .boxed()
            .shared()
    }
}

fn join_error(e: &tokio::task::JoinError) -> FsError {
    FsError::Store(StoreError::Other {
        operation: "block fetch".into(),
        message: e.to_string(),
    })
}
