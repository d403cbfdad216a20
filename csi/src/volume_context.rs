//! What a volume is: the volume attributes (a PV's `volumeAttributes` or an inline volume's
//! `volumeAttributes`) and the mount flags (a PV's `mountOptions`, which arrive in
//! `VolumeCapability.mount.mount_flags`), validated in one place and turned into one
//! [`MountSpec`]: the `modelfs mount` source and options.
//!
//! Every accepted key is a constant below; anything else is refused with an error naming
//! the key, so a typo never silently mounts something other than what was asked for.
//!
//! # Volume attributes
//!
//! | key              | required | example                 | `modelfs mount` option        |
//! |------------------|----------|-------------------------|-------------------------------|
//! | `bucket`         | yes      | `my-models`             | source `s3://BUCKET`          |
//! | `prefix`         | no       | `comfyui/models`        | source `s3://BUCKET/PREFIX/`  |
//! | `region`         | no       | `us-west-2`             | `--region`                    |
//! | `endpointUrl`    | no       | `https://s3.example.com`| `--endpoint-url`              |
//! | `forcePathStyle` | no       | `true` / `false`        | `--force-path-style`          |
//! | `noSignRequest`  | no       | `true` / `false`        | `--no-sign-request`           |
//! | `metadataTtl`    | no       | `30s`, `5m`, `500ms`    | `--metadata-ttl`              |
//! | `authenticationSource` | no | `pod` / `driver`      | (whose credentials sign)      |
//! | `warm`           | no       | `checkpoints/sdxl*,vae/*` | (files to download first)   |
//! | `warmTimeout`    | no       | `60s` (default), ≤ `80s`  | (how long publish waits)    |
//! | `warmWorkflow`   | no       | `sdxl-workflow`, `wf/api.json` | (a ConfigMap's workflow) |
//!
//! `warmWorkflow` names a ConfigMap in the pod's namespace (and a key in it, default
//! `workflow.json`) holding a ComfyUI API-format workflow: the model files it loads are warmed
//! like `warm`'s.
//!
//! `warm` lists paths or globs below the volume's root, comma-separated: the node's mounter
//! downloads them into its disk cache when the volume is published, and NodePublishVolume
//! returns when they are there or after `warmTimeout`, whichever comes first; the download
//! goes on after that, so a pod that starts early reads what is already local and fetches
//! the rest on demand.
//!
//! `authenticationSource` says whose credentials read the bucket: `pod` (the default) means
//! the role named on the pod's service account, obtained with the pod's own token
//! ([`crate::pod_identity`]); `driver` means the node mounter's role, and only a
//! PersistentVolume (written by a cluster admin) may choose it: an inline volume (written by
//! whoever may create pods) that asks for `driver` is refused. An unsigned volume
//! (`noSignRequest`) uses no credentials and takes no `authenticationSource`.
//!
//! `endpointUrl` and `noSignRequest: "true"` must also be allowed by the plugin's
//! [`EndpointPolicy`] (`--allowed-endpoints`, `--allow-unsigned`; by default neither is):
//! [`MountSpec::parse_with_policy`] checks them, [`MountSpec::parse`] applies the default.
//!
//! Keys under `csi.storage.k8s.io/` are set by kubelet (`ephemeral`, and the pod-info keys
//! when a CSIDriver has `podInfoOnMount: true`); they are accepted and ignored.
//!
//! # Mount flags
//!
//! Written `name=value` or `name` (a leading `--` and `_` for `-` are tolerated):
//!
//! | flag                       | `modelfs mount` option  | note                                  |
//! |----------------------------|-------------------------|---------------------------------------|
//! | `uid=N`                    | `--uid N`               | owner of every file (default root)    |
//! | `gid=N`                    | `--gid N`               | group of every file (default root)    |
//! | `file-mode=0444`           | `--file-mode`           | octal, write bits refused             |
//! | `dir-mode=0555`            | `--dir-mode`            | octal, write bits refused             |
//! | `ro`, `read-only`          | (none)                  | always read-only anyway               |
//! | `allow-other`              | (none)                  | always set: any pod user may read     |
//!
//! Node-wide settings (the memory budget, the shared disk cache) are flags of
//! `modelfs mounter`, not per volume: one process serves every volume of the node.

