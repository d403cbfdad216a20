//! Inodes and directories over a bucket prefix.
//!
//! A directory is listed lazily, on first lookup or readdir, with `ListObjectsV2` and the `/`
//! delimiter (all pages), and the listing is kept for the metadata TTL; after that the next
//! access lists again, so objects added to or removed from the bucket appear and disappear
//! without any sync job. Concurrent accesses to one directory share one listing request. A
//! shared namespace (a mount's) also lists one level ahead ([`Namespace::shared`]).
//!
//! Rules (documented in `docs/design.md`):
//! - a key that is both an object and a prefix of other keys (`a` and `a/b`) is a directory;
//!   the object is hidden with one warning;
//! - keys whose segments cannot be names ([`names::check_segment`]) are skipped, one warning
//!   each;
//! - zero-length "directory marker" keys ending in `/` only make their directory exist;
//! - a directory's mtime is the newest mtime of its files when first listed, and the time of
//!   the refresh that saw its contents change afterwards, so tools that watch directory mtimes
//!   (ComfyUI's model list cache) notice uploads.
//!
//! Inode numbers are never reused while the filesystem is mounted. An inode lives while the
//! kernel, an open file or a cached listing holds it ([`table`]), and the listing of a
//! directory the kernel forgets is dropped, so memory follows what is in use, not every name
//! the bucket ever had.

pub mod names;
mod table;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::error::FsError;
use crate::store::{ObjectInfo, ObjectStore, ObjectVersion};

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;

/// Most distinct keys to warn about; past this, skipped keys are no longer reported one by one.
const MAX_WARNED_KEYS: usize = 10_000;

/// File or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// A directory (a common prefix).
    Directory,
    /// A regular file (an object).
    File,
}

/// Most listing pages one directory may take (S3 pages hold up to 1,000 keys: 10 million
/// entries), so a server that never stops handing out continuation tokens cannot keep a
/// listing going forever.
const MAX_LIST_PAGES: usize = 10_000;

/// Most subdirectories whose listings are fetched in the background when their parent is
/// listed on demand (see [`Namespace::shared`]).
const LIST_AHEAD: usize = 32;

/// What `stat` shows for a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAttr {
    /// Inode number.
    pub ino: u64,
    /// File or directory.
    pub kind: NodeKind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name.
    pub name: String,
    /// Its inode number.
    pub ino: u64,
    /// File or directory.
    pub kind: NodeKind,
}

/// A directory's contents as of one listing, sorted by name.
pub struct DirListing {
    /// Entries, sorted by name.
    pub entries: Vec<DirEntry>,
    /// The entries' inodes, in the same order: a listing keeps what it lists alive.
    nodes: Vec<Arc<Inode>>,
    fetched_at: Instant,
}

impl std::fmt::Debug for DirListing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirListing")
            .field("entries", &self.entries.len())
            .field("fetched_at", &self.fetched_at)
            .finish_non_exhaustive()
    }
}

