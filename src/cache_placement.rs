//! Where the disk cache may not live. A cache that fills the filesystem the node's system
//! lives on (the OS, kubelet, containerd, pod logs) takes the space kubelet's eviction
//! thresholds watch, and kubelet then evicts the very pods the cache serves. With
//! `--cache-not-on PATH` a command refuses to start when its `--cache-dir` is on the same
//! filesystem (same `st_dev`) as PATH.
//!
//! The reference is an explicit path rather than `/` because the check matters most in a
//! container, where `/` is the image's own overlay: the Kubernetes mounter mounts the host's
//! `/` read-only at `/host` and passes `--cache-not-on=/host`. On a host, `--cache-not-on=/`.
//! It is opt-in at the command line (a `--cache-dir` someone typed is their choice) and
//! opt-out in the shipped DaemonSet: the EBS-only overlay, which means to put the cache on
//! the root volume, is what drops it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The placement flags of a command that opens a disk cache.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CachePlacementArgs {
    /// Refuse to start when --cache-dir is on the same filesystem as PATH (repeatable): e.g.
    /// `/`, which the OS, kubelet and containerd need room on. In a container, give where the
    /// host's `/` is mounted.
    #[arg(long, value_name = "PATH")]
    pub cache_not_on: Vec<PathBuf>,
}

/// Refuses `cache_dir` when it is on the filesystem of any path in `keep_off`. A cache
/// directory that does not exist yet is judged by its nearest existing ancestor, where it
/// will be created.
pub fn check(cache_dir: Option<&Path>, keep_off: &[PathBuf]) -> anyhow::Result<()> {
    let Some(cache_dir) = cache_dir else {
        return Ok(());
    };
    if keep_off.is_empty() {
        return Ok(());
    }
    let (existing, cache_dev) = device_of_nearest(cache_dir)?;
    for reference in keep_off {
        let reference_dev = std::fs::metadata(reference)
            .with_context(|| {
                format!(
                    "--cache-not-on {}: cannot read it (mount it into the container?)",
                    reference.display()
                )
            })?
            .dev();
        if reference_dev == cache_dev {
            anyhow::bail!(
                "the disk cache {} is on the same filesystem as {} (device {}:{}, through {}): \
                 a cache there competes with the system for its space. Put --cache-dir on a \
                 filesystem of its own (the instance store), or drop --cache-not-on {} to \
                 allow it and size it with --cache-size",
                cache_dir.display(),
                reference.display(),
                libc::major(cache_dev),
                libc::minor(cache_dev),
                existing.display(),
                reference.display()
            );
        }
    }
    Ok(())
}

/// The device of `path`, or of its nearest existing ancestor, and which path that was.
fn device_of_nearest(path: &Path) -> anyhow::Result<(PathBuf, u64)> {
    let mut candidate = path;
    loop {
        match std::fs::metadata(candidate) {
            Ok(meta) => return Ok((candidate.to_path_buf(), meta.dev())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                candidate = candidate
                    .parent()
                    .with_context(|| format!("no ancestor of {} exists", path.display()))?;
                if candidate.as_os_str().is_empty() {
                    candidate = Path::new(".");
                }
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot check {}", candidate.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted, or refused with an error that says each of these.
    type Expected<'a> = Result<(), &'a [&'a str]>;

    #[test]
    fn a_cache_is_refused_only_on_a_filesystem_to_keep_clear() {
        let tmp = tempfile::tempdir().unwrap();
        let here = tmp.path().to_path_buf();
        // Not created yet: judged by the directory it will be created in.
        let cache = here.join("modelfs/cache");
        let cache_text = cache.display().to_string();
        let refused = ["same filesystem as", cache_text.as_str()];
        // procfs is never the filesystem of a temporary directory.
        let proc = PathBuf::from("/proc");
        // (cache directory, paths to keep it off, Ok if accepted or Err(what the error says))
        let cases: [(Option<&Path>, Vec<PathBuf>, Expected); 6] = [
            (Some(&cache), vec![here.clone()], Err(&refused)),
            // Several references: any match refuses.
            (
                Some(&cache),
                vec![proc.clone(), here.clone()],
                Err(&refused),
            ),
            (Some(&cache), vec![proc], Ok(())),
            (Some(&cache), vec![], Ok(())),
            (None, vec![here.clone()], Ok(())),
            // An unreadable reference is an error, not a pass.
            (
                Some(&here),
                vec![here.join("missing")],
                Err(&["--cache-not-on"]),
            ),
        ];
        for (cache_dir, keep_off, expected) in cases {
            let result = check(cache_dir, &keep_off);
            match expected {
                Ok(()) => result.unwrap_or_else(|e| panic!("{keep_off:?}: {e:#}")),
                Err(fragments) => {
                    let error = result.unwrap_err().to_string();
                    for fragment in fragments {
                        assert!(error.contains(fragment), "{keep_off:?}: {error}");
                    }
                }
            }
        }
        assert!(!cache.exists(), "the check creates nothing");
    }
}
