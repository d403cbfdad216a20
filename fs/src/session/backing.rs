//! Registering a cache file with the kernel as the backing file of passthrough opens: the
//! one step of the open policy that needs the FUSE connection, behind a trait so that the
//! policy is tested with a fake.

use std::fs::File;

/// Registers backing files for FUSE passthrough (fuser's `ReplyOpen::open_backing`).
pub trait BackingRegistrar {
    /// The kernel's handle of a registered backing file; dropping it unregisters the file.
    type Backing: Send + Sync + std::fmt::Debug + 'static;

    /// Registers `file` as the backing file of a passthrough open.
    fn register(&self, file: &File) -> std::io::Result<Self::Backing>;
}
