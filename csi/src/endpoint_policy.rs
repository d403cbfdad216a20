//! Which S3 endpoints a volume may send the node's signed requests to.
//!
//! A volume's `endpointUrl` is chosen by whoever writes the volume: for an inline volume, any
//! pod author. The node's mounter signs every request with the node's credentials and the
//! plugin reports failures back to the pod, so an unchecked endpoint would let a pod aim the
//! node at internal services (the instance metadata service, anything on the node's network)
//! and read the outcome. The plugin therefore accepts only the endpoints its operator listed
//! (`modelfs csi --allowed-endpoints`); with the default, an empty list, volumes use AWS S3
//! through the SDK's regional endpoint and any `endpointUrl` is refused.
//!
//! # Matching
//!
//! Both the list's entries and a volume's `endpointUrl` are parsed with a real URL parser
//! ([`url::Url`], the WHATWG rules a browser uses) and compared as [`Endpoint`]s: scheme,
//! host and port equal, with the scheme's default port made explicit (`https://s3.example.com`
//! matches `https://S3.Example.com:443/`), and the path equal once a trailing `/` is dropped.
//! So a plain `http://` endpoint is only ever accepted when an `http://` entry names it.
//!
//! # Refused whatever the list says
//!
//! - Hosts that are not written in their canonical form: IP addresses in decimal, octal, hex or
//!   shortened form (`http://2852039166/`, `http://0x7f.1/`, `http://127.1/`), percent-encoded
//!   or non-ASCII host names. The mounter receives the volume's text, not ours, and another
//!   parser might read such a host differently; canonical text reads the same everywhere.
//! - Link-local addresses (169.254.0.0/16, fe80::/10), the instance metadata addresses
//!   (169.254.169.254, fd00:ec2::254) and names (`instance-data.ec2.internal`,
//!   `metadata.google.internal`), unspecified addresses (0.0.0.0/8, `::`), multicast and
//!   broadcast; also in their IPv4-mapped (`::ffff:169.254.169.254`) and NAT64 forms. An entry
//!   like that in `--allowed-endpoints` stops the plugin at start-up.
//! - User names, passwords, queries, fragments and backslashes in the URL.
//!
//! Loopback (`127.0.0.0/8`, `::1`, `localhost`) and private addresses are accepted only when
//! the exact endpoint is listed, like any other host (a node-local S3 gateway, a test server).
//! Host names are compared as names: the list trusts DNS for the names it holds.
//!
//! # Unsigned requests
//!
//! `noSignRequest: "true"` is refused unless the plugin runs with `--allow-unsigned`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Host names of instance metadata services, refused like their addresses.
const METADATA_NAMES: [&str; 3] = [
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.google.internal",
];

/// The AWS instance metadata service's IPv6 address.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Why an endpoint (or an unsigned volume) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The text is not an endpoint URL at all.
    #[error("{0}")]
    Malformed(String),
    /// A well-formed endpoint (or option) this node does not allow.
    #[error("{0}")]
    NotAllowed(String),
}

/// An `--allowed-endpoints` entry that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--allowed-endpoints entry {entry:?}: {reason}")]
pub struct BadEntry {
    /// The entry as given.
    pub entry: String,
    /// Why it is refused.
    pub reason: Refusal,
}

/// An endpoint URL reduced to what decides where requests go: scheme, host, port and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    scheme: String,
    host: Host<String>,
    port: u16,
    /// The path without its trailing `/` (empty for the root).
    path: String,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}:{}{}",
            self.scheme, self.host, self.port, self.path
        )
    }
}

