//! What this node has published, kept on disk: one small JSON record per target path.
//!
//! The records make publish idempotent across plugin restarts (same target, same volume and
//! spec → already done; a different one → ALREADY_EXISTS) and let a restarted plugin remount
//! targets whose FUSE daemon died with the previous plugin container (see
//! [`crate::node::NodeServer::recover`]). They hold no secrets: only the volume id, the target
//! and the [`MountSpec`] (credentials come from the environment).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::volume_context::MountSpec;

/// One published volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The CSI volume id.
    pub volume_id: String,
    /// The target path kubelet asked for.
    pub target: PathBuf,
    /// What is mounted there.
    pub spec: MountSpec,
}

/// A record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("state directory {path}: {source}")]
pub struct StateError {
    /// The file or directory concerned.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

/// The directory of records.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

/// A short stable name for a target path (hex of the first 16 bytes of its SHA-256), used
/// for its record and its log file.
pub fn target_key(target: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let digest = Sha256::digest(target.as_os_str().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

impl StateStore {
    /// Opens (creating it, mode 0700) the directory `dir`.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(StateStore {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, target: &Path) -> PathBuf {
        self.dir.join(format!("{}.json", target_key(target)))
    }

    /// The record for `target`, if any. An unreadable or corrupt record counts as none (and
    /// is logged), so one bad file never blocks a publish.
    pub fn get(&self, target: &Path) -> Option<Record> {
        let path = self.path(target);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("ignoring unreadable record {}: {e}", path.display());
                return None;
            }
        };
        match serde_json::from_slice::<Record>(&text) {
            Ok(record) if record.target == target => Some(record),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("ignoring corrupt record {}: {e}", path.display());
                None
            }
        }
    }

    /// Writes `record` atomically (temporary file, then rename).
    pub fn put(&self, record: &Record) -> Result<(), StateError> {
        let path = self.path(&record.target);
        let tmp = path.with_extension("json.tmp");
        let err = |source| StateError {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(record).map_err(|e| err(e.into()))?;
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    /// Deletes the record for `target`; a missing one is fine.
    pub fn remove(&self, target: &Path) -> Result<(), StateError> {
        let path = self.path(target);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError { path, source }),
        }
    }

    /// Every readable record.
    pub fn list(&self) -> Result<Vec<Record>, StateError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| StateError {
            path: self.dir.clone(),
            source,
        })?;
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_slice::<Record>(&t).map_err(|e| e.to_string()))
            {
                Ok(record) => records.push(record),
                Err(e) => tracing::warn!("ignoring record {}: {e}", path.display()),
            }
        }
        records.sort_by(|a, b| a.target.cmp(&b.target));
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume_context::Authentication;

    fn record(target: &str, volume: &str) -> Record {
        Record {
            volume_id: volume.to_string(),
            target: PathBuf::from(target),
            spec: MountSpec {
                source: "s3://models/".to_string(),
                options: vec![],
                authentication: Authentication::Pod,
                warm: Default::default(),
            },
        }
    }

    #[test]
    fn records_from_before_authentication_sources_read_as_driver() {
        let old = r#"{"source":"s3://models/","options":["--region","us-west-2"]}"#;
        let spec: MountSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec.authentication, Authentication::Driver);
        assert_eq!(spec.region(), Some("us-west-2"));
    }

    #[test]
    fn records_round_trip_and_disappear() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state")).unwrap();
        let a = record("/pods/a/mount", "vol-a");
        let b = record("/pods/b/mount", "vol-b");
        store.put(&a).unwrap();
        store.put(&b).unwrap();
        assert_eq!(store.get(&a.target), Some(a.clone()));
        assert_eq!(store.list().unwrap(), vec![a.clone(), b.clone()]);
        store.remove(&a.target).unwrap();
        store.remove(&a.target).unwrap();
        assert_eq!(store.get(&a.target), None);
        assert_eq!(store.list().unwrap(), vec![b]);
    }

    #[test]
    fn corrupt_records_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let a = record("/pods/a/mount", "vol-a");
        std::fs::write(store.path(&a.target), b"{not json").unwrap();
        assert_eq!(store.get(&a.target), None);
        assert!(store.list().unwrap().is_empty());
        assert_eq!(target_key(&a.target).len(), 32);
    }
}
