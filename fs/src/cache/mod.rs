//! Cache tiers below the kernel's page cache:
//!
//! - memory ([`MemoryTier`]): hot blocks in a byte-bounded `moka` cache; it is also the
//!   in-process single-flight point (one request per block however many readers wait);
//! - disk ([`DiskCache`]): a persistent, crash-safe block cache on local NVMe, shared by every
//!   modelfs process on the node (see [`disk`]).
//!
//! Both are keyed by object version (bucket, key, ETag), so an overwritten object is a new
//! entry and an old version's bytes are never served for it.

pub mod disk;
mod memory;
mod stats;

pub use disk::{CacheSize, DiskCache, DiskCacheConfig};
pub use memory::{BlockKey, MemoryTier};
pub use stats::{TierSnapshot, TierStats};
