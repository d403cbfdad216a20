//! `/etc/fstab` support: mount(8)'s helper convention `SOURCE DIR [-sfnv] [-o opt[,opt…]]` is
//! translated into `modelfs mount`. It applies when the binary is invoked as `mount.modelfs`
//! or `mount.fuse.modelfs` (symlinks made at install time), and when fuse3's `mount.fuse3`
//! runs it for a `fuse.modelfs` entry as `modelfs s3://… DIR -o …`.
//!
//! Example fstab line (`ro` is needed: mount(8) passes `rw` otherwise):
//! `s3://models/ComfyUI/models /opt/ComfyUI/models fuse.modelfs ro,_netdev,nofail,x-systemd.requires=modelfs-instance-store.service,region=us-west-2,cache_dir=/mnt/modelfs-cache/cache,allow_other 0 0`

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context};

/// Options mount(8) and systemd pass that mean nothing to modelfs (or are always true).
const IGNORED: &[&str] = &[
    "defaults",
    "ro",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "_netdev",
    "nofail",
    "exec",
    "noexec",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "atime",
    "noatime",
    "relatime",
    "nodiratime",
    "async",
    "sync",
];

/// modelfs options accepted in `-o`, as `name` (flag) or `name=value`.
const FLAGS: &[&str] = &[
    "force_path_style",
    "no_sign_request",
    "allow_other",
    "no_passthrough",
    "foreground",
];
const VALUES: &[&str] = &[
    "endpoint_url",
    "region",
    "metadata_ttl",
    "uid",
    "gid",
    "file_mode",
    "dir_mode",
    "cache_dir",
    "cache_size",
    "memory_cache_size",
    "log_level",
    "log_file",
];

/// If `argv[0]` names a mount helper, the equivalent `modelfs mount …` argument list.
pub fn helper_args(args: &[OsString]) -> Option<anyhow::Result<Vec<OsString>>> {
    let name = Path::new(args.first()?).file_name()?.to_str()?;
    let via_mount_fuse = name == "modelfs"
        && args
            .get(1)
            .and_then(|a| a.to_str())
            .is_some_and(|a| a.starts_with("s3://"));
    if name != "mount.modelfs" && name != "mount.fuse.modelfs" && !via_mount_fuse {
        return None;
    }
    Some(translate(&args[1..]))
}

fn translate(args: &[OsString]) -> anyhow::Result<Vec<OsString>> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.to_str() {
            Some("-o") => {
                let opts = iter.next().context("-o needs a value")?;
                options.push(
                    opts.to_str()
                        .context("-o options must be UTF-8")?
                        .to_string(),
                );
            }
            Some(s) if s.starts_with("-o") => options.push(s[2..].to_string()),
            // -s (sloppy), -n (no mtab), -v (verbose): nothing to do. -f (fake): refuse.
            Some("-s" | "-n" | "-v") => {}
            Some("-f") => bail!("fake mounts (-f) are not supported"),
            Some("-t") => {
                iter.next();
            }
            _ => positional.push(arg.clone()),
        }
    }
    let [source, dir] = positional.as_slice() else {
        bail!("usage: mount.modelfs s3://BUCKET[/PREFIX] MOUNTPOINT [-o options]");
    };
    let mut out: Vec<OsString> = vec![
        "modelfs".into(),
        "mount".into(),
        source.clone(),
        dir.clone(),
    ];
    for opt in options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        if IGNORED.contains(&name) || name.starts_with("x-") || name == "rw" && value.is_none() {
            if name == "rw" {
                // mount(8) passes `rw` itself when an fstab entry does not say `ro`.
                bail!("modelfs mounts are read-only: put 'ro' in the mount options, not 'rw'");
            }
            continue;
        }
        let flag = format!("--{}", name.replace('_', "-"));
        match (value, FLAGS.contains(&name), VALUES.contains(&name)) {
            (None, true, _) => out.push(flag.into()),
            (Some(v), _, true) => {
                out.push(flag.into());
                out.push(v.into());
            }
            _ => bail!("unknown or malformed mount option {opt:?}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> anyhow::Result<Vec<String>> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        helper_args(&args)
            .expect("helper name")
            .map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect())
    }

    #[test]
    fn translates_fstab_options() {
        let got = run(&[
            "/sbin/mount.fuse.modelfs",
            "s3://models/ComfyUI/models",
            "/mnt/models",
            "-o",
            "ro,_netdev,nofail,x-systemd.automount,region=us-west-2,allow_other,cache_dir=/nvme/c",
        ])
        .unwrap();
        assert_eq!(
            got,
            [
                "modelfs",
                "mount",
                "s3://models/ComfyUI/models",
                "/mnt/models",
                "--region",
                "us-west-2",
                "--allow-other",
                "--cache-dir",
                "/nvme/c"
            ]
        );
    }

    #[test]
    fn refuses_unknown_and_writable_options() {
        assert!(run(&["mount.modelfs", "s3://m", "/x", "-o", "bogus=1"]).is_err());
        assert!(run(&["mount.modelfs", "s3://m", "/x", "-o", "rw"]).is_err());
        assert!(run(&["mount.modelfs", "s3://m", "/x", "-o", "region"]).is_err());
        assert!(run(&["mount.modelfs", "s3://m"]).is_err());
        let plain: Vec<OsString> = vec!["modelfs".into(), "mount".into()];
        assert!(helper_args(&plain).is_none());
        let via_fuse3 = run(&["/usr/bin/modelfs", "s3://m/p", "/x", "-o", "allow_other"]).unwrap();
        assert_eq!(
            via_fuse3,
            ["modelfs", "mount", "s3://m/p", "/x", "--allow-other"]
        );
    }
}
