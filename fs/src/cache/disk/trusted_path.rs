//! The cache directory's path, resolved without trusting what others can change.
//!
//! A root daemon that opens `/a/b/cache` by path trusts everyone who can write `/a` or
//! `/a/b`: they could swap `cache` for a link to any directory root can write, and the cache
//! would create and delete files there. So the path is walked from `/` one name at a time
//! (`openat`, never following a link implicitly), and every directory on the way must be
//! owned by root or this process's user and writable by no one else, or sticky (`/tmp`:
//! others may add names there but not replace ours; a directory they add is theirs, and
//! refused at the next step). A symbolic link on the way is followed only if its owner is
//! root or this user (only they could have put it where it is), and its target is walked
//! the same way. Missing directories are created (0700) in their checked parent.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, ErrorKind};
use std::path::{Component, Path, PathBuf};

use super::safe_dir::{is_foreign, Dir};

/// Links followed in one walk before giving up, as the kernel does (`ELOOP`).
const MAX_LINKS: u32 = 40;

/// Opens the directory at `path` (the last name must not be a link), creating missing
/// directories when `create` is set, after checking every directory above it (see the
/// module doc). The directory itself is the caller's to check.
pub fn open_checked_path(path: &Path, create: bool) -> io::Result<Dir> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut names = names_of(&absolute);
    let mut dir = Dir::open_path(Path::new("/"))?;
    check_ancestor(&dir)?;
    let mut links = 0;
    while let Some(name) = names.pop_front() {
        if name == ".." {
            dir = dir.open_parent()?;
            check_ancestor(&dir)?;
            continue;
        }
        let name = name.into_string().map_err(|name| {
            io::Error::new(
                ErrorKind::InvalidInput,
                format!("{name:?} in {} is not UTF-8", path.display()),
            )
        })?;
        let last = names.is_empty();
        if create {
            match dir.create_dir(&name) {
                Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        let next = match dir.open_dir(&name) {
            Err(e) if is_foreign(&e) && !last => {
                let stat = dir.stat(&name)?;
                if !stat.is_link() {
                    return Err(e);
                }
                links += 1;
                let target = trusted_link(&dir, &name, stat.uid, links)?;
                if target.is_absolute() {
                    dir = Dir::open_path(Path::new("/"))?;
                }
                for name in names_of(&target).into_iter().rev() {
                    names.push_front(name);
                }
                continue;
            }
            other => other?,
        };
        if !last {
            check_ancestor(&next)?;
        }
        dir = next;
    }
    Ok(dir)
}

/// The names of `path` after its root, `.` left out.
fn names_of(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// The target of the link `name` in `dir`, if its owner (`owner`) is root or this user.
fn trusted_link(dir: &Dir, name: &str, owner: u32, links: u32) -> io::Result<PathBuf> {
    let path = dir.path().join(name);
    if links > MAX_LINKS {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("too many symbolic links on the way to {}", path.display()),
        ));
    }
    if !trusted_owner(owner) {
        return Err(refused(
            &path,
            format!("a symbolic link owned by uid {owner}"),
        ));
    }
    dir.read_link(name)
}

/// Checks a directory above the cache: see the module doc.
fn check_ancestor(dir: &Dir) -> io::Result<()> {
    let st = dir.metadata()?;
    if !trusted_owner(st.uid) {
        return Err(refused(dir.path(), format!("owned by uid {}", st.uid)));
    }
    let sticky = st.mode & libc::S_ISVTX != 0;
    if st.mode & 0o022 != 0 && !sticky {
        return Err(refused(
            dir.path(),
            format!("writable by group or others (mode {:o})", st.mode & 0o7777),
        ));
    }
    Ok(())
}

fn trusted_owner(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

fn refused(path: &Path, why: String) -> io::Error {
    io::Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "{} is on the way to the cache directory and {why}: whoever can change it could \
             swap the cache directory; refusing (choose a path through directories only root \
             can change)",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_path_through_trusted_directories_and_links_opens_and_creates() {
        let base = tempfile::tempdir().unwrap();
        let real = base.path().join("real");
        std::fs::create_dir(&real).unwrap();
        symlink(&real, base.path().join("via")).unwrap();
        symlink("../real", base.path().join("real/up")).unwrap();
        let dir = open_checked_path(&base.path().join("via/up/a/b"), true).unwrap();
        assert!(real.join("a/b").is_dir(), "created behind the links");
        assert_eq!(dir.path(), real.join("a/b"));
        let again = open_checked_path(&base.path().join("real/./a/../a/b"), false);
        assert!(again.is_ok(), "{again:?}");
    }

    #[test]
    fn nothing_is_created_unless_asked() {
        let base = tempfile::tempdir().unwrap();
        let e = open_checked_path(&base.path().join("a/b"), false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(!base.path().join("a").exists());
    }

    #[test]
    fn a_link_as_the_last_name_is_refused() {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir(base.path().join("real")).unwrap();
        symlink(base.path().join("real"), base.path().join("link")).unwrap();
        let e = open_checked_path(&base.path().join("link"), true).unwrap_err();
        assert!(is_foreign(&e), "{e}");
    }

    #[test]
    fn an_ancestor_others_can_write_is_refused_unless_sticky() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir_all(open.join("cache")).unwrap();
        chmod(&open, 0o777);
        let e = open_checked_path(&open.join("cache"), true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        chmod(&open, 0o1777);
        open_checked_path(&open.join("cache"), true).expect("sticky, like /tmp");
        chmod(&open, 0o775);
        let e = open_checked_path(&open.join("cache"), true).unwrap_err();
        assert!(e.to_string().contains("mode 775"), "{e}");
    }

    #[test]
    fn an_ancestor_or_link_owned_by_another_user_is_refused() {
        if !is_root() {
            return; // only root can give a file away
        }
        let base = tempfile::tempdir().unwrap();
        let theirs = base.path().join("theirs");
        std::fs::create_dir_all(theirs.join("cache")).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let e = open_checked_path(&theirs.join("cache"), true).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");

        // In a sticky directory anyone can write, a link someone else planted is not
        // followed.
        let shared = base.path().join("shared");
        std::fs::create_dir_all(base.path().join("target/cache")).unwrap();
        std::fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o1777);
        let link = shared.join("planted");
        symlink(base.path().join("target"), &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
        let e = open_checked_path(&link.join("cache"), true).unwrap_err();
        assert!(
            e.to_string().contains("symbolic link owned by uid 65534"),
            "{e}"
        );
    }
}
