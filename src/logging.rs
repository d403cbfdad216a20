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
            let file = open_log_file(path)
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

/// Opens `path` for appending, creating it 0640. A symbolic link there is refused, not
/// followed: the mount runs as root, and a planted link would make it write elsewhere.
fn open_log_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::new(
                    e.kind(),
                    "it is a symbolic link (refused: give the real file's path)",
                )
            } else {
                e
            }
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_log_file_is_created_0640_and_a_link_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("m.log");
        drop(open_log_file(&log).expect("create"));
        let mode = std::fs::metadata(&log).expect("meta").permissions().mode();
        // 0640 less the umask: never readable by others, never executable.
        assert_eq!(mode & 0o777 & !0o640, 0, "{mode:o}");
        assert_eq!(mode & 0o600, 0o600, "{mode:o}");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("write");
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        let e = open_log_file(&link).expect_err("a link");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
    }
}
