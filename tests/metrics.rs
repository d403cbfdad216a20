//! The Prometheus endpoint of a real mount reports what happened.

mod common;

use common::mount::Mount;
use common::s3::LocalServer;

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

/// What a Prometheus text-format parser needs: each family described once, before its samples,
/// and every sample a family's series with a number.
fn assert_well_formed(body: &str) {
    let mut families: Vec<&str> = Vec::new();
    for line in body.lines() {
        if let Some(described) = line.strip_prefix("# TYPE ") {
            let name = described.split(' ').next().unwrap_or_default();
            assert!(!families.contains(&name), "{name} described twice:\n{body}");
            families.push(name);
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            let name = series.split('{').next().unwrap_or_default();
            assert!(
                families.iter().any(|f| name
                    .strip_prefix(f)
                    .is_some_and(|rest| ["", "_bucket", "_sum", "_count"].contains(&rest))),
                "{name} has no # TYPE before it:\n{body}"
            );
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}

#[test]
fn metrics_count_s3_requests_cache_tiers_and_fuse_reads() {
    let server = LocalServer::start("models");
    let data = common::pseudo_random(8, 5 << 20);
    server
        .store()
        .put_bytes("models", "m/loras/a.safetensors", &data)
        .expect("seed");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cache = tempfile::tempdir().expect("cache");
    let mut m = Mount::new(
        &server.endpoint,
        "s3://models/m",
        &[
            "--metrics-addr",
            &addr,
            "--cache-dir",
            cache.path().to_str().expect("utf-8"),
            "--cache-size",
            "1GiB",
        ],
    );
    assert!(std::fs::read(m.join("loras/a.safetensors")).expect("read") == data);
    let text = common::scrape_metrics(&addr);
    m.unmount();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ncontent-type: text/plain; version=0.0.4"),
        "Prometheus text format: {head}"
    );
    assert_well_formed(body);
    let gets = value(
        &text,
        "modelfs_s3_requests_total{op=\"GetObject\",result=\"ok\"}",
    );
    assert_eq!(
        gets as u64,
        server.server.stats().get_object,
        "every GET counted once"
    );
    assert_eq!(value(&text, "modelfs_s3_bytes_total") as usize, data.len());
    assert!(value(&text, "modelfs_fuse_requests_total{op=\"read\"}") > 0.0);
    assert!(value(&text, "modelfs_cache_writes_total{tier=\"disk\"}") >= 5.0);
    assert!(
        value(
            &text,
            "modelfs_s3_request_seconds_count{op=\"ListObjectsV2\"}"
        ) >= 1.0
    );
}
