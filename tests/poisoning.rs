//! Cache poisoning across endpoints: a mount through an endpoint that answers with the real
//! listing, sizes and ETags but other bytes must not place those bytes where a mount of the
//! real endpoint, sharing the node's cache directory, looks them up.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::mount::mount_with_cache;
use common::s3::{Endpoint, LocalServer};

const BUCKET: &str = "models";

/// A TCP proxy on loopback in front of an S3 endpoint that passes every request and every
/// response head through untouched (status, ETag, Content-Length, listings) and flips the
/// bits of GetObject bodies. One request per connection: it asks the upstream to close
/// after each answer, so a body ends where the connection does.
struct FlippingProxy {
    url: String,
    flipped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl FlippingProxy {
    fn start(upstream: &str) -> FlippingProxy {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http endpoint")
            .trim_end_matches('/')
            .to_string();
        assert!(
            upstream.starts_with("127.0.0.1:"),
            "loopback only: {upstream}"
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let flipped = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (flipped.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if halt.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let (upstream, count) = (upstream.clone(), count.clone());
                std::thread::spawn(move || {
                    let _ = relay(client, &upstream, &count);
                });
            }
        });
        FlippingProxy { url, flipped, stop }
    }

    /// Bytes flipped so far.
    fn flipped(&self) -> u64 {
        self.flipped.load(Ordering::Relaxed)
    }
}

impl Drop for FlippingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

/// Reads an HTTP head (up to the blank line) as lines.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            return Ok(lines);
        }
        lines.push(line);
    }
}

fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn relay(client: TcpStream, upstream: &str, flipped: &AtomicU64) -> std::io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let request = read_head(&mut from_client)?;
    let mut server = TcpStream::connect(upstream)?;
    let mut out = String::new();
    for line in &request {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    server.write_all(out.as_bytes())?;
    let body_len: u64 = header(&request, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::io::copy(&mut (&mut from_client).take(body_len), &mut server)?;

    // A GET of an object (not a bucket listing, which is a GET of `/bucket?list-type=2`).
    let target = request[0].split(' ').nth(1).unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    let key = path
        .trim_start_matches('/')
        .split_once('/')
        .map_or("", |(_bucket, key)| key);
    let object_get = request[0].starts_with("GET ") && !key.is_empty();

    let mut from_server = BufReader::new(server);
    let response = read_head(&mut from_server)?;
    let chunked = header(&response, "transfer-encoding").is_some();
    let mut head = response
        .iter()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .fold(String::new(), |acc, l| acc + l + "\r\n");
    head.push_str("Connection: close\r\n\r\n");
    to_client.write_all(head.as_bytes())?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = from_server.read(&mut buf)?;
        if n == 0 {
            break;
        }
        // Chunk framing would break if flipped; the local server sends object bodies with
        // a Content-Length, and the test checks that bytes were flipped.
        if object_get && !chunked {
            for b in &mut buf[..n] {
                *b ^= 0x5A;
            }
            flipped.fetch_add(n as u64, Ordering::Relaxed);
        }
        to_client.write_all(&buf[..n])?;
    }
    to_client.flush()
}

#[test]
fn bytes_from_another_endpoint_never_reach_a_mount_of_the_real_one() {
    let server = LocalServer::start(BUCKET);
    let real = common::pseudo_random(20, (3 << 20) + 12345);
    server.seed("m/unet/model.safetensors", &real);
    let cache = tempfile::tempdir().expect("cache");
    let cache_dir = cache.path().join("c");

    // The pod author's mount: their endpoint, the node's cache directory.
    let proxy = FlippingProxy::start(&server.endpoint.url);
    let evil = Endpoint {
        url: proxy.url.clone(),
        ..server.endpoint.clone()
    };
    let mut theirs = mount_with_cache(&evil, &cache_dir, "1GiB", &[]);
    let served = std::fs::read(theirs.join("unet/model.safetensors")).expect("read via proxy");
    theirs.unmount();
    assert_eq!(served.len(), real.len(), "the proxy keeps sizes");
    assert!(proxy.flipped() > 0, "the proxy altered no body");
    assert!(
        served != real,
        "the proxy's mount should have got other bytes"
    );

    // The real mount, sharing the cache directory, must read the real bytes.
    let mut ours = mount_with_cache(&server.endpoint, &cache_dir, "1GiB", &[]);
    let got = std::fs::read(ours.join("unet/model.safetensors")).expect("read");
    ours.unmount();
    assert_eq!(got.len(), real.len());
    assert!(
        got == real,
        "the real endpoint's mount read bytes another endpoint placed in the shared cache"
    );
}
