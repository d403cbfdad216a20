//! [`FileStore`]: a file-backed object store that can hold any S3 key.
//!
//! Each bucket is a directory with the objects' bytes in files named by the SHA-256 of the
//! key (`<root>/<bucket>/data/<sha256(key)>`) and a JSON sidecar per object
//! (`<sha256(key)>.meta`). An in-memory index per bucket (`BTreeMap<key, ObjectMeta>`, so
//! listings come out in S3's lexicographic order) is the source of truth while the store is
//! open; it is rebuilt from the sidecars by [`FileStore::open`].
//!
//! Writes go to a temporary file and are renamed into place under the bucket's index lock,
//! and [`FileStore::open_object`] opens the data file under the same lock, so a reader always
//! gets a metadata/bytes pair of one version and keeps reading it from its open file even if
//! the key is overwritten or deleted meanwhile.

mod checksum;
mod error;
mod layout;
mod meta;
mod writer;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

pub use checksum::{ChecksumWriter, ObjectChecksum};
pub use error::{Result, StoreError};
pub use meta::ObjectMeta;
pub use writer::ObjectWriter;

use layout::{validate_bucket_name, BucketLayout, SIDECAR_EXT};

/// Read size used when copying from a reader into the store.
const COPY_CHUNK: usize = 256 * 1024;

/// A bucket of a [`FileStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketInfo {
    /// Bucket name.
    pub name: String,
    /// When the bucket was created (approximately, for buckets found on disk).
    pub created: SystemTime,
}

/// A file-backed S3 object store. Cheap to share behind an `Arc`; all methods take `&self`
/// and are synchronous (call them from blocking contexts when inside an async runtime).
pub struct FileStore {
    root: PathBuf,
    buckets: RwLock<BTreeMap<String, Arc<Bucket>>>,
}

/// One bucket: its directories and its index.
pub(crate) struct Bucket {
    name: String,
    layout: BucketLayout,
    created: SystemTime,
    index: RwLock<BTreeMap<String, ObjectMeta>>,
}

/// The key → metadata index of one bucket.
pub(crate) type Index = BTreeMap<String, ObjectMeta>;

fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl FileStore {
    /// Opens the store at `root`, creating the directory if needed, and loads the buckets
    /// and objects already there.
    pub fn open(root: impl Into<PathBuf>) -> Result<FileStore> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(StoreError::io("creating the store root", &root))?;
        let mut buckets = BTreeMap::new();
        let entries =
            fs::read_dir(&root).map_err(StoreError::io("listing the store root", &root))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("listing the store root", &root))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let layout = BucketLayout::new(&root, &name);
            if validate_bucket_name(&name).is_err() || !layout.data.is_dir() {
                continue;
            }
            let bucket = Bucket::load(name.clone(), layout)?;
            buckets.insert(name, Arc::new(bucket));
        }
        Ok(FileStore {
            root,
            buckets: RwLock::new(buckets),
        })
    }

    /// The directory holding the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates bucket `name`; succeeds if it already exists.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        validate_bucket_name(name)?;
        let mut buckets = write_lock(&self.buckets);
        if buckets.contains_key(name) {
            return Ok(());
        }
        let layout = BucketLayout::new(&self.root, name);
        for dir in [&layout.data, &layout.tmp] {
            fs::create_dir_all(dir).map_err(StoreError::io("creating a bucket directory", dir))?;
        }
        let bucket = Bucket {
            name: name.to_string(),
            layout,
            created: SystemTime::now(),
            index: RwLock::new(BTreeMap::new()),
        };
        buckets.insert(name.to_string(), Arc::new(bucket));
        Ok(())
    }

    /// Deletes bucket `name`, which must be empty.
    pub fn delete_bucket(&self, name: &str) -> Result<()> {
        let mut buckets = write_lock(&self.buckets);
        let bucket = buckets.get(name).ok_or_else(|| no_such_bucket(name))?;
        if !read_lock(&bucket.index).is_empty() {
            return Err(StoreError::BucketNotEmpty {
                bucket: name.to_string(),
            });
        }
        let dir = bucket.layout.dir.clone();
        buckets.remove(name);
        fs::remove_dir_all(&dir).map_err(StoreError::io("removing a bucket directory", &dir))
    }

    /// Whether bucket `name` exists.
    pub fn bucket_exists(&self, name: &str) -> bool {
        read_lock(&self.buckets).contains_key(name)
    }

    /// All buckets, by name.
    pub fn buckets(&self) -> Vec<BucketInfo> {
        read_lock(&self.buckets)
            .values()
            .map(|b| BucketInfo {
                name: b.name.clone(),
                created: b.created,
            })
            .collect()
    }

    /// Stores `data` at `key`, replacing any previous object.
    pub fn put_bytes(&self, bucket: &str, key: &str, data: &[u8]) -> Result<ObjectMeta> {
        let mut writer = self.writer(bucket, key)?;
        writer.append(data)?;
        writer.commit()
    }

    /// Stores everything `reader` yields at `key`, streaming (the content is never held in
    /// memory) and computing the ETag on the way.
    pub fn put_from_reader(
        &self,
        bucket: &str,
        key: &str,
        mut reader: impl Read,
    ) -> Result<ObjectMeta> {
        let mut writer = self.writer(bucket, key)?;
        let mut buf = vec![0u8; COPY_CHUNK];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(StoreError::Body {
                        key: key.to_string(),
                        source,
                    })
                }
            };
            writer.append(&buf[..n])?;
        }
        writer.commit()
    }

    /// Starts a streaming write of `key`; see [`ObjectWriter`]. The object's checksum is
    /// CRC64NVME, computed on the way.
    pub fn writer(&self, bucket: &str, key: &str) -> Result<ObjectWriter> {
        ObjectWriter::create(self.bucket(bucket)?, key, None)
    }

    /// [`FileStore::writer`] for content the uploader sent `claimed` for: the object keeps
    /// that checksum, and the commit fails with [`StoreError::BadDigest`] (storing nothing)
    /// when the content does not match it.
    pub fn writer_claiming(
        &self,
        bucket: &str,
        key: &str,
        claimed: ObjectChecksum,
    ) -> Result<ObjectWriter> {
        ObjectWriter::create(self.bucket(bucket)?, key, Some(claimed))
    }

    /// Deletes `key`. Deleting a key that does not exist succeeds, as on S3.
    pub fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        self.bucket(bucket)?.remove(key)
    }

    /// Metadata of `key`, if the bucket and the key exist.
    pub fn head(&self, bucket: &str, key: &str) -> Option<ObjectMeta> {
        let bucket = self.bucket(bucket).ok()?;
        let index = read_lock(&bucket.index);
        index.get(key).cloned()
    }

    /// Metadata of every object in `bucket`, in key order (empty if the bucket is missing).
    pub fn list(&self, bucket: &str) -> Vec<ObjectMeta> {
        self.with_index(bucket, |index| index.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Path of the file holding the current bytes of `key` (for comparing reads against the
    /// source). The file is replaced, not modified, when the key is overwritten.
    pub fn data_path(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        let bucket = self.bucket(bucket).ok()?;
        let index = read_lock(&bucket.index);
        index
            .contains_key(key)
            .then(|| bucket.layout.data_path(key))
    }

    /// Opens the current version of `key`: its metadata and an open file with exactly those
    /// bytes, taken together so they always agree.
    pub fn open_object(&self, bucket: &str, key: &str) -> Result<(ObjectMeta, File)> {
        let bucket_ref = self.bucket(bucket)?;
        let index = read_lock(&bucket_ref.index);
        let meta = index
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NoSuchKey {
                bucket: bucket.to_string(),
                key: key.to_string(),
            })?;
        let path = bucket_ref.layout.data_path(key);
        let file = File::open(&path).map_err(StoreError::io("opening object data", &path))?;
        drop(index);
        Ok((meta, file))
    }

    /// The whole content of `key` (convenience for tests and small objects).
    pub fn get_bytes(&self, bucket: &str, key: &str) -> Result<Vec<u8>> {
        let (meta, mut file) = self.open_object(bucket, key)?;
        let mut data = Vec::with_capacity(usize::try_from(meta.size).unwrap_or(0));
        file.read_to_end(&mut data)
            .map_err(|source| StoreError::Io {
                context: "reading object data",
                path: self
                    .root
                    .join(bucket)
                    .join("data")
                    .join(BucketLayout::object_name(key)),
                source,
            })?;
        Ok(data)
    }

    /// Runs `f` on the index of `bucket` while holding its read lock.
    pub(crate) fn with_index<R>(&self, bucket: &str, f: impl FnOnce(&Index) -> R) -> Result<R> {
        let bucket = self.bucket(bucket)?;
        let index = read_lock(&bucket.index);
        Ok(f(&index))
    }

    fn bucket(&self, name: &str) -> Result<Arc<Bucket>> {
        read_lock(&self.buckets)
            .get(name)
            .cloned()
            .ok_or_else(|| no_such_bucket(name))
    }
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the index: it can hold many thousands of objects.
        let buckets: Vec<String> = read_lock(&self.buckets).keys().cloned().collect();
        f.debug_struct("FileStore")
            .field("root", &self.root)
            .field("buckets", &buckets)
            .finish()
    }
}