use modelfs_fs::units::{parse_duration, parse_mode};
use std::collections::HashMap;
use std::time::Duration;

use crate::endpoint_policy::{EndpointPolicy, Refusal};

use serde::{Deserialize, Serialize};

/// Attribute: the S3 bucket (required).
pub const BUCKET: &str = "bucket";
/// Attribute: key prefix inside the bucket that becomes the volume's root.
pub const PREFIX: &str = "prefix";
/// Attribute: AWS region of the bucket.
pub const REGION: &str = "region";
/// Attribute: S3-compatible endpoint URL (`http://` or `https://`).
pub const ENDPOINT_URL: &str = "endpointUrl";
/// Attribute: `true` for path-style addressing.
pub const FORCE_PATH_STYLE: &str = "forcePathStyle";
/// Attribute: `true` for unsigned requests (public buckets).
pub const NO_SIGN_REQUEST: &str = "noSignRequest";
/// Attribute: how long listings and attributes are trusted (`30s`, `5m`, ...).
pub const METADATA_TTL: &str = "metadataTtl";
/// Attribute: whose credentials read the bucket, `pod` (default) or `driver`.
pub const AUTHENTICATION_SOURCE: &str = "authenticationSource";
/// Attribute: paths or globs to download before the volume is published, comma-separated.
pub const WARM: &str = "warm";
/// Attribute: how long publishing waits for `warm` (default 60 s, at most 80 s).
pub const WARM_TIMEOUT: &str = "warmTimeout";
/// Attribute: a ConfigMap (`NAME` or `NAME/KEY`) in the pod's namespace holding a ComfyUI
/// API-format workflow whose models are warmed.
pub const WARM_WORKFLOW: &str = "warmWorkflow";
/// The ConfigMap key of `warmWorkflow` when none is given.
pub const DEFAULT_WORKFLOW_KEY: &str = "workflow.json";
/// Default of `warmTimeout`.
pub const DEFAULT_WARM_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest `warmTimeout`: the publish call, mounting included, must end well within the
/// mounter client's 90 s and kubelet's two minutes.
pub const MAX_WARM_TIMEOUT: Duration = Duration::from_secs(80);
/// Prefix of the keys kubelet adds to the volume context; accepted and ignored.
pub const KUBELET_KEY_PREFIX: &str = "csi.storage.k8s.io/";
/// Kubelet's key saying whether the volume is an inline ephemeral one.
pub const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";

/// Every attribute key this driver understands, in table order.
pub const ATTRIBUTES: [&str; 11] = [
    BUCKET,
    PREFIX,
    REGION,
    ENDPOINT_URL,
    FORCE_PATH_STYLE,
    NO_SIGN_REQUEST,
    METADATA_TTL,
    AUTHENTICATION_SOURCE,
    WARM,
    WARM_TIMEOUT,
    WARM_WORKFLOW,
];

/// Whose credentials sign a volume's requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Authentication {
    /// The node mounter's own (its service account's role). Records written before
    /// `authenticationSource` existed were all of this kind.
    #[default]
    Driver,
    /// The role on the pod's service account, for the pod's token.
    Pod,
    /// None: unsigned requests (`noSignRequest`).
    Unsigned,
}

/// Mount flag: owner uid of every file.
pub const FLAG_UID: &str = "uid";
/// Mount flag: owner gid of every file.
pub const FLAG_GID: &str = "gid";
/// Mount flag: permission bits of files.
pub const FLAG_FILE_MODE: &str = "file-mode";
/// Mount flag: permission bits of directories.
pub const FLAG_DIR_MODE: &str = "dir-mode";
/// Mount flags accepted as no-ops because every mount is read-only.
pub const FLAGS_READ_ONLY: [&str; 2] = ["ro", "read-only"];
/// Mount flag accepted as a no-op because every mount allows other users.
pub const FLAG_ALLOW_OTHER: &str = "allow-other";

