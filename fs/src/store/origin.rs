//! [`StoreOrigin`]: where a store's bytes come from, spelled one way only.
//!
//! Caches key what they hold by origin, so two mounts share cached bytes only when they read
//! the same bucket through the same endpoint. One endpoint must therefore have one spelling:
//! `http://Host:80/` and `http://host` are the same origin, `http://host:8080` is another.

use std::fmt;

/// The endpoint, addressing style and bucket a store reads from, normalized.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreOrigin {
    /// `scheme://host:port[/path]`: lowercase scheme and host, the port always explicit, no
    /// user info, no trailing slash.
    pub endpoint: String,
    /// Path-style addressing (`endpoint/bucket/key`) rather than virtual-hosted
    /// (`bucket.endpoint/key`): the two can reach different servers.
    pub path_style: bool,
    /// The bucket.
    pub bucket: String,
}

impl StoreOrigin {
    /// The origin of `bucket` at `endpoint_url`, normalized (see [`normalize_endpoint`]).
    pub fn new(endpoint_url: &str, path_style: bool, bucket: &str) -> StoreOrigin {
        StoreOrigin {
            endpoint: normalize_endpoint(endpoint_url),
            path_style,
            bucket: bucket.to_string(),
        }
    }

    /// The endpoint and addressing style without the bucket (`http://h:80 path-style`).
    pub fn address(&self) -> String {
        let style = if self.path_style {
            "path-style"
        } else {
            "virtual-hosted"
        };
        format!("{} {style}", self.endpoint)
    }
}

impl fmt::Display for StoreOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{} at {}", self.bucket, self.address())
    }
}

/// `scheme://host:port[/path]` for an endpoint URL: scheme and host lowercased, user info,
/// query and fragment dropped, the scheme's default port made explicit, trailing slashes and
/// a trailing dot of the host removed. Best effort on text that is not a URL: it is kept,
/// lowercased, so it still names one origin only.
pub fn normalize_endpoint(url: &str) -> String {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_ascii_lowercase();
    };
    let scheme = scheme.to_ascii_lowercase();
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // User info never selects a different server.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = split_host_port(authority);
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    let port = port
        .and_then(|p| p.parse::<u16>().ok())
        .or(match scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        });
    let path = path.trim_end_matches('/');
    match port {
        Some(port) => format!("{scheme}://{host}:{port}{path}"),
        None => format!("{scheme}://{host}{path}"),
    }
}

/// Splits `host[:port]`, where host may be a bracketed IPv6 address.
fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(end) = authority
        .strip_prefix('[')
        .and_then(|_| authority.find(']'))
    {
        let port = authority[end + 1..].strip_prefix(':');
        return (&authority[..=end], port.filter(|p| !p.is_empty()));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, Some(port).filter(|p| !p.is_empty()))
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_endpoint_has_one_spelling() {
        for same in [
            "http://host",
            "http://Host:80",
            "HTTP://HOST:80/",
            "http://user:pw@host/?x=1",
            "http://host.:0080",
        ] {
            assert_eq!(normalize_endpoint(same), "http://host:80", "{same}");
        }
        assert_eq!(
            normalize_endpoint("https://S3.us-west-2.amazonaws.com"),
            "https://s3.us-west-2.amazonaws.com:443"
        );
        assert_eq!(normalize_endpoint("http://[::1]:9000"), "http://[::1]:9000");
        assert_eq!(normalize_endpoint("http://[::1]"), "http://[::1]:80");
        assert_eq!(normalize_endpoint("http://h/s3/"), "http://h:80/s3");
        assert_ne!(
            normalize_endpoint("http://host:8080"),
            normalize_endpoint("http://host")
        );
        assert_ne!(
            normalize_endpoint("https://host"),
            normalize_endpoint("http://host")
        );
    }

    #[test]
    fn the_addressing_style_is_part_of_the_origin() {
        let a = StoreOrigin::new("http://h", true, "b");
        let b = StoreOrigin::new("http://h", false, "b");
        assert_ne!(a, b);
        assert_ne!(a.address(), b.address());
        assert_eq!(a.to_string(), "s3://b at http://h:80 path-style");
    }
}