impl Endpoint {
    /// Parses and normalises `raw`; refuses anything that is not a plain `http(s)://` URL
    /// with a canonically written host, and hosts that are never allowed (see the module doc).
    pub fn parse(raw: &str) -> Result<Endpoint, Refusal> {
        let malformed = |why: &str| Refusal::Malformed(why.to_string());
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(malformed("may not contain spaces"));
        }
        if raw.contains('\\') {
            return Err(malformed("may not contain a backslash"));
        }
        let lower = raw.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"))
            .ok_or_else(|| malformed("must start with http:// or https://"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(malformed("may not contain a user name or password"));
        }
        let url = Url::parse(raw).map_err(|e| Refusal::Malformed(format!("is not a URL ({e})")))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(malformed("may not have a query or a fragment"));
        }
        let (Some(host), Some(host_text), Some(port)) =
            (url.host(), url.host_str(), url.port_or_known_default())
        else {
            return Err(malformed("has no host"));
        };
        // The host as written: the authority without its port (an IPv6 host keeps its
        // brackets, which `host_str` has too).
        let written = match authority.rfind(']') {
            Some(end) => &authority[..=end],
            None => authority.split(':').next().unwrap_or_default(),
        };
        // Checked first, so that the metadata address in any spelling is called by its name.
        if let Some(class) = never_allowed(&host) {
            return Err(Refusal::NotAllowed(format!("{class} is never allowed")));
        }
        if written != host_text {
            return Err(malformed(&format!(
                "the host must be written in its canonical form ({host_text}): IP addresses in \
                 decimal, octal, hex or shortened form and encoded names are refused"
            )));
        }
        Ok(Endpoint {
            scheme: url.scheme().to_string(),
            host: host.to_owned(),
            port,
            path: url.path().trim_end_matches('/').to_string(),
        })
    }
}

/// What the host is, when it is a host no volume may name.
fn never_allowed(host: &Host<&str>) -> Option<&'static str> {
    match host {
        Host::Domain(name) => {
            let name = name.trim_end_matches('.');
            METADATA_NAMES
                .contains(&name)
                .then_some("an instance metadata host name")
        }
        Host::Ipv4(ip) => never_allowed_v4(*ip),
        Host::Ipv6(ip) => never_allowed_v6(*ip),
    }
}

fn never_allowed_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("the instance metadata address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.octets()[0] == 0 {
        Some("an unspecified address")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("a multicast or broadcast address")
    } else {
        None
    }
}

fn never_allowed_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip == AWS_METADATA_V6 {
        Some("the instance metadata address")
    } else if segments[0] & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast or broadcast address")
    } else if let Some(v4) = ip.to_ipv4_mapped() {
        never_allowed_v4(v4)
    } else if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 (RFC 6052): the last 32 bits are the IPv4 address reached.
        let [.., hi, lo] = segments;
        never_allowed_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)))
    } else {
        None
    }
}

/// The endpoints volumes may name and whether they may be unsigned; see the module doc.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    allowed: Vec<Endpoint>,
    allow_unsigned: bool,
}

impl EndpointPolicy {
    /// The default: AWS S3 only (no `endpointUrl`), signed requests only.
    pub fn aws_only() -> EndpointPolicy {
        EndpointPolicy::default()
    }