/// A volume attribute or mount flag that cannot be used; the message names it and says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeContextError {
    /// A required attribute is absent or empty.
    #[error("volume attribute {0:?} is required")]
    Missing(&'static str),
    /// An attribute this driver does not know.
    #[error("unknown volume attribute {key:?} (known: {known})")]
    UnknownAttribute {
        /// The key as given.
        key: String,
        /// The accepted keys, comma-separated.
        known: String,
    },
    /// An attribute whose value is malformed.
    #[error("volume attribute {key}={value:?} is invalid: {reason}")]
    InvalidAttribute {
        /// The key.
        key: &'static str,
        /// The value as given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A well-formed attribute this node does not allow (an endpoint not on the plugin's
    /// list, an unsigned volume without `--allow-unsigned`).
    #[error("volume attribute {key}={value:?} is not allowed: {reason}")]
    NotAllowed {
        /// The key.
        key: &'static str,
        /// The value as given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A mount flag outside the allow-list.
    #[error("mount option {flag:?} is not supported (allowed: {allowed})")]
    UnknownFlag {
        /// The flag as given.
        flag: String,
        /// The accepted flags, comma-separated.
        allowed: String,
    },
    /// A mount flag with a malformed or missing value.
    #[error("mount option {flag:?} is invalid: {reason}")]
    InvalidFlag {
        /// The flag as given.
        flag: String,
        /// Why it is refused.
        reason: String,
    },
}

/// What to mount and how: the `modelfs mount` source and the per-volume options.
///
/// Two publish requests with equal specs (and volume ids) are the same publication; the
/// node server compares specs to decide between "already done" and ALREADY_EXISTS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// `s3://BUCKET/` or `s3://BUCKET/PREFIX/`.
    pub source: String,
    /// `modelfs mount` options in a fixed order, e.g. `["--region", "us-west-2"]`.
    pub options: Vec<String>,
    /// Whose credentials sign its requests.
    #[serde(default)]
    pub authentication: Authentication,
    /// What to download when it is published, and for how long publishing waits for it.
    #[serde(default)]
    pub warm: Warm,
}

/// Files to download into the node's cache when a volume is published.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warm {
    /// Paths or globs below the volume's root.
    pub patterns: Vec<String>,
    /// How long publishing waits, in milliseconds.
    pub wait_ms: u64,
    /// A ConfigMap in the pod's namespace, and its key, holding a workflow to warm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<(String, String)>,
}

impl Warm {
    /// Whether there is anything to warm.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty() && self.workflow.is_none()
    }
}

impl MountSpec {
    /// [`MountSpec::parse_with_policy`] under the plugin's default policy
    /// ([`EndpointPolicy::aws_only`]): what a node with the shipped flags accepts.
    pub fn parse(
        context: &HashMap<String, String>,
        mount_flags: &[String],
    ) -> Result<MountSpec, VolumeContextError> {
        MountSpec::parse_with_policy(context, mount_flags, &EndpointPolicy::aws_only())
    }

