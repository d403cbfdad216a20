//! Cache tiers below the kernel's page cache:
//!
//! - memory ([`MemoryTier`]): hot blocks in a byte-bounded `moka` cache;
//! - disk ([`DiskCache`]): a persistent, crash-safe block cache on local NVMe, shared by every
//!   modelfs process on the node (see [`disk`]);
//! - [`Tiers`]: the one owner of their order (memory, disk, the cross-process download lock,
//!   disk again, then a miss to fetch) and of where fetched blocks are kept.
//!
//! Both are keyed by object version (bucket, key, ETag), so an overwritten object is a new
//! entry and an old version's bytes are never served for it.

pub mod disk;
mod memory;
mod stats;
mod tiers;

pub use disk::{CacheSize, DiskCache, DiskCacheConfig};
pub use memory::{BlockKey, MemoryTier};
pub use stats::{TierSnapshot, TierStats};
pub use tiers::{Lookup, Miss, Priority, Tiers, PEER_DOWNLOAD_WAIT};
