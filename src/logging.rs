//! Log set-up: `tracing` to stderr, stdout or a file, filtered by `--log-level`.

use std::path::Path;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is a `tracing` filter (`info`, `debug`,
/// `modelfs_fs=trace`); `file` appends to that file instead of stderr.
pub fn init(level: &str, file: Option<&Path>) -> anyhow::Result<()> {
    let builder = tracing_subscriber::fmt().with_env_filter(filter(level)?);
    let result = match file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .try_init()
        }
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install logger: {e}"))
}

/// Installs the global subscriber writing to stdout, where a container's log collector (and
/// `kubectl logs`) expects a long-lived server's lines.
pub fn init_stdout(level: &str) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(filter(level)?)
        .with_writer(std::io::stdout)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install logger: {e}"))
}

fn filter(level: &str) -> anyhow::Result<EnvFilter> {
    EnvFilter::try_new(level)
        .with_context(|| format!("invalid --log-level {level:?} (examples: info, debug)"))
}
