//! The whole-file sweep: once a model file is being loaded (see `load_detect`), every block not
//! yet on disk is fetched in the background, starting at the block being read and wrapping
//! around, so loaders that read tensors out of file order (mmap in name order, ComfyUI's
//! threads in model order) find most of their blocks already local; a safetensors load by
//! name takes its blocks in name order instead (see `tensor_order`). Runs only with a disk
//! tier (without one, prefetched blocks would push each other out of memory); stops when the
//! file is closed. Before it starts, the disk cache admits the file
//! ([`DiskCache::admit`](crate::cache::DiskCache::admit)): stored whole, or, when it cannot
//! fit beside the files in use, streamed through memory instead (see `stream`).

use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};

use super::fetch::Fetcher;
use super::sweep_plan::SweepPlan;
use super::tensor_order::TensorLayout;
use crate::cache::disk::Admission;

use super::OpenObject;

/// Fetches every missing block of `file` following `plan`, `concurrency` spans at a time;
/// `header` (the file's first bytes, holding a safetensors header) lets the plan learn the
/// tensor layout and follow a load by name.
pub fn spawn(
    fetcher: Arc<Fetcher>,
    file: &Arc<OpenObject>,
    plan: Arc<SweepPlan>,
    header: Option<Bytes>,
    concurrency: usize,
) {
    let Some(entry) = file.disk.clone() else {
        return;
    };
    tracing::trace!(key = %file.version.key, "model file loading: sweep planned");
    let weak: Weak<OpenObject> = Arc::downgrade(file);
    let version = file.version.clone();
    let size = version.size;
    tokio::spawn(async move {
        let decided = {
            let (entry, disk) = (entry.clone(), fetcher.tiers().disk().cloned());
            tokio::task::spawn_blocking(move || {
                let admission = disk.map(|disk| disk.admit(&entry));
                let layout = header.and_then(|header| TensorLayout::parse(&header, size));
                entry
                    .entry
                    .records()
                    .map(|present| (present, layout, admission))
            })
            .await
            .ok()
            .and_then(Result::ok)
        };
        let Some((present, layout, admission)) = decided else {
            return;
        };
        if let Some(layout) = layout {
            plan.set_layout(layout);
        }
        if let Some(Admission::TooSmall(no_room)) = admission {
            let file = weak.upgrade();
            super::stream::join_or_start(&fetcher, &version, file, plan, no_room, concurrency);
            return;
        }
        fetcher.ask_checksum_for_load(&entry);
        plan.skip_present(|i| present.get(i as usize).is_some_and(Option::is_some));
        tracing::debug!(
            missing = present.iter().filter(|r| r.is_none()).count(),
            in_name_order = plan.in_name_order(),
            "sweeping model file"
        );
        // Spans are taken from the plan as slots free up, so a change of order applies to
        // the next one.
        let (mut running, mut open) = (FuturesUnordered::new(), true);
        loop {
            while open && running.len() < concurrency.max(1) {
                let Some((first, count)) = plan.next_span(fetcher.span_blocks()) else {
                    break;
                };
                let (fetcher, weak, entry) = (fetcher.clone(), weak.clone(), entry.clone());
                running.push(async move {
                    // Stop once the file is closed.
                    let Some(file) = weak.upgrade() else {
                        return false;
                    };
                    let version = file.version.clone();
                    drop(file);
                    if let Err(e) = fetcher.span(&version, &entry, first, count).await {
                        tracing::debug!(key = %version.key, first, count, "sweep fetch failed: {e}");
                    }
                    true
                });
            }
            match running.next().await {
                Some(still_open) => open &= still_open,
                None => break,
            }
        }
        // The whole file is local now: verify and seal it for passthrough.
        fetcher.verify_in_background(&entry);
    });
}
