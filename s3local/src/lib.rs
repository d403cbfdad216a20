//! A local, S3-compatible endpoint for modelfs' tests, the `modelfs demo` command and benchmarks.
//!
//! This crate speaks the real S3 protocol: routing, XML bodies, error codes and SigV4
//! authentication come from [`s3s`], so a stock client (aws-sdk-s3, boto3, the modelfs
//! filesystem itself) talks to it exactly as it would to Amazon S3, over HTTP on loopback.
//! Behind the protocol layer sits [`FileStore`], a small file-backed object store written for
//! this purpose:
//!
//! * it holds **any** S3 key (`a//b`, `../x`, segments longer than 255 bytes, both `a` and
//!   `a/b`, unicode, spaces): object bytes live in files named by a hash of the key, with a
//!   JSON sidecar, never at a path derived from the key;
//! * ETags (MD5 of the content, like single-part PUTs on S3) are computed once, while an
//!   object is written, and kept in memory with the rest of the listing index;
//! * writes are atomic (temporary file, then rename), and a GET serves the object from the
//!   file it opened, so concurrent overwrites never produce a torn read.
//!
//! `s3s-fs`, the example backend that ships with s3s, is not used: it maps keys to paths (so
//! many legal keys cannot be stored), leaves the ETag out of listings, and hashes whole
//! files again on every GET, which makes multi-GiB models needlessly slow to serve.
//!
//! Modules:
//! * [`store`]: [`FileStore`], the object store;
//! * [`access`]: [`ReadOnlyUser`], identities besides the owner that may only list and read
//!   keys under their prefixes;
//! * [`service`]: [`LocalS3Service`], the [`s3s::S3`] implementation over a store;
//! * [`stats`]: [`RequestStats`], request counters tests assert on;
//! * [`cpu`]: CPU seconds of this process's threads or of another process, from `/proc`;
//! * [`server`]: [`LocalS3`], an HTTP server on its own runtime and thread, optionally kept
//!   to given CPUs ([`LocalS3Config::cpus`]);
//! * [`faults`]: [`Faults`], failures injected at run time for reliability tests (error
//!   statuses, broken, short, stalled or mislabelled bodies, tiny listing pages; off by
//!   default);
//! * [`shaping`]: [`Shaping`], first-byte latency and bandwidth caps for benchmarks (off by
//!   default);
//! * [`models`]: deterministic, real safetensors files and ComfyUI-like model trees.

#![warn(missing_docs)]

pub mod access;
pub mod cpu;
pub mod faults;
pub mod models;
pub mod server;
pub mod service;
pub mod shaping;
pub mod stats;
pub mod store;

mod encoding;

pub use access::{IssuedSession, ReadOnlyUser, SessionIssuer};
pub use faults::{Fault, FaultStats, Faults, Rule, Trigger};
pub use models::{
    parse_safetensors_header, seed_comfy_tree, write_safetensors, ComfyTree, SafetensorsSpec,
};
pub use server::{LocalS3, LocalS3Config};
pub use service::LocalS3Service;
pub use shaping::Shaping;
pub use stats::RequestStats;
pub use store::{FileStore, ObjectMeta, ObjectWriter, StoreError};