    /// Validates a volume context and mount flags, checks the endpoint and signing against
    /// `policy`, and builds the spec.
    pub fn parse_with_policy(
        context: &HashMap<String, String>,
        mount_flags: &[String],
        policy: &EndpointPolicy,
    ) -> Result<MountSpec, VolumeContextError> {
        for key in context.keys() {
            if !ATTRIBUTES.contains(&key.as_str()) && !key.starts_with(KUBELET_KEY_PREFIX) {
                return Err(VolumeContextError::UnknownAttribute {
                    key: key.clone(),
                    known: ATTRIBUTES.join(", "),
                });
            }
        }
        let get = |key: &'static str| context.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());

        let bucket = get(BUCKET).ok_or(VolumeContextError::Missing(BUCKET))?;
        validate_bucket(bucket).map_err(|reason| invalid(BUCKET, bucket, reason))?;
        let prefix = match get(PREFIX) {
            Some(raw) => normalize_prefix(raw).map_err(|reason| invalid(PREFIX, raw, reason))?,
            None => String::new(),
        };
        let mut options = Vec::new();
        if let Some(region) = get(REGION) {
            // Starts with a letter: no value may look like a `modelfs mount` flag.
            let ok = region.len() <= 64
                && region.starts_with(|c: char| c.is_ascii_lowercase())
                && region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(invalid(
                    REGION,
                    region,
                    "expected a region name such as us-west-2",
                ));
            }
            options.extend(["--region".to_string(), region.to_string()]);
        }
        if let Some(url) = get(ENDPOINT_URL) {
            check_endpoint(policy, url)?;
            options.extend([OPTION_ENDPOINT_URL.to_string(), url.to_string()]);
        }
        if parse_bool(FORCE_PATH_STYLE, get(FORCE_PATH_STYLE))? {
            options.push("--force-path-style".to_string());
        }
        let unsigned = parse_bool(NO_SIGN_REQUEST, get(NO_SIGN_REQUEST))?;
        if unsigned {
            check_unsigned(policy)?;
            options.push(OPTION_NO_SIGN_REQUEST.to_string());
        }
        let inline = get(EPHEMERAL) == Some("true");
        let authentication = parse_authentication(get(AUTHENTICATION_SOURCE), unsigned, inline)?;
        let mut warm = parse_warm(get(WARM), get(WARM_TIMEOUT))?;
        if let Some(raw) = get(WARM_WORKFLOW) {
            let workflow =
                parse_workflow_ref(raw).map_err(|reason| invalid(WARM_WORKFLOW, raw, reason))?;
            warm.workflow = Some(workflow);
        }
        if let Some(ttl) = get(METADATA_TTL) {
            parse_duration(ttl).map_err(|reason| invalid(METADATA_TTL, ttl, &reason))?;
            options.extend(["--metadata-ttl".to_string(), ttl.to_string()]);
        }
        options.extend(parse_mount_flags(mount_flags)?);
        Ok(MountSpec {
            source: format!("s3://{bucket}/{prefix}"),
            options,
            authentication,
            warm,
        })
    }

    /// The region the volume names, if any.
    pub fn region(&self) -> Option<&str> {
        let at = self.options.iter().position(|o| o == "--region")?;
        self.options.get(at + 1).map(String::as_str)
    }

    /// Checks an already built spec (a recorded one, about to be remounted) against
    /// `policy`, as [`MountSpec::parse_with_policy`] checked the attributes it came from.
    pub fn check_policy(&self, policy: &EndpointPolicy) -> Result<(), VolumeContextError> {
        let mut options = self.options.iter();
        while let Some(option) = options.next() {
            match option.as_str() {
                OPTION_ENDPOINT_URL => {
                    check_endpoint(policy, options.next().map_or("", String::as_str))?
                }
                OPTION_NO_SIGN_REQUEST => check_unsigned(policy)?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// The `modelfs mount` option an `endpointUrl` becomes.
const OPTION_ENDPOINT_URL: &str = "--endpoint-url";
/// The `modelfs mount` option `noSignRequest: "true"` becomes.
const OPTION_NO_SIGN_REQUEST: &str = "--no-sign-request";

fn check_endpoint(policy: &EndpointPolicy, url: &str) -> Result<(), VolumeContextError> {
    policy.check_endpoint(url).map_err(|refusal| match refusal {
        Refusal::Malformed(reason) => VolumeContextError::InvalidAttribute {
            key: ENDPOINT_URL,
            value: url.to_string(),
            reason,
        },
        Refusal::NotAllowed(reason) => VolumeContextError::NotAllowed {
            key: ENDPOINT_URL,
            value: url.to_string(),
            reason,
        },
    })
}

fn check_unsigned(policy: &EndpointPolicy) -> Result<(), VolumeContextError> {
    policy
        .check_unsigned()
        .map_err(|refusal| VolumeContextError::NotAllowed {
            key: NO_SIGN_REQUEST,
            value: "true".to_string(),
            reason: refusal.to_string(),
        })
}

/// Maps mount flags onto `modelfs mount` options, in a canonical order (so the same set of
/// flags in another order is the same spec). A flag given twice is refused.
/// `NAME` or `NAME/KEY`: a ConfigMap name (DNS subdomain) and a ConfigMap key.
fn parse_workflow_ref(raw: &str) -> Result<(String, String), &'static str> {
    let (name, key) = raw.split_once('/').unwrap_or((raw, DEFAULT_WORKFLOW_KEY));
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let key_ok = !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !name_ok || !key_ok {
        return Err("expected a ConfigMap name, optionally /KEY (default key workflow.json)");
    }
    Ok((name.to_string(), key.to_string()))
}

/// Volume attribute `key`'s `value` is malformed, for `reason`.
fn invalid(key: &'static str, value: &str, reason: &str) -> VolumeContextError {
    VolumeContextError::InvalidAttribute {
        key,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_warm(patterns: Option<&str>, timeout: Option<&str>) -> Result<Warm, VolumeContextError> {
    let wait = match timeout {
        Some(raw) => {
            let wait = parse_duration(raw).map_err(|reason| invalid(WARM_TIMEOUT, raw, &reason))?;
            if wait > MAX_WARM_TIMEOUT {
                return Err(invalid(
                    WARM_TIMEOUT,
                    raw,
                    "at most 80s: kubelet gives publishing about two minutes",
                ));
            }
            wait
        }
        None => DEFAULT_WARM_TIMEOUT,
    };
    let mut list = Vec::new();
    for pattern in patterns
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let path = pattern.trim_start_matches('/');
        if path.split('/').any(|s| s == "..") || path.chars().any(char::is_control) {
            return Err(invalid(WARM, pattern, "paths stay below the volume's root"));
        }
        if glob::Pattern::new(path).is_err() {
            return Err(invalid(WARM, pattern, "not a valid glob"));
        }
        list.push(path.to_string());
    }
    Ok(Warm {
        patterns: list,
        wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        workflow: None,
    })
}

fn parse_authentication(
    value: Option<&str>,
    unsigned: bool,
    inline: bool,
) -> Result<Authentication, VolumeContextError> {
    let refuse = |value: &str, reason: &str| VolumeContextError::NotAllowed {
        key: AUTHENTICATION_SOURCE,
        value: value.to_string(),
        reason: reason.to_string(),
    };
    match (value, unsigned) {
        (None, true) => Ok(Authentication::Unsigned),
        (Some(value), true) => Err(invalid(
            AUTHENTICATION_SOURCE,
            value,
            "an unsigned volume (noSignRequest) uses no credentials",
        )),
        (None | Some("pod"), false) => Ok(Authentication::Pod),
        (Some("driver"), false) if inline => Err(refuse(
            "driver",
            "an inline volume reads with its pod's own credentials; only a PersistentVolume \
             may use the driver's",
        )),
        (Some("driver"), false) => Ok(Authentication::Driver),
        (Some(other), false) => Err(invalid(
            AUTHENTICATION_SOURCE,
            other,
            "expected pod or driver",
        )),
    }
}

fn parse_mount_flags(flags: &[String]) -> Result<Vec<String>, VolumeContextError> {
    let allowed = || {
        let mut all = vec![
            FLAG_UID,
            FLAG_GID,
            FLAG_FILE_MODE,
            FLAG_DIR_MODE,
            FLAG_ALLOW_OTHER,
        ];
        all.extend(FLAGS_READ_ONLY);
        all.join(", ")
    };
    let mut values: Vec<(&'static str, String)> = Vec::new();
    for raw in flags {
        let text = raw.trim();
        if text.is_empty() {
            continue;
        }
        let invalid = |reason: String| VolumeContextError::InvalidFlag {
            flag: raw.clone(),
            reason,
        };
        let text = text.strip_prefix("--").unwrap_or(text);
        let (name, value) = match text.split_once(['=', ' ']) {
            Some((name, value)) => (name.trim(), Some(value.trim())),
            None => (text, None),
        };
        let name = name.replace('_', "-");
        let flag: &'static str = match name.as_str() {
            "uid" => FLAG_UID,
            "gid" => FLAG_GID,
            "file-mode" => FLAG_FILE_MODE,
            "dir-mode" => FLAG_DIR_MODE,
            "allow-other" | "ro" | "read-only" => {
                if value.is_some() {
                    return Err(invalid("takes no value".to_string()));
                }
                continue;
            }
            _ => {
                return Err(VolumeContextError::UnknownFlag {
                    flag: raw.clone(),
                    allowed: allowed(),
                })
            }
        };
        let value = value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid(format!("expected {flag}=VALUE")))?;
        match flag {
            FLAG_UID | FLAG_GID => {
                value
                    .parse::<u32>()
                    .map_err(|_| invalid("expected a numeric id".to_string()))?;
            }
            _ => {
                let mode = parse_mode(value).map_err(invalid)?;
                if mode & 0o222 != 0 {
                    return Err(invalid(
                        "write bits make no sense on a read-only volume".to_string(),
                    ));
                }
            }
        }
        if values.iter().any(|(f, _)| *f == flag) {
            return Err(invalid("given more than once".to_string()));
        }
        values.push((flag, value.to_string()));
    }
    let order = [FLAG_UID, FLAG_GID, FLAG_FILE_MODE, FLAG_DIR_MODE];
    let mut options = Vec::new();
    for flag in order {
        if let Some((_, value)) = values.iter().find(|(f, _)| *f == flag) {
            options.push(format!("--{flag}"));
            options.push(value.clone());
        }
    }
    Ok(options)
}

fn parse_bool(key: &'static str, value: Option<&str>) -> Result<bool, VolumeContextError> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(invalid(
            key,
            value.unwrap_or_default(),
            "expected true or false",
        )),
    }
}

