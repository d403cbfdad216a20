//! `modelfs cache stats|verify|clear`: look after a disk cache directory, safely while mounts
//! use it (entries in use are never removed).

use std::path::PathBuf;

use anyhow::Context;
use modelfs_fs::cache::disk::{open_objects, remove_if_unused, scan, Entry};

/// Arguments of `modelfs cache`.
#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    action: CacheAction,
    /// The cache directory (as given to `modelfs mount --cache-dir`).
    #[arg(long, global = true, default_value = "/var/cache/modelfs")]
    cache_dir: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
enum CacheAction {
    /// Entries, bytes, complete entries.
    Stats,
    /// Check every cached block's checksum; drop damaged blocks.
    Verify,
    /// Remove every entry no process is using.
    Clear,
}

/// Runs `modelfs cache`.
pub fn run(args: CacheArgs) -> anyhow::Result<()> {
    // The same checks as a mount's: this command runs as root too, and writes and removes.
    let objects = open_objects(&args.cache_dir)
        .with_context(|| format!("cannot use cache directory {}", args.cache_dir.display()))?;
    let started = std::time::Instant::now();
    let entries = scan(&objects)
        .with_context(|| format!("cannot read cache directory {}", args.cache_dir.display()))?;
    let scan_time = started.elapsed();
    match args.action {
        CacheAction::Stats => {
            let bytes: u64 = entries.iter().map(|e| e.bytes).sum();
            let mut complete = 0;
            for e in &entries {
                if let Ok(Some(entry)) = Entry::open_any(&e.shard, &e.name) {
                    if entry.is_complete().unwrap_or(false) {
                        complete += 1;
                    }
                }
            }
            println!("cache directory: {}", args.cache_dir.display());
            println!("entries:         {}", entries.len());
            println!("complete:        {complete}");
            println!(
                "bytes on disk:   {} ({:.1} MiB)",
                bytes,
                bytes as f64 / 1048576.0
            );
            println!(
                "full scan:       {:.1} ms (mounts start from the usage recorded by the last \
                 scan and rescan in the background)",
                scan_time.as_secs_f64() * 1000.0
            );
        }
        CacheAction::Verify => {
            let (mut blocks, mut corrupt, mut damaged) = (0, 0, 0);
            for e in &entries {
                match Entry::open_any(&e.shard, &e.name) {
                    Ok(Some(entry)) => {
                        let (ok, bad) = entry
                            .verify()
                            .with_context(|| format!("verify {}", e.dir.display()))?;
                        blocks += ok;
                        corrupt += bad;
                    }
                    Ok(None) => damaged += 1,
                    Err(err) => eprintln!("skipping {}: {err}", e.dir.display()),
                }
            }
            println!(
                "verified {} entries: {blocks} good blocks, {corrupt} damaged blocks dropped, \
                 {damaged} damaged entries (replaced on next use)",
                entries.len()
            );
        }
        CacheAction::Clear => {
            let (mut removed, mut in_use) = (0, 0);
            for e in &entries {
                match remove_if_unused(e) {
                    Ok(true) => removed += 1,
                    Ok(false) => in_use += 1,
                    Err(err) => eprintln!("cannot remove {}: {err}", e.dir.display()),
                }
            }
            println!("removed {removed} entries; kept {in_use} in use by a mount");
        }
    }
    Ok(())
}