/// Keeps an inode alive (and its number valid) while an open file uses it, even after the
/// kernel forgets it; dropped at release.
#[derive(Debug)]
pub struct InodeHold(#[allow(dead_code)] Arc<Inode>);

#[derive(Debug, Clone)]
struct NodeMeta {
    size: u64,
    etag: String,
    mtime: SystemTime,
    validated_at: Instant,
    /// Directories: a hash of the last listing's contents, to notice changes (kept apart
    /// from the listing, which is dropped when the kernel forgets the directory).
    fingerprint: Option<u64>,
}

#[derive(Debug)]
struct Inode {
    ino: u64,
    kind: NodeKind,
    /// The directory holding it (the root's is the root).
    parent: u64,
    /// Files: the object key. Directories: the key prefix, ending in `/` (or empty at the
    /// root of a whole-bucket mount).
    key: String,
    meta: Mutex<NodeMeta>,
    /// Directories only: the cached listing; the async lock makes refreshes single-flight.
    listing: Option<tokio::sync::Mutex<Option<Arc<DirListing>>>>,
}

impl Inode {
    fn new(ino: u64, kind: NodeKind, parent: u64, key: String, meta: NodeMeta) -> Inode {
        crate::metrics::metrics().inode_created();
        Inode {
            ino,
            kind,
            parent,
            key,
            meta: Mutex::new(meta),
            listing: (kind == NodeKind::Directory).then(|| tokio::sync::Mutex::new(None)),
        }
    }

    fn attr(&self) -> NodeAttr {
        let meta = lock(&self.meta);
        NodeAttr {
            ino: self.ino,
            kind: self.kind,
            size: meta.size,
            mtime: meta.mtime,
        }
    }

    /// Drops the cached listing unless someone is using it right now (then it stays until
    /// the directory itself goes).
    fn drop_listing(&self) {
        if let Some(Ok(mut cached)) = self.listing.as_ref().map(|slot| slot.try_lock()) {
            cached.take();
        }
    }
}

impl Drop for Inode {
    fn drop(&mut self) {
        crate::metrics::metrics().inode_dropped();
    }
}

/// The tree of inodes over one bucket prefix.
pub struct Namespace {
    store: Arc<dyn ObjectStore>,
    ttl: Duration,
    /// The root inode, alive as long as the namespace.
    root: Arc<Inode>,
    table: RwLock<table::InodeTable>,
    warned: Mutex<HashSet<String>>,
    /// Set for a shared namespace, which lists subdirectories ahead.
    this: Weak<Namespace>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("store", &self.store.describe())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Namespace {
    /// A namespace rooted at `prefix` (empty or ending in `/`), caching metadata for `ttl`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, ttl: Duration) -> Namespace {
        let root = Arc::new(Inode::new(
            ROOT_INO,
            NodeKind::Directory,
            ROOT_INO,
            prefix.to_string(),
            NodeMeta {
                size: 0,
                etag: String::new(),
                mtime: SystemTime::now(),
                validated_at: Instant::now(),
                fingerprint: None,
            },
        ));
        Namespace {
            store,
            ttl,
            table: RwLock::new(table::InodeTable::new(&root)),
            root,
            warned: Mutex::new(HashSet::new()),
            this: Weak::new(),
        }
    }

    /// Like [`Namespace::new`], shared, and listing ahead: when a directory is listed on
    /// demand, the listings of up to [`LIST_AHEAD`] of its subdirectories are fetched in the
    /// background (one level), so a walk of the tree (ComfyUI's model folders at start-up, a
    /// lookup of `checkpoints/x.safetensors` right after mounting) waits for one round trip
    /// instead of one per folder. Nothing is listed ahead with a zero TTL.
    pub fn shared(store: Arc<dyn ObjectStore>, prefix: &str, ttl: Duration) -> Arc<Namespace> {
        Arc::new_cyclic(|this| Namespace {
            this: this.clone(),
            ..Namespace::new(store, prefix, ttl)
        })
    }

    /// The metadata TTL this namespace was built with.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn table(&self) -> std::sync::RwLockWriteGuard<'_, table::InodeTable> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    fn inode(&self, ino: u64) -> Result<Arc<Inode>, FsError> {
        if ino == ROOT_INO {
            return Ok(self.root.clone());
        }
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(ino)
            .ok_or_else(|| FsError::NotFound(format!("inode {ino}")))
    }

    /// The attributes of `ino` as last seen (no request to the store).
    pub fn attr(&self, ino: u64) -> Result<NodeAttr, FsError> {
        Ok(self.inode(ino)?.attr())
    }

    /// Looks `name` up in directory `parent`, listing it if its listing is missing or expired.
    /// A successful lookup hands the inode to the kernel: it counts one reference, which
    /// [`Namespace::forget`] gives back.
    pub async fn lookup(&self, parent: u64, name: &str) -> Result<NodeAttr, FsError> {
        if names::check_segment(name).is_err() {
            return Err(FsError::NotFound(name.to_string()));
        }
        let listing = self.listing(parent).await?;
        let node = listing
            .entries
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .map(|i| &listing.nodes[i])
            .map_err(|_| FsError::NotFound(name.to_string()))?;
        self.table().remember(node);
        Ok(node.attr())
    }

    /// The kernel forgets `nlookup` references to `ino`. At none, the inode stays only while
    /// an open file or its directory's cached listing holds it, and a directory's own
    /// listing is dropped. The root is never forgotten.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        let released = self.table().forget(ino, nlookup);
        // Outside the table's lock: dropping a listing may free a whole subtree.
        if let Some(node) = released.filter(|node| node.ino != ROOT_INO) {
            node.drop_listing();
        }
    }

    /// Keeps `ino` alive while an open file uses it (see [`InodeHold`]).
    pub fn hold(&self, ino: u64) -> Result<InodeHold, FsError> {
        self.inode(ino).map(InodeHold)
    }

    /// Inodes in memory now, the root included.
    pub fn inode_count(&self) -> usize {
        self.table().live()
    }

    /// The listing of directory `ino`: the cached one while fresh, else a new one (and, for a
    /// shared namespace, its subdirectories' in the background).
    pub async fn listing(&self, ino: u64) -> Result<Arc<DirListing>, FsError> {
        let (listing, fetched) = self.listing_once(ino).await?;
        if let Some(this) = self
            .this
            .upgrade()
            .filter(|_| fetched && !self.ttl.is_zero())
        {
            let subdirs = listing
                .entries
                .iter()
                .filter(|e| e.kind == NodeKind::Directory)
                .take(LIST_AHEAD);
            for dir in subdirs {
                let (this, ino) = (this.clone(), dir.ino);
                tokio::spawn(async move {
                    if let Err(e) = this.listing_once(ino).await {
                        tracing::debug!(ino, "listing ahead failed: {e}");
                    }
                });
            }
        }
        Ok(listing)
    }

    /// The listing of directory `ino`, and whether it was fetched now.
    async fn listing_once(&self, ino: u64) -> Result<(Arc<DirListing>, bool), FsError> {
        let dir = self.inode(ino)?;
        let slot = dir
            .listing
            .as_ref()
            .ok_or_else(|| FsError::NotADirectory(dir.key.clone()))?;
        let mut cached = slot.lock().await;
        if let Some(listing) = cached.as_ref() {
            if listing.fetched_at.elapsed() < self.ttl {
                return Ok((listing.clone(), false));
            }
        }
        // The old listing stays in place while the new one is fetched: it keeps the inodes
        // of names still there alive, so they keep their numbers.
        let listing = Arc::new(self.fetch_listing(&dir).await?);
        *cached = Some(listing.clone());
        Ok((listing, true))
    }

    /// The directory holding `ino`.
    pub fn parent(&self, ino: u64) -> Option<u64> {
        self.inode(ino).ok().map(|node| node.parent)
    }

    /// The files after `ino` in its directory's cached listing (name order), with the metadata
    /// that listing brought; nothing when the listing is not cached or is being refreshed
    /// right now (no request is made).
    pub fn files_after(&self, ino: u64) -> Vec<ObjectVersion> {
        let Some(dir) = self.parent(ino).and_then(|p| self.inode(p).ok()) else {
            return Vec::new();
        };
        let listing = match dir.listing.as_ref().map(|slot| slot.try_lock()) {
            Some(Ok(cached)) => cached.clone(),
            _ => None,
        };
        let Some(listing) = listing else {
            return Vec::new();
        };
        listing
            .nodes
            .iter()
            .skip_while(|node| node.ino != ino)
            .skip(1)
            .filter(|node| node.kind == NodeKind::File)
            .map(|node| {
                let meta = lock(&node.meta);
                ObjectVersion {
                    key: node.key.as_str().into(),
                    etag: meta.etag.as_str().into(),
                    size: meta.size,
                    checksum: None,
                }
            })
            .collect()
    }

    /// Pins the current version of file `ino` for an open, asking the store (HEAD) when the
    /// metadata is older than the TTL.
    pub async fn open(&self, ino: u64) -> Result<ObjectVersion, FsError> {
        let node = self.inode(ino)?;
        if node.kind == NodeKind::Directory {
            return Err(FsError::IsADirectory(node.key.clone()));
        }
        // A listing says the version exists, not that these credentials may read it: bytes
        // of the shared tiers reach this volume only for versions its store has proven.
        let proven = {
            let meta = lock(&node.meta);
            meta.validated_at.elapsed() < self.ttl && self.store.proves_read(&node.key, &meta.etag)
        };
        let mut checksum = None;
        if !proven {
            let info = self.store.head(&node.key).await.map_err(|e| match e {
                crate::store::StoreError::NotFound { key } => FsError::NotFound(key),
                other => FsError::Store(other),
            })?;
            checksum = info.checksum;
            *lock(&node.meta) = NodeMeta {
                size: info.size,
                etag: info.etag,
                mtime: info.last_modified,
                validated_at: Instant::now(),
                fingerprint: None,
            };
        }
        let meta = lock(&node.meta);
        Ok(ObjectVersion {
            key: node.key.as_str().into(),
            etag: meta.etag.as_str().into(),
            size: meta.size,
            checksum,
        })
    }

    async fn fetch_listing(&self, dir: &Inode) -> Result<DirListing, FsError> {
        let mut subdirs = BTreeSet::new();
        let mut files: BTreeMap<String, ObjectInfo> = BTreeMap::new();
        let mut token = None;
        for page_number in 1.. {
            if page_number > MAX_LIST_PAGES {
                return Err(FsError::Store(crate::store::StoreError::Other {
                    operation: format!("ListObjectsV2 {}", dir.key),
                    message: format!(
                        "more than {MAX_LIST_PAGES} pages in one directory: giving up (a server \
                         that never stops returning continuation tokens?)"
                    ),
                }));
            }
            let page = self.store.list_page(&dir.key, token).await?;
            for prefix in page.common_prefixes {
                let name = prefix
                    .strip_prefix(dir.key.as_str())
                    .and_then(|n| n.strip_suffix('/'));
                match name.map(|n| (n, names::check_segment(n))) {
                    Some((name, Ok(()))) => {
                        subdirs.insert(name.to_string());
                    }
                    Some((_, Err(why))) => self.warn_skipped(&prefix, &why.to_string()),
                    None => self.warn_skipped(&prefix, "it is not under the listed prefix"),
                }
            }
            for object in page.objects {
                let Some(name) = object.key.strip_prefix(dir.key.as_str()) else {
                    self.warn_skipped(&object.key, "it is not under the listed prefix");
                    continue;
                };
                if name.is_empty() {
                    continue; // the directory's own marker object
                }
                match names::check_segment(name) {
                    Ok(()) => {
                        files.insert(name.to_string(), object);
                    }
                    Err(why) => self.warn_skipped(&object.key, &why.to_string()),
                }
            }
            token = page.next_continuation_token;
            if token.is_none() {
                break;
            }
        }
        for name in &subdirs {
            if let Some(hidden) = files.remove(name) {
                self.warn_skipped(
                    &hidden.key,
                    "it is also a directory prefix, and the directory wins",
                );
            }
        }

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let newest_file = files.values().map(|o| o.last_modified).max();
        let found = subdirs
            .into_iter()
            .map(|name| (name, None))
            .chain(files.into_iter().map(|(name, info)| (name, Some(info))));
        let mut named = Vec::new();
        {
            // One lock for the whole listing: a big directory does not take it per entry.
            let mut table = self.table();
            for (name, info) in found {
                let kind = match &info {
                    None => NodeKind::Directory,
                    Some(_) => NodeKind::File,
                };
                match &info {
                    None => (name.as_str(), kind).hash(&mut hasher),
                    Some(i) => (name.as_str(), kind, i.etag.as_str(), i.size).hash(&mut hasher),
                }
                let node = Self::intern(&mut table, dir, &name, kind, info.as_ref());
                named.push((name, node));
            }
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let fingerprint = hasher.finish();
        let (entries, nodes) = named
            .into_iter()
            .map(|(name, node)| {
                let entry = DirEntry {
                    name,
                    ino: node.ino,
                    kind: node.kind,
                };
                (entry, node)
            })
            .unzip();

        let mut meta = lock(&dir.meta);
        meta.mtime = match meta.fingerprint {
            None => newest_file.unwrap_or(meta.mtime),
            Some(previous) if previous != fingerprint => SystemTime::now(),
            Some(_) => meta.mtime,
        };
        meta.fingerprint = Some(fingerprint);
        meta.validated_at = Instant::now();
        Ok(DirListing {
            entries,
            nodes,
            fetched_at: Instant::now(),
        })
    }

    /// The inode for `name` in `parent`, created if no live one of `kind` has that name,
    /// with the object's latest metadata. A name that changed kind gets a new inode.
    fn intern(
        table: &mut table::InodeTable,
        parent: &Inode,
        name: &str,
        kind: NodeKind,
        info: Option<&ObjectInfo>,
    ) -> Arc<Inode> {
        let meta = NodeMeta {
            size: info.map_or(0, |i| i.size),
            etag: info.map_or_else(String::new, |i| i.etag.clone()),
            mtime: info.map_or_else(SystemTime::now, |i| i.last_modified),
            validated_at: Instant::now(),
            fingerprint: None,
        };
        if let Some(existing) = table.child(parent.ino, name, kind) {
            if kind == NodeKind::File {
                *lock(&existing.meta) = meta;
            }
            return existing;
        }
        let key = match kind {
            NodeKind::Directory => format!("{}{name}/", parent.key),
            NodeKind::File => format!("{}{name}", parent.key),
        };
        let node = Arc::new(Inode::new(table.allocate(), kind, parent.ino, key, meta));
        table.insert(name, &node);
        node
    }

    fn warn_skipped(&self, key: &str, why: &str) {
        let mut warned = lock(&self.warned);
        if warned.len() >= MAX_WARNED_KEYS || !warned.insert(key.to_string()) {
            return;
        }
        tracing::warn!(key = %key.escape_debug(), "skipping S3 key: {why}");
        if warned.len() == MAX_WARNED_KEYS {
            tracing::warn!("{MAX_WARNED_KEYS} keys skipped; further skipped keys are not reported");
        }
    }
}

#[cfg(test)]
mod tests;
