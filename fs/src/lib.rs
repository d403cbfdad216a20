//! # modelfs-fs: the modelfs filesystem library
//!
//! modelfs presents an S3 bucket (or a prefix of it) laid out like `ComfyUI/models` as a
//! read-only POSIX tree. This crate holds everything except the command line:
//!
//! - [`store`]: the one seam to S3. [`store::ObjectStore`] is a small async trait (list a page,
//!   head, ranged get with `If-Match`); [`store::S3Store`] implements it with `aws-sdk-s3`,
//!   `store::MemoryStore` is an in-memory double for tests (unit tests, and others with the
//!   `test-util` feature); the product does not carry it.
//! - [`namespace`]: inodes and directories. Directories are listed lazily with
//!   `ListObjectsV2` + `/` delimiter and cached for the metadata TTL; keys that cannot be POSIX
//!   names are skipped ([`namespace::names`]).
//! - [`read`]: the read path. An open pins an object version (key + ETag + size); reads are
//!   split into fixed-size blocks fetched by ranged GETs carrying `If-Match`, single-flighted
//!   and kept in a byte-bounded memory cache, with sequential readahead.
//! - [`session`]: the state and policy under the FUSE adapter: open files and directories,
//!   each inode's I/O mode (passthrough or cached), warm read-ahead of files opened for
//!   loading. Tested without a kernel.
//! - [`fuse`]: the adapter that turns kernel requests into calls on the [`session`] and
//!   errors into errnos. No policy lives there.
//! - [`mount`]: pre-flight checks and the FUSE session.
//! - [`cache`]: the memory and disk tiers.
//! - [`warm`]: filling the disk cache ahead of use.
//!
//! `docs/design.md` in the repository walks the data path from `read()` to S3 and back.

pub mod cache;
pub mod error;
pub mod fuse;
pub mod location;
pub mod memory;
pub mod metrics;
pub mod mount;
pub mod namespace;
pub mod read;
pub mod session;
pub mod store;
pub mod units;
pub mod warm;

pub use error::FsError;
pub use location::S3Location;