    /// A policy from `--allowed-endpoints` entries (empty ones are skipped) and
    /// `--allow-unsigned`. An entry that is malformed or names a host that is never allowed
    /// is an error: a typo must not silently allow nothing, or something else.
    pub fn new(entries: &[String], allow_unsigned: bool) -> Result<EndpointPolicy, BadEntry> {
        let mut allowed = Vec::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let endpoint = Endpoint::parse(entry).map_err(|reason| BadEntry {
                entry: entry.to_string(),
                reason,
            })?;
            if !allowed.contains(&endpoint) {
                allowed.push(endpoint);
            }
        }
        Ok(EndpointPolicy {
            allowed,
            allow_unsigned,
        })
    }

    /// The allowed endpoints, normalised (for the start-up log).
    pub fn allowed(&self) -> &[Endpoint] {
        &self.allowed
    }

    /// Whether unsigned requests are allowed.
    pub fn allows_unsigned(&self) -> bool {
        self.allow_unsigned
    }

    /// Accepts `raw` (a volume's `endpointUrl`) if it is one of the allowed endpoints. The
    /// reason for a refusal names no address and says nothing about the network.
    pub fn check_endpoint(&self, raw: &str) -> Result<(), Refusal> {
        let endpoint = Endpoint::parse(raw)?;
        if self.allowed.contains(&endpoint) {
            return Ok(());
        }
        Err(Refusal::NotAllowed(if self.allowed.is_empty() {
            "this node allows no custom endpoint: volumes use AWS S3 (modelfs csi \
             --allowed-endpoints)"
                .to_string()
        } else if endpoint.scheme == "http" {
            "plain http:// is allowed only for an endpoint listed in the plugin's \
             --allowed-endpoints, and this one is not"
                .to_string()
        } else {
            "not one of the endpoints this node allows (modelfs csi --allowed-endpoints)"
                .to_string()
        }))
    }

    /// Accepts an unsigned volume only with `--allow-unsigned`.
    pub fn check_unsigned(&self) -> Result<(), Refusal> {
        if self.allow_unsigned {
            Ok(())
        } else {
            Err(Refusal::NotAllowed(
                "unsigned requests are not allowed on this node (modelfs csi --allow-unsigned)"
                    .to_string(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> EndpointPolicy {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        EndpointPolicy::new(&entries, false).unwrap()
    }

    /// Asserts that `policy` refuses `url` as `kind` (`Refusal::Malformed` or
    /// `Refusal::NotAllowed`) with a message that mentions `mention`.
    fn assert_refused(
        policy: &EndpointPolicy,
        url: &str,
        kind: fn(String) -> Refusal,
        mention: &str,
    ) {
        let refusal = match policy.check_endpoint(url) {
            Ok(()) => panic!("{url} was accepted by {policy:?}"),
            Err(refusal) => refusal,
        };
        assert_eq!(
            std::mem::discriminant(&refusal),
            std::mem::discriminant(&kind(String::new())),
            "{url}: {refusal}"
        );
        assert!(refusal.to_string().contains(mention), "{url}: {refusal}");
    }

    #[test]
    fn the_default_allows_no_endpoint_and_no_unsigned_volume() {
        let aws = EndpointPolicy::aws_only();
        for url in [
            "https://s3.us-west-2.amazonaws.com",
            "https://s3.example.com",
            "http://127.0.0.1:9000",
        ] {
            assert_refused(&aws, url, Refusal::NotAllowed, "AWS S3");
        }
        assert!(matches!(aws.check_unsigned(), Err(Refusal::NotAllowed(_))));
        let entries = ["https://s3.example.com".to_string()];
        assert!(EndpointPolicy::new(&entries, true)
            .unwrap()
            .check_unsigned()
            .is_ok());
        assert!(EndpointPolicy::new(&entries, false)
            .unwrap()
            .check_unsigned()
            .is_err());
    }

    #[test]
    fn listed_endpoints_match_after_normalisation() {
        let p = policy(&[
            "https://s3.example.com",
            "http://127.0.0.1:9000/",
            "https://gw.example.com:8443/s3",
            "https://[2001:db8::5]",
        ]);
        for url in [
            "https://s3.example.com",
            "https://s3.example.com/",
            "https://s3.example.com:443",
            "HTTPS://S3.Example.COM:443/",
            "http://127.0.0.1:9000",
            "http://127.0.0.1:9000/",
            "https://gw.example.com:8443/s3/",
            "https://[2001:db8::5]:443",
        ] {
            assert_eq!(p.check_endpoint(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn endpoints_not_listed_are_refused() {
        let p = policy(&["https://s3.example.com", "http://127.0.0.1:9000"]);
        let cases = [
            // Another host, or a longer name that merely starts or ends like a listed one.
            ("https://s3.example.org", "not one of the endpoints"),
            (
                "https://s3.example.com.evil.test",
                "not one of the endpoints",
            ),
            ("https://evil-s3.example.com", "not one of the endpoints"),
            // Port mismatch, explicit or implied.
            ("https://s3.example.com:8443", "not one of the endpoints"),
            ("http://127.0.0.1:9001", "plain http://"),
            ("http://127.0.0.1", "plain http://"),
            // The listed host over plain http: the scheme is part of the entry.
            ("http://s3.example.com", "plain http://"),
            ("http://s3.example.com:443", "plain http://"),
            // https to the listed http endpoint.
            ("https://127.0.0.1:9000", "not one of the endpoints"),
            // Loopback and private addresses are like any other host.
            ("http://127.0.0.2:9", "plain http://"),
            ("https://127.0.0.1", "not one of the endpoints"),
            ("https://[::1]:9000", "not one of the endpoints"),
            ("http://localhost:9000", "plain http://"),
            ("https://10.0.0.1", "not one of the endpoints"),
            // Another path.
            ("https://s3.example.com/other", "not one of the endpoints"),
        ];
        for (url, mention) in cases {
            assert_refused(&p, url, Refusal::NotAllowed, mention);
        }
    }

    #[test]
    fn metadata_link_local_and_unspecified_hosts_are_never_allowed() {
        let cases = [
            ("http://169.254.169.254", "instance metadata address"),
            (
                "http://169.254.169.254:80/latest/",
                "instance metadata address",
            ),
            ("http://[fd00:ec2::254]", "instance metadata address"),
            ("http://169.254.170.2", "link-local"),
            ("https://169.254.1.1:9000", "link-local"),
            ("http://[fe80::1]", "link-local"),
            ("http://[febf::1]", "link-local"),
            ("http://0.0.0.0:9000", "unspecified"),
            ("http://0.1.2.3", "unspecified"),
            ("http://[::]:9000", "unspecified"),
            (
                "http://[::ffff:169.254.169.254]",
                "instance metadata address",
            ),
            ("http://[::ffff:a9fe:1]", "link-local"),
            ("http://[64:ff9b::a9fe:a9fe]", "instance metadata address"),
            ("http://224.0.0.1", "multicast"),
            ("http://255.255.255.255", "broadcast"),
            ("http://[ff02::1]", "multicast"),
            ("http://instance-data", "metadata host name"),
            ("http://instance-data.ec2.internal/", "metadata host name"),
            ("http://Metadata.Google.Internal.", "metadata host name"),
        ];
        // Listing them does not help: such an entry is refused at start-up.
        for (url, mention) in cases {
            let err = EndpointPolicy::new(&[url.to_string()], false).unwrap_err();
            assert!(matches!(err.reason, Refusal::NotAllowed(_)), "{url}: {err}");
            assert!(err.to_string().contains(mention), "{url}: {err}");
            let listed = policy(&["https://s3.example.com"]);
            assert_refused(&listed, url, Refusal::NotAllowed, mention);
        }
    }

    #[test]
    fn ip_addresses_in_odd_forms_are_refused_even_when_they_mean_a_listed_one() {
        let p = policy(&["http://127.0.0.1:9000", "https://s3.example.com"]);
        // 169.254.169.254 as one decimal, hex or octal number, dotted hex or octal, shortened.
        for url in [
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://025177524776/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://0251.0376.0251.0376/",
            "http://169.254.43518/",
            "http://[::ffff:a9fe:a9fe]/",
        ] {
            assert_refused(&p, url, Refusal::NotAllowed, "metadata");
        }
        let cases = [
            // 127.0.0.1:9000, which is listed, written otherwise.
            "http://0x7f.1:9000",
            "http://127.1:9000",
            "http://2130706433:9000",
            "http://0177.0.0.1:9000",
            "http://127.0.0.1.:9000",
            "http://%31%32%37.0.0.1:9000",
            "http://[0:0:0:0:0:0:0:1]:9000",
            // A listed name, percent-encoded or in full-width letters.
            "https://s3.%65xample.com",
            "https://ｓ3.example.com",
        ];
        for url in cases {
            assert_refused(&p, url, Refusal::Malformed, "canonical form");
        }
        // The same forms as entries are refused too.
        assert!(EndpointPolicy::new(&["http://0x7f.1:9000".to_string()], false).is_err());
    }

    #[test]
    fn urls_that_are_not_plain_endpoints_are_malformed() {
        let p = policy(&["https://s3.example.com"]);
        let cases = [
            ("s3.example.com", "http:// or https://"),
            ("ftp://s3.example.com", "http:// or https://"),
            ("file:///etc/passwd", "http:// or https://"),
            ("https://", "URL"),
            ("https://user:pw@s3.example.com", "user name"),
            ("https://s3.example.com@169.254.169.254", "user name"),
            ("https://s3.example.com\\@169.254.169.254", "backslash"),
            ("https://s3.example.com/?x=1", "query"),
            ("https://s3.example.com/#x", "fragment"),
            ("https://s3.example.com /", "spaces"),
            ("https://s3.example.com:99999", "URL"),
        ];
        for (url, mention) in cases {
            assert_refused(&p, url, Refusal::Malformed, mention);
        }
    }

    #[test]
    fn bad_entries_stop_the_policy_from_being_built_and_empty_ones_are_skipped() {
        for entry in ["s3.example.com", "https://a@b", "http://169.254.169.254"] {
            let err = EndpointPolicy::new(&[entry.to_string()], false).unwrap_err();
            assert_eq!(err.entry, entry);
            assert!(err.to_string().contains("--allowed-endpoints"), "{err}");
        }
        let p = EndpointPolicy::new(
            &[
                "".into(),
                " https://s3.example.com ".into(),
                "https://S3.example.com:443".into(),
            ],
            false,
        )
        .unwrap();
        assert_eq!(p.allowed().len(), 1);
        assert_eq!(p.allowed()[0].to_string(), "https://s3.example.com:443");
    }
}
