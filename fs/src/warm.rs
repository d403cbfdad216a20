//! Warming: download model files into the disk cache before anyone reads them (node boot,
//! init containers), from paths/globs relative to the models root or from a ComfyUI
//! API-format workflow.

use std::sync::Arc;

use futures::stream::{self, StreamExt};

use crate::error::FsError;
use crate::namespace::{Namespace, NodeKind, ROOT_INO};
use crate::read::{BlockReader, Priority};

/// One file to warm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmTarget {
    /// Path relative to the models root.
    pub path: String,
    /// Inode in the namespace.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
}

/// What a warm-up did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WarmReport {
    /// Files warmed.
    pub files: usize,
    /// Bytes of those files.
    pub bytes: u64,
    /// Blocks that failed (their files are only partly cached).
    pub failed_blocks: u64,
}

/// Expands `patterns` (paths or globs with `*`, `?`, `[..]`, relative to the models root) into
/// files, listing only the directories the patterns reach. Patterns that match nothing are
/// returned in the second list.
pub async fn resolve(
    namespace: &Namespace,
    patterns: &[String],
) -> Result<(Vec<WarmTarget>, Vec<String>), FsError> {
    let mut found = Vec::new();
    let mut unmatched = Vec::new();
    for pattern in patterns {
        let segments: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
        let before = found.len();
        let mut frontier = vec![(ROOT_INO, String::new())];
        for (depth, segment) in segments.iter().enumerate() {
            let last = depth + 1 == segments.len();
            let matcher = glob::Pattern::new(segment).ok();
            let mut next = Vec::new();
            for (dir, prefix) in frontier {
                let Ok(listing) = namespace.listing(dir).await else {
                    continue;
                };
                for entry in &listing.entries {
                    let hit = match &matcher {
                        Some(m) => m.matches(&entry.name),
                        None => entry.name == *segment,
                    };
                    if !hit {
                        continue;
                    }
                    let path = format!("{prefix}{}", entry.name);
                    match (entry.kind, last) {
                        (NodeKind::Directory, false) => next.push((entry.ino, format!("{path}/"))),
                        (NodeKind::Directory, true) => {
                            collect_all(namespace, entry.ino, &format!("{path}/"), &mut found)
                                .await?
                        }
                        (NodeKind::File, true) => {
                            let size = namespace.attr(entry.ino)?.size;
                            found.push(WarmTarget {
                                path,
                                ino: entry.ino,
                                size,
                            });
                        }
                        (NodeKind::File, false) => {}
                    }
                }
            }
            frontier = next;
        }
        if found.len() == before {
            unmatched.push(pattern.clone());
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found.dedup_by(|a, b| a.path == b.path);
    Ok((found, unmatched))
}

async fn collect_all(
    namespace: &Namespace,
    dir: u64,
    prefix: &str,
    found: &mut Vec<WarmTarget>,
) -> Result<(), FsError> {
    let mut stack = vec![(dir, prefix.to_string())];
    while let Some((dir, prefix)) = stack.pop() {
        let listing = namespace.listing(dir).await?;
        for entry in &listing.entries {
            let path = format!("{prefix}{}", entry.name);
            match entry.kind {
                NodeKind::Directory => stack.push((entry.ino, format!("{path}/"))),
                NodeKind::File => found.push(WarmTarget {
                    path,
                    ino: entry.ino,
                    size: namespace.attr(entry.ino)?.size,
                }),
            }
        }
    }
    Ok(())
}

/// Downloads every missing block of `targets` into the disk cache, `concurrency` blocks at
/// a time; `progress` is called with the bytes of each block done (fetched or already there).
pub async fn warm(
    namespace: &Namespace,
    reader: &Arc<BlockReader>,
    targets: &[WarmTarget],
    concurrency: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<WarmReport, FsError> {
    let mut report = WarmReport::default();
    let bs = reader.block_size();
    for target in targets {
        let version = namespace.open(target.ino).await?;
        let file = Arc::new(reader.open(version).await);
        let blocks = file.version.size.div_ceil(bs);
        let failed: u64 = stream::iter(0..blocks)
            .map(|index| {
                let file = file.clone();
                async move {
                    let len = (file.version.size - index * bs).min(bs);
                    let result = reader
                        .fetcher()
                        .block(
                            &file.version,
                            file.disk.as_ref(),
                            index,
                            Priority::Background,
                        )
                        .await;
                    progress(len);
                    match result {
                        Ok(_) => 0,
                        Err(e) => {
                            tracing::warn!(path = %target.path, index, "warm: {e}");
                            1
                        }
                    }
                }
            })
            .buffer_unordered(concurrency.max(1))
            .fold(0, |acc, n| async move { acc + n })
            .await;
        report.files += 1;
        report.bytes += file.version.size;
        report.failed_blocks += failed;
    }
    Ok(report)
}

/// The model files a ComfyUI API-format workflow (`{"id": {"class_type", "inputs"}}`) names,
/// as candidate paths: each input value in every folder it may live in.
pub fn workflow_models(workflow: &str) -> Result<Vec<Vec<String>>, String> {
    let value: serde_json::Value =
        serde_json::from_str(workflow).map_err(|e| format!("not JSON: {e}"))?;
    let nodes = value.as_object().ok_or(
        "expected an API-format workflow (an object of nodes; export it with 'Save (API)')",
    )?;
    let mut wanted = Vec::new();
    for node in nodes.values() {
        let class = node
            .get("class_type")
            .and_then(|c| c.as_str())
            .unwrap_or("");
        let Some(inputs) = node.get("inputs").and_then(|i| i.as_object()) else {
            continue;
        };
        for (input, v) in inputs {
            let Some(name) = v.as_str() else { continue };
            let folders: &[&str] = match (class, input.as_str()) {
                ("CLIPVisionLoader", "clip_name") => &["clip_vision"],
                ("UpscaleModelLoader", "model_name") => &["upscale_models"],
                (_, "ckpt_name") => &["checkpoints"],
                (_, "lora_name") => &["loras"],
                (_, "vae_name") => &["vae"],
                (_, "control_net_name") => &["controlnet"],
                (_, "unet_name") => &["diffusion_models", "unet"],
                (_, "clip_name" | "clip_name1" | "clip_name2" | "clip_name3") => {
                    &["text_encoders", "clip"]
                }
                (_, "style_model_name") => &["style_models"],
                (_, "gligen_name") => &["gligen"],
                (_, "hypernetwork_name") => &["hypernetworks"],
                _ => continue,
            };
            wanted.push(folders.iter().map(|f| format!("{f}/{name}")).collect());
        }
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::ReadConfig;
    use crate::store::MemoryStore;
    use std::time::Duration;

    #[tokio::test]
    async fn globs_and_directories_resolve_to_files() {
        let store = Arc::new(MemoryStore::new());
        for key in [
            "m/checkpoints/a.safetensors",
            "m/checkpoints/b.ckpt",
            "m/loras/x/y.safetensors",
            "m/loras/z.safetensors",
        ] {
            store.put(key, vec![1u8; 10]);
        }
        let ns = Namespace::new(store.clone(), "m/", Duration::from_secs(60));
        let patterns = vec![
            "checkpoints/*.safetensors".to_string(),
            "loras".to_string(),
            "vae/missing.safetensors".to_string(),
        ];
        let (found, unmatched) = resolve(&ns, &patterns).await.unwrap();
        let paths: Vec<&str> = found.iter().map(|t| t.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "checkpoints/a.safetensors",
                "loras/x/y.safetensors",
                "loras/z.safetensors"
            ]
        );
        assert_eq!(unmatched, ["vae/missing.safetensors"]);
        let reader = BlockReader::new(store, "b", ReadConfig::default(), None);
        let report = warm(&ns, &reader, &found, 4, &|_| {}).await.unwrap();
        assert_eq!(
            (report.files, report.bytes, report.failed_blocks),
            (3, 30, 0)
        );
    }

    #[test]
    fn workflow_inputs_map_to_model_folders() {
        let workflow = r#"{
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}},
            "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "ink.safetensors", "strength_model": 1.0, "model": ["4", 0]}},
            "11": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit.safetensors"}},
            "12": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5.safetensors", "clip_name2": "l.safetensors"}},
            "3": {"class_type": "KSampler", "inputs": {"seed": 5, "sampler_name": "euler"}}
        }"#;
        let mut wanted = workflow_models(workflow).unwrap();
        wanted.sort();
        assert_eq!(
            wanted,
            vec![
                vec!["checkpoints/sdxl.safetensors".to_string()],
                vec!["clip_vision/vit.safetensors".to_string()],
                vec!["loras/ink.safetensors".to_string()],
                vec![
                    "text_encoders/l.safetensors".to_string(),
                    "clip/l.safetensors".to_string()
                ],
                vec![
                    "text_encoders/t5.safetensors".to_string(),
                    "clip/t5.safetensors".to_string()
                ],
            ]
        );
        assert!(workflow_models("[1,2]").is_err());
    }
}
