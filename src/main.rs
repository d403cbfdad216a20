//! `modelfs`: mount an S3 models bucket as a read-only `ComfyUI/models` tree.
//!
//! The binary only parses flags and wires the `modelfs-fs` library together; see
//! `docs/design.md` for how the pieces fit.

mod cache_cmd;
mod cache_placement;
mod daemon;
mod demo;
mod fstab;
mod logging;
mod metrics_server;
mod mount_cmd;
mod mounter_cmd;
mod s3_args;
mod sd_notify;
mod serve_args;
mod unmount_cmd;
mod volume_args;
mod warm_cmd;

use clap::{Parser, Subcommand};

/// Mount an S3 models bucket as a read-only ComfyUI/models tree, served from a tiered cache.
#[derive(Debug, Parser)]
#[command(name = "modelfs", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount s3://BUCKET[/PREFIX] read-only at MOUNTPOINT.
    Mount(mount_cmd::MountArgs),
    /// Unmount a modelfs mount (same as `fusermount3 -u`).
    Unmount(unmount_cmd::UnmountArgs),
    /// Download model files into the disk cache ahead of use (node boot, init containers).
    Warm(warm_cmd::WarmArgs),
    /// Inspect, verify or clear a disk cache directory.
    Cache(cache_cmd::CacheArgs),
    /// Start a local S3 endpoint with generated models, mount it, load a model, report, unmount.
    Demo(demo::DemoArgs),
    /// Run the Kubernetes CSI node plugin (serves kubelet on a Unix socket).
    Csi(modelfs_csi::CsiArgs),
    /// Run the node's long-lived FUSE server, which serves every volume the CSI plugin
    /// publishes from one memory budget and one disk cache.
    Mounter(mounter_cmd::MounterArgs),
}

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args = match fstab::helper_args(&args) {
        Some(Ok(translated)) => translated,
        Some(Err(e)) => {
            eprintln!("modelfs: error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
        None => args,
    };
    let cli = Cli::parse_from(&args);
    let result = match cli.command {
        Command::Mount(mount) => mount_cmd::run(mount, &args[1..]),
        Command::Unmount(args) => unmount_cmd::run(args),
        Command::Cache(args) => cache_cmd::run(args),
        Command::Warm(args) => warm_cmd::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Csi(args) => modelfs_csi::run(args),
        Command::Mounter(args) => mounter_cmd::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modelfs: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