/// S3's general-purpose bucket naming rules (the same as `modelfs mount` checks).
fn validate_bucket(name: &str) -> Result<(), &'static str> {
    if name.len() < 3 || name.len() > 63 {
        return Err("must be 3 to 63 characters long");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
    {
        return Err("may only contain lowercase letters, digits, '.' and '-'");
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(name.chars().next()) || !edge_ok(name.chars().last()) {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

/// `a/b/` from `a/b`, `/a/b/` or `a/b/`; refuses empty, `.` and `..` segments.
fn normalize_prefix(raw: &str) -> Result<String, &'static str> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("segments may not be empty, '.' or '..'");
    }
    if trimmed.chars().any(char::is_control) {
        return Err("may not contain control characters");
    }
    Ok(format!("{trimmed}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn flags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn minimal_volume_is_just_a_bucket() {
        let spec = MountSpec::parse(&context(&[(BUCKET, "models")]), &[]).unwrap();
        assert_eq!(spec.source, "s3://models/");
        assert!(spec.options.is_empty());
        assert_eq!(spec.authentication, Authentication::Pod);
    }

    #[test]
    fn warm_lists_paths_below_the_root_and_waits_at_most_80s() {
        let parse = |pairs: &[(&str, &str)]| MountSpec::parse(&context(pairs), &[]);
        let spec = parse(&[
            (BUCKET, "models"),
            (WARM, " checkpoints/sdxl*, /vae/a.pt ,"),
        ])
        .unwrap();
        assert_eq!(spec.warm.patterns, ["checkpoints/sdxl*", "vae/a.pt"]);
        assert_eq!(spec.warm.wait_ms, 60_000);
        let spec = parse(&[(BUCKET, "models"), (WARM, "a"), (WARM_TIMEOUT, "5s")]).unwrap();
        assert_eq!(spec.warm.wait_ms, 5_000);
        let spec = parse(&[(BUCKET, "models"), (WARM_WORKFLOW, "sdxl")]).unwrap();
        assert_eq!(
            spec.warm.workflow,
            Some(("sdxl".into(), "workflow.json".into()))
        );
        let spec = parse(&[(BUCKET, "models"), (WARM_WORKFLOW, "wf/api.json")]).unwrap();
        assert_eq!(spec.warm.workflow, Some(("wf".into(), "api.json".into())));
        assert!(!spec.warm.is_empty());
        for (key, value) in [
            (WARM, "../other/x"),
            (WARM, "a/[b"),
            (WARM_TIMEOUT, "5m"),
            (WARM_TIMEOUT, "soon"),
            (WARM_WORKFLOW, "../x"),
            (WARM_WORKFLOW, "Wf/a b"),
        ] {
            let err = parse(&[(BUCKET, "models"), (key, value)]).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn only_a_persistent_volume_may_read_with_the_drivers_credentials() {
        let parse = |pairs: &[(&str, &str)]| {
            MountSpec::parse_with_policy(&context(pairs), &[], &permissive())
        };
        let static_driver = parse(&[(BUCKET, "models"), (AUTHENTICATION_SOURCE, "driver")]);
        assert_eq!(
            static_driver.unwrap().authentication,
            Authentication::Driver
        );
        let inline = [(BUCKET, "models"), (EPHEMERAL, "true")];
        assert_eq!(parse(&inline).unwrap().authentication, Authentication::Pod);
        let inline_driver = parse(&[
            (BUCKET, "models"),
            (EPHEMERAL, "true"),
            (AUTHENTICATION_SOURCE, "driver"),
        ]);
        assert!(matches!(
            inline_driver,
            Err(VolumeContextError::NotAllowed {
                key: AUTHENTICATION_SOURCE,
                ..
            })
        ));
        let unknown = parse(&[(BUCKET, "models"), (AUTHENTICATION_SOURCE, "node")]);
        assert!(matches!(
            unknown,
            Err(VolumeContextError::InvalidAttribute { .. })
        ));
        let unsigned = parse(&[(BUCKET, "models"), (NO_SIGN_REQUEST, "true")]);
        assert_eq!(unsigned.unwrap().authentication, Authentication::Unsigned);
        let unsigned_pod = parse(&[
            (BUCKET, "models"),
            (NO_SIGN_REQUEST, "true"),
            (AUTHENTICATION_SOURCE, "pod"),
        ]);
        assert!(unsigned_pod.is_err());
    }

    /// A policy allowing the local test endpoint and unsigned volumes.
    fn permissive() -> EndpointPolicy {
        EndpointPolicy::new(&["http://127.0.0.1:9000".to_string()], true).unwrap()
    }

    #[test]
    fn every_attribute_maps_to_its_option() {
        let spec = MountSpec::parse_with_policy(
            &context(&[
                (BUCKET, "my-models"),
                (PREFIX, "/comfyui/models/"),
                (REGION, "us-west-2"),
                (ENDPOINT_URL, "http://127.0.0.1:9000"),
                (FORCE_PATH_STYLE, "true"),
                (NO_SIGN_REQUEST, "FALSE"),
                (METADATA_TTL, "5m"),
                (EPHEMERAL, "true"),
                ("csi.storage.k8s.io/pod.name", "comfyui-0"),
            ]),
            &[],
            &permissive(),
        )
        .unwrap();
        assert_eq!(spec.source, "s3://my-models/comfyui/models/");
        assert_eq!(
            spec.options,
            [
                "--region",
                "us-west-2",
                "--endpoint-url",
                "http://127.0.0.1:9000",
                "--force-path-style",
                "--metadata-ttl",
                "5m"
            ]
        );
    }

    #[test]
    fn mount_flags_are_mapped_in_a_canonical_order() {
        let a = MountSpec::parse(
            &context(&[(BUCKET, "models")]),
            &flags(&[
                "--gid=100",
                "uid=1000",
                "ro",
                "allow_other",
                "file-mode=0440",
                "dir_mode 0550",
            ]),
        )
        .unwrap();
        assert_eq!(
            a.options,
            [
                "--uid",
                "1000",
                "--gid",
                "100",
                "--file-mode",
                "0440",
                "--dir-mode",
                "0550"
            ]
        );
        let b = MountSpec::parse(
            &context(&[(BUCKET, "models")]),
            &flags(&["dir-mode=0550", "file-mode=0440", "uid=1000", "gid=100"]),
        )
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_attributes_are_refused_with_the_key_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "\"bucket\" is required"),
            (&[(BUCKET, "  ")], "\"bucket\" is required"),
            (&[(BUCKET, "Bad_Bucket")], "bucket=\"Bad_Bucket\""),
            (&[(BUCKET, "ok-bucket"), (PREFIX, "a/../b")], "prefix="),
            (&[(BUCKET, "ok-bucket"), (PREFIX, "a//b")], "prefix="),
            (&[(BUCKET, "ok-bucket"), (REGION, "US West")], "region="),
            (
                &[(BUCKET, "ok-bucket"), (REGION, "--endpoint-url")],
                "region=",
            ),
            (
                &[(BUCKET, "ok-bucket"), (ENDPOINT_URL, "s3.local")],
                "endpointUrl=",
            ),
            (
                &[(BUCKET, "ok-bucket"), (FORCE_PATH_STYLE, "yes")],
                "forcePathStyle=",
            ),
            (
                &[(BUCKET, "ok-bucket"), (NO_SIGN_REQUEST, "1")],
                "noSignRequest=",
            ),
            (
                &[(BUCKET, "ok-bucket"), (METADATA_TTL, "soon")],
                "metadataTtl=",
            ),
            (
                &[(BUCKET, "ok-bucket"), (METADATA_TTL, "5 parsecs")],
                "metadataTtl=",
            ),
            (
                &[(BUCKET, "ok-bucket"), ("bukket", "x")],
                "unknown volume attribute \"bukket\"",
            ),
        ];
        for (pairs, expected) in cases {
            let err = MountSpec::parse(&context(pairs), &[]).unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{pairs:?}: {err} should mention {expected}"
            );
        }
    }

    #[test]
    fn endpoints_and_unsigned_volumes_need_the_plugins_allowance() {
        let default = EndpointPolicy::aws_only();
        let listed = permissive();
        let refused = |policy: &EndpointPolicy, pairs: &[(&str, &str)], key: &str| {
            let mut all = vec![(BUCKET, "models")];
            all.extend_from_slice(pairs);
            let err = MountSpec::parse_with_policy(&context(&all), &[], policy).unwrap_err();
            assert!(
                matches!(err, VolumeContextError::NotAllowed { .. }),
                "{pairs:?}: {err}"
            );
            assert!(err.to_string().contains(&format!("{key}=")), "{err}");
        };
        // The default (what `parse` applies) allows neither.
        refused(
            &default,
            &[(ENDPOINT_URL, "http://127.0.0.1:9000")],
            ENDPOINT_URL,
        );
        refused(
            &default,
            &[(ENDPOINT_URL, "https://s3.example.com")],
            ENDPOINT_URL,
        );
        refused(&default, &[(NO_SIGN_REQUEST, "true")], NO_SIGN_REQUEST);
        let err = MountSpec::parse(
            &context(&[(BUCKET, "models"), (NO_SIGN_REQUEST, "True")]),
            &[],
        );
        assert!(
            matches!(
                err,
                Err(VolumeContextError::NotAllowed {
                    key: NO_SIGN_REQUEST,
                    ..
                })
            ),
            "parse applies the default policy: {err:?}"
        );
        // A listed endpoint is not a licence for others, nor for the metadata service.
        refused(
            &listed,
            &[(ENDPOINT_URL, "http://127.0.0.2:9")],
            ENDPOINT_URL,
        );
        refused(
            &listed,
            &[(ENDPOINT_URL, "http://169.254.169.254")],
            ENDPOINT_URL,
        );
        // Allowed: no endpoint and signed, under any policy; the listed one when listed.
        let plain = MountSpec::parse(&context(&[(BUCKET, "models")]), &[]).unwrap();
        assert!(plain.check_policy(&default).is_ok());
        let spec = MountSpec::parse_with_policy(
            &context(&[
                (BUCKET, "models"),
                (ENDPOINT_URL, "http://127.0.0.1:9000/"),
                (NO_SIGN_REQUEST, "true"),
            ]),
            &[],
            &listed,
        )
        .unwrap();
        // The mounter gets the endpoint as written.
        assert!(spec.options.iter().any(|o| o == "http://127.0.0.1:9000/"));
        // A recorded spec is checked against the policy of the day.
        assert!(spec.check_policy(&listed).is_ok());
        let err = spec.check_policy(&default).unwrap_err();
        assert!(err.to_string().contains("endpointUrl="), "{err}");
        let only_endpoint = EndpointPolicy::new(&["http://127.0.0.1:9000".into()], false).unwrap();
        let err = spec.check_policy(&only_endpoint).unwrap_err();
        assert!(err.to_string().contains("noSignRequest="), "{err}");
    }

    #[test]
    fn bad_mount_flags_are_refused_with_the_flag_named() {
        let cases: &[(&str, &str)] = &[
            ("rw", "not supported"),
            ("allow-root", "not supported"),
            ("metadata-ttl=5m", "not supported"),
            ("uid", "expected uid=VALUE"),
            ("uid=root", "numeric id"),
            ("file-mode=0644", "write bits"),
            ("dir-mode=9", "octal"),
            ("memory-cache-size=1GiB", "not supported"),
            ("ro=1", "takes no value"),
        ];
        for (flag, expected) in cases {
            let err =
                MountSpec::parse(&context(&[(BUCKET, "models")]), &flags(&[flag])).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(flag), "{text} should name {flag}");
            assert!(text.contains(expected), "{text} should mention {expected}");
        }
        let err = MountSpec::parse(&context(&[(BUCKET, "models")]), &flags(&["uid=1", "uid=2"]))
            .unwrap_err();
        assert!(err.to_string().contains("more than once"), "{err}");
    }
}
