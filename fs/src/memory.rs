//! How much memory this process's pages may take: the machine's, or its cgroup's limit where
//! that is lower. The CSI driver's mounter runs under a pod limit, and the page cache its
//! cache writes allocate is charged to it. Also the one reader of `/proc/meminfo`.

use std::path::Path;

/// The `/proc/meminfo` field `name` (`MemAvailable`, `Dirty`, ...) in bytes.
pub fn meminfo(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_field(&text, name)
}

/// The lower of `MemTotal` and the memory limits of this process's cgroup and its ancestors
/// (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`); `None` when none can be read.
pub fn limit() -> Option<u64> {
    limit_under(Path::new("/"))
}

/// [`limit`] with `/proc` and `/sys/fs/cgroup` under `root` (tests).
fn limit_under(root: &Path) -> Option<u64> {
    let total = std::fs::read_to_string(root.join("proc/meminfo"))
        .ok()
        .and_then(|meminfo| meminfo_field(&meminfo, "MemTotal"));
    let cgroup = std::fs::read_to_string(root.join("proc/self/cgroup"))
        .ok()
        .and_then(|membership| cgroup_limit(root, &membership));
    match (total, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The field `name` of a `/proc/meminfo` text, in bytes.
fn meminfo_field(meminfo: &str, name: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The lowest memory limit on the way from this process's cgroup (from `/proc/self/cgroup`,
/// `membership`) up to its hierarchy's root.
fn cgroup_limit(root: &Path, membership: &str) -> Option<u64> {
    let mut lowest: Option<u64> = None;
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (hierarchy, file) = if controllers.is_empty() {
            (root.join("sys/fs/cgroup"), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("sys/fs/cgroup/memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut dir = hierarchy.join(path.trim_start_matches('/'));
        loop {
            if let Some(limit) = read_limit(&dir.join(file)) {
                lowest = Some(lowest.map_or(limit, |l| l.min(limit)));
            }
            if dir == hierarchy || !dir.pop() {
                break;
            }
        }
    }
    lowest
}

/// A limit file's value; `None` for no limit (`max`, or v1's page-rounded `i64::MAX`) or
/// no file.
fn read_limit(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: u64 = text.trim().parse().ok()?;
    (value < 1 << 62).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       16384000 kB\nMemFree:         1000 kB\n";
    const TOTAL: u64 = 16_384_000 * 1024;
    const V1: &str = "sys/fs/cgroup/memory";

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A root with [`MEMINFO`], `membership` as `/proc/self/cgroup`, and `files`.
    fn fake_root(membership: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "proc/meminfo", MEMINFO);
        write(root.path(), "proc/self/cgroup", membership);
        for (rel, text) in files {
            write(root.path(), rel, text);
        }
        root
    }

    #[test]
    fn meminfo_fields_are_found_by_their_whole_name_in_bytes() {
        let text = "MemTotal: 100 kB\nDirty:        7 kB\nDirtyNot: 9 kB\n";
        assert_eq!(meminfo_field(text, "MemTotal"), Some(100 * 1024));
        assert_eq!(meminfo_field(text, "Dirty"), Some(7 * 1024));
        assert_eq!(meminfo_field(text, "Dirt"), None);
        assert_eq!(meminfo_field(text, "Writeback"), None);
    }

    #[test]
    fn without_a_cgroup_limit_it_is_the_machine_s_memory() {
        let files = [("sys/fs/cgroup/user.slice/memory.max", "max\n")];
        let root = fake_root("0::/user.slice\n", &files);
        assert_eq!(limit_under(root.path()), Some(TOTAL));
    }

    #[test]
    fn a_v2_limit_of_the_cgroup_or_an_ancestor_is_taken_when_lower() {
        let files = [
            ("sys/fs/cgroup/kubepods/memory.max", "max\n"),
            ("sys/fs/cgroup/kubepods/pod1/memory.max", "2684354560\n"),
            ("sys/fs/cgroup/kubepods/pod1/mounter/memory.max", "max\n"),
        ];
        let root = fake_root("0::/kubepods/pod1/mounter\n", &files);
        assert_eq!(limit_under(root.path()), Some(2_684_354_560));
    }

    #[test]
    fn a_v1_memory_limit_is_taken_and_an_unlimited_one_ignored() {
        let unlimited = "9223372036854771712\n";
        let (top, own) = (
            format!("{V1}/memory.limit_in_bytes"),
            format!("{V1}/jobs/one/memory.limit_in_bytes"),
        );
        let membership = "5:cpu,cpuacct:/x\n4:memory:/jobs/one\n0::/\n";
        let root = fake_root(membership, &[(&top, unlimited), (&own, "1073741824\n")]);
        assert_eq!(limit_under(root.path()), Some(1 << 30));
        write(root.path(), &own, unlimited);
        assert_eq!(limit_under(root.path()), Some(TOTAL));
    }

    #[test]
    fn the_machine_s_memory_bounds_a_higher_cgroup_limit() {
        let files = [("sys/fs/cgroup/big/memory.max", "1099511627776\n")];
        let root = fake_root("0::/big\n", &files);
        assert_eq!(limit_under(root.path()), Some(TOTAL));
    }
}
