//! The whole-file sweep: once a model file is being loaded (see `model_file`), every block not
//! yet on disk is fetched in the background, starting at the block being read and wrapping
//! around, so loaders that read tensors out of file order (mmap in name order, ComfyUI's
//! threads in model order) find most of their blocks already local. Runs only with a disk
//! tier (without one, prefetched blocks would push each other out of memory); stops when the
//! file is closed.

use std::sync::{Arc, Weak};

use futures::stream::{self, StreamExt};

use super::fetch::Fetcher;

use super::OpenObject;

/// Blocks per sweep request: 8 MiB GETs, like mountpoint-s3's parts and S3's guidance.
pub const SPAN_BLOCKS: u64 = 8;

/// Fetches every missing block of `file`, `concurrency` at a time, starting at `start`.
pub fn spawn(fetcher: Arc<Fetcher>, file: &Arc<OpenObject>, start: u64, concurrency: usize) {
    let Some(entry) = file.disk.clone() else {
        return;
    };
    let weak: Weak<OpenObject> = Arc::downgrade(file);
    let blocks = file
        .version
        .size
        .div_ceil(fetcher_block_size(&fetcher, file));
    tokio::spawn(async move {
        let present = {
            let (entry, disk) = (entry.clone(), fetcher.disk().cloned());
            tokio::task::spawn_blocking(move || {
                if let Some(disk) = disk {
                    disk.preallocate(&entry);
                }
                entry.entry.records()
            })
            .await
            .ok()
            .and_then(Result::ok)
        };
        let Some(present) = present else { return };
        let order = (start..blocks).chain(0..start.min(blocks));
        let missing: Vec<u64> = order
            .filter(|&i| present.get(i as usize).is_some_and(Option::is_none))
            .collect();
        tracing::debug!(missing = missing.len(), start, "sweeping model file");
        // Consecutive missing blocks go in spans of up to SPAN_BLOCKS, one GET each.
        let mut spans: Vec<(u64, u64)> = Vec::new();
        for index in missing {
            match spans.last_mut() {
                Some((first, count)) if *first + *count == index && *count < SPAN_BLOCKS => {
                    *count += 1
                }
                _ => spans.push((index, 1)),
            }
        }
        stream::iter(spans)
            .map(|(first, count)| {
                let (fetcher, weak, entry) = (fetcher.clone(), weak.clone(), entry.clone());
                async move {
                    // Stop once the file is closed.
                    let Some(file) = weak.upgrade() else { return };
                    let version = file.version.clone();
                    drop(file);
                    if let Err(e) = fetcher.span(&version, &entry, first, count).await {
                        tracing::debug!(key = %version.key, first, count, "sweep fetch failed: {e}");
                    }
                }
            })
            .buffer_unordered(concurrency.max(1))
            .for_each(|()| async {})
            .await;
        // The whole file is local now: verify and seal it for passthrough.
        fetcher.verify_in_background(&entry);
    });
}

fn fetcher_block_size(fetcher: &Fetcher, file: &OpenObject) -> u64 {
    file.disk
        .as_ref()
        .map(|e| e.entry.id.block_size)
        .unwrap_or_else(|| fetcher.block_size())
}