fn no_such_bucket(name: &str) -> StoreError {
    StoreError::NoSuchBucket {
        bucket: name.to_string(),
    }
}

impl Bucket {
    /// Loads a bucket found on disk: clears `tmp/` and rebuilds the index from the sidecars,
    /// skipping any object whose sidecar and data disagree (an interrupted write).
    fn load(name: String, layout: BucketLayout) -> Result<Bucket> {
        if layout.tmp.is_dir() {
            fs::remove_dir_all(&layout.tmp).map_err(StoreError::io(
                "clearing leftover temporary files",
                &layout.tmp,
            ))?;
        }
        fs::create_dir_all(&layout.tmp)
            .map_err(StoreError::io("creating a bucket directory", &layout.tmp))?;
        let created = fs::metadata(&layout.dir)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now());

        let mut index = BTreeMap::new();
        let entries = fs::read_dir(&layout.data)
            .map_err(StoreError::io("listing bucket data", &layout.data))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("listing bucket data", &layout.data))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(SIDECAR_EXT) {
                continue;
            }
            let bytes = fs::read(&path).map_err(StoreError::io("reading a sidecar", &path))?;
            let Some(meta) = ObjectMeta::from_sidecar(&bytes) else {
                tracing::warn!(path = %path.display(), "ignoring an unreadable sidecar");
                continue;
            };
            let stem = path.file_stem().and_then(|s| s.to_str());
            let data_len = fs::metadata(layout.data_path(&meta.key)).map(|m| m.len());
            if stem != Some(BucketLayout::object_name(&meta.key).as_str())
                || data_len.ok() != Some(meta.size)
            {
                tracing::warn!(path = %path.display(), key = %meta.key, "ignoring an inconsistent object");
                continue;
            }
            index.insert(meta.key.clone(), meta);
        }
        Ok(Bucket {
            name,
            layout,
            created,
            index: RwLock::new(index),
        })
    }

    /// Moves a finished temporary file into place as `meta.key` and indexes it.
    fn install(&self, meta: &ObjectMeta, data_tmp: &Path) -> Result<()> {
        let sidecar_tmp = self.layout.temp_path(SIDECAR_EXT);
        if let Err(e) = fs::write(&sidecar_tmp, meta.to_sidecar()) {
            let _ = fs::remove_file(&sidecar_tmp);
            return Err(StoreError::io("writing a sidecar", &sidecar_tmp)(e));
        }
        let data_path = self.layout.data_path(&meta.key);
        let sidecar_path = self.layout.sidecar_path(&meta.key);

        let mut index = write_lock(&self.index);
        if let Err(e) = fs::rename(data_tmp, &data_path) {
            let _ = fs::remove_file(&sidecar_tmp);
            return Err(StoreError::io("publishing object data", &data_path)(e));
        }
        if let Err(e) = fs::rename(&sidecar_tmp, &sidecar_path) {
            // The new bytes are in place but their sidecar is not: drop the object entirely
            // rather than leave an index entry that disagrees with the bytes.
            let _ = fs::remove_file(&sidecar_tmp);
            let _ = fs::remove_file(&sidecar_path);
            let _ = fs::remove_file(&data_path);
            index.remove(&meta.key);
            return Err(StoreError::io("publishing a sidecar", &sidecar_path)(e));
        }
        index.insert(meta.key.clone(), meta.clone());
        Ok(())
    }

    /// Removes `key` (sidecar first, so a crash never leaves a sidecar without its data).
    fn remove(&self, key: &str) -> Result<()> {
        let mut index = write_lock(&self.index);
        if index.remove(key).is_none() {
            return Ok(());
        }
        for path in [self.layout.sidecar_path(key), self.layout.data_path(key)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("deleting an object file", &path)(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
