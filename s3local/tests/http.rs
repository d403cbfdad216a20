//! The local S3 server over real HTTP, driven by aws-sdk-s3 (SigV4, path-style), plus a raw
//! socket for unsigned requests.

use std::io::{Read, Write};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use md5::{Digest, Md5};
use modelfs_s3local::models::{parse_safetensors_header, SafetensorsReader, SafetensorsSpec};
use modelfs_s3local::{LocalS3, LocalS3Config};

mod common;
use common::{get_object, server, status, BUCKET};

/// A server whose bucket holds `content` under `key`, written straight to its store.
fn server_holding(key: &str, content: &[u8]) -> (tempfile::TempDir, LocalS3) {
    let (root, server) = server();
    server
        .store()
        .put_bytes(BUCKET, key, content)
        .expect("seed");
    (root, server)
}

/// A client for `server` signing with `secret`.
fn client_with_secret(server: &LocalS3, secret: &str) -> Client {
    common::client_for(server, secret, true)
}

fn client(server: &LocalS3) -> Client {
    client_with_secret(server, server.secret_key())
}

fn md5_etag(data: &[u8]) -> String {
    let digest = Md5::digest(data);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

async fn get(client: &Client, key: &str, range: Option<&str>) -> (Vec<u8>, Option<String>) {
    let out = get_object(client, key, range)
        .await
        .unwrap_or_else(|e| panic!("GetObject {key} {range:?}: {e:?}"));
    let content_range = out.content_range().map(str::to_string);
    let body = out
        .body
        .collect()
        .await
        .expect("body")
        .into_bytes()
        .to_vec();
    (body, content_range)
}

/// PutObject of `body` under `key`.
async fn put(
    client: &Client,
    key: &str,
    body: Vec<u8>,
) -> aws_sdk_s3::operation::put_object::PutObjectOutput {
    client
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutObject {key:?}: {e:?}"))
}

/// HeadObject of `key`.
async fn head(
    client: &Client,
    key: &str,
) -> Result<
    aws_sdk_s3::operation::head_object::HeadObjectOutput,
    SdkError<aws_sdk_s3::operation::head_object::HeadObjectError>,
> {
    client.head_object().bucket(BUCKET).key(key).send().await
}

/// Every key in the bucket, in listing order, as the SDK's paginator gathers them.
async fn all_keys(client: &Client) -> Vec<String> {
    client
        .list_objects_v2()
        .bucket(BUCKET)
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("paginate")
        .iter()
        .flat_map(|page| {
            page.contents()
                .iter()
                .map(|o| o.key().unwrap_or_default().to_string())
        })
        .collect()
}

/// The error of a GetObject of `key` that must fail.
async fn get_error(
    client: &Client,
    key: &str,
) -> SdkError<aws_sdk_s3::operation::get_object::GetObjectError> {
    get_object(client, key, None)
        .await
        .expect_err("GetObject must fail")
}

/// DeleteObject of `key`.
async fn delete(client: &Client, key: &str) {
    client
        .delete_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DeleteObject {key:?}: {e:?}"));
}

#[tokio::test]
async fn put_get_head_delete() {
    let (_root, server) = server();
    let client = client(&server);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let put = put(&client, "checkpoints/a.safetensors", data.clone()).await;
    assert_eq!(put.e_tag(), Some(md5_etag(&data).as_str()));

    let (body, range) = get(&client, "checkpoints/a.safetensors", None).await;
    assert_eq!(body, data);
    assert_eq!(range, None);

    let info = head(&client, "checkpoints/a.safetensors")
        .await
        .expect("HeadObject");
    assert_eq!(info.content_length(), Some(data.len() as i64));
    assert_eq!(info.e_tag(), put.e_tag());
    assert_eq!(info.accept_ranges(), Some("bytes"));
    assert!(info.last_modified().is_some());

    let local = server
        .store()
        .head(BUCKET, "checkpoints/a.safetensors")
        .expect("stored");
    assert_eq!(Some(local.etag.as_str()), put.e_tag());

    delete(&client, "checkpoints/a.safetensors").await;
    // Deleting again is fine, as on S3.
    delete(&client, "checkpoints/a.safetensors").await;
    let err = get_error(&client, "checkpoints/a.safetensors").await;
    assert_eq!(status(&err), Some(404));
    assert!(err.into_service_error().is_no_such_key());
    let err = head(&client, "missing").await.expect_err("missing");
    assert_eq!(status(&err), Some(404));
}

#[tokio::test]
async fn list_with_delimiter_and_pagination() {
    let (_root, server) = server();
    let store = server.store();
    // Under "p/": five keys and two common prefixes ("p/x/", "p/y/").
    let keys = [
        "p/a", "p/b", "p/c", "p/d", "p/e", "p/x/1", "p/x/2", "p/y/1", "q/other",
    ];
    for key in keys {
        store.put_bytes(BUCKET, key, key.as_bytes()).expect("seed");
    }
    let client = client(&server);
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = client
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix("p/")
            .delimiter("/")
            .max_keys(2)
            .set_continuation_token(token.clone())
            .send()
            .await
            .expect("ListObjectsV2");
        let mut page: Vec<String> = Vec::new();
        for object in out.contents() {
            let key = object.key().expect("key");
            let meta = store.head(BUCKET, key).expect("listed key exists");
            assert_eq!(object.e_tag(), Some(meta.etag.as_str()), "ETag in listing");
            assert_eq!(object.size(), Some(meta.size as i64));
            assert!(object.last_modified().is_some());
            assert_eq!(
                object.storage_class(),
                Some(&aws_sdk_s3::types::ObjectStorageClass::Standard)
            );
            page.push(key.to_string());
        }
        for prefix in out.common_prefixes() {
            page.push(prefix.prefix().expect("prefix").to_string());
        }
        assert_eq!(out.key_count(), Some(page.len() as i32));
        assert!(page.len() <= 2);
        pages.push(page);
        if out.is_truncated() == Some(true) {
            token = Some(out.next_continuation_token().expect("token").to_string());
        } else {
            assert!(out.next_continuation_token().is_none());
            break;
        }
        assert!(pages.len() < 10, "pagination does not end");
    }
    assert_eq!(
        pages,
        vec![
            vec!["p/a", "p/b"],
            vec!["p/c", "p/d"],
            vec!["p/e", "p/x/"],
            vec!["p/y/"],
        ]
    );

    // The paginator sees the same thing, and a listing without delimiter sees every key.
    assert_eq!(all_keys(&client).await, keys);

    let err = client
        .list_objects_v2()
        .bucket("nope")
        .send()
        .await
        .expect_err("missing bucket");
    assert_eq!(status(&err), Some(404));
    assert_eq!(err.into_service_error().code(), Some("NoSuchBucket"));
}

#[tokio::test]
async fn url_encoded_listing() {
    let (_root, server) = server_holding("sp ace/ü+x.bin", b"x");
    let client = client(&server);
    let out = client
        .list_objects_v2()
        .bucket(BUCKET)
        .encoding_type(aws_sdk_s3::types::EncodingType::Url)
        .send()
        .await
        .expect("ListObjectsV2");
    let key = out.contents()[0].key().expect("key");
    assert_eq!(key, "sp%20ace/%C3%BC%2Bx.bin");
}

#[tokio::test]
async fn ranged_gets() {
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 249) as u8).collect();
    let (_root, server) = server_holding("r", &data);
    server
        .store()
        .put_bytes(BUCKET, "empty", b"")
        .expect("seed");
    let client = client(&server);

    let (body, range) = get(&client, "r", Some("bytes=10-19")).await;
    assert_eq!(body, &data[10..20]);
    assert_eq!(range.as_deref(), Some("bytes 10-19/1000000"));

    let (body, range) = get(&client, "r", Some("bytes=999990-")).await;
    assert_eq!(body, &data[999_990..]);
    assert_eq!(range.as_deref(), Some("bytes 999990-999999/1000000"));

    let (body, range) = get(&client, "r", Some("bytes=-5")).await;
    assert_eq!(body, &data[999_995..]);
    assert_eq!(range.as_deref(), Some("bytes 999995-999999/1000000"));

    let (body, _) = get(&client, "r", Some("bytes=500000-2000000")).await;
    assert_eq!(body, &data[500_000..], "a range past the end is clamped");

    let (body, _) = get(&client, "r", Some("bytes=300000-700000")).await;
    assert_eq!(body, &data[300_000..700_001], "multi-chunk range");

    for (key, range) in [
        ("r", "bytes=1000000-"),
        ("empty", "bytes=0-"),
        ("empty", "bytes=-1"),
    ] {
        let err = get_object(&client, key, Some(range))
            .await
            .expect_err("unsatisfiable");
        assert_eq!(status(&err), Some(416), "{key} {range}");
        assert_eq!(err.into_service_error().code(), Some("InvalidRange"));
    }
    let (body, _) = get(&client, "empty", None).await;
    assert!(body.is_empty());
}

/// A precondition on a GET or HEAD.
#[derive(Clone, Copy)]
enum Condition<'a> {
    IfMatch(&'a str),
    IfNoneMatch(&'a str),
}

/// GetObject of `key` under `condition`, from byte 0 to `range_end` when given.
async fn get_when(
    client: &Client,
    key: &str,
    condition: Condition<'_>,
    range_end: Option<u64>,
) -> Result<
    aws_sdk_s3::operation::get_object::GetObjectOutput,
    SdkError<aws_sdk_s3::operation::get_object::GetObjectError>,
> {
    let request = client.get_object().bucket(BUCKET).key(key);
    let request = match condition {
        Condition::IfMatch(etag) => request.if_match(etag),
        Condition::IfNoneMatch(etag) => request.if_none_match(etag),
    };
    let request = match range_end {
        Some(end) => request.range(format!("bytes=0-{end}")),
        None => request,
    };
    request.send().await
}

/// HeadObject of `key` under `condition`: the status it was refused with, if it was.
async fn head_refused_with(client: &Client, key: &str, condition: Condition<'_>) -> Option<u16> {
    let request = client.head_object().bucket(BUCKET).key(key);
    let request = match condition {
        Condition::IfMatch(etag) => request.if_match(etag),
        Condition::IfNoneMatch(etag) => request.if_none_match(etag),
    };
    request.send().await.err().and_then(|e| status(&e))
}

#[tokio::test]
async fn conditional_gets() {
    let (_root, server) = server();
    let meta = server
        .store()
        .put_bytes(BUCKET, "k", b"version 1")
        .expect("seed");
    let client = client(&server);
    server.reset_stats();

    let ok = get_when(&client, "k", Condition::IfMatch(&meta.etag), Some(6))
        .await
        .expect("matching If-Match");
    assert_eq!(ok.e_tag(), Some(meta.etag.as_str()));
    let unquoted = meta.etag.trim_matches('"').to_string();
    get_when(&client, "k", Condition::IfMatch(&unquoted), None)
        .await
        .expect("unquoted If-Match");

    server
        .store()
        .put_bytes(BUCKET, "k", b"version 2")
        .expect("overwrite");
    let err = get_when(&client, "k", Condition::IfMatch(&meta.etag), None)
        .await
        .expect_err("stale If-Match");
    assert_eq!(status(&err), Some(412));
    assert_eq!(err.into_service_error().code(), Some("PreconditionFailed"));
    assert_eq!(
        head_refused_with(&client, "k", Condition::IfMatch(&meta.etag)).await,
        Some(412),
        "stale If-Match on HEAD"
    );

    let current = server.store().head(BUCKET, "k").expect("head");
    let err = get_when(&client, "k", Condition::IfNoneMatch(&current.etag), None)
        .await
        .expect_err("If-None-Match on the current version");
    assert_eq!(status(&err), Some(304));
    let headers = err.raw_response().expect("response").headers();
    assert_eq!(headers.get("etag"), Some(current.etag.as_str()));
    assert!(headers.get("last-modified").is_some());
    assert_eq!(
        head_refused_with(&client, "k", Condition::IfNoneMatch(&current.etag)).await,
        Some(304),
        "If-None-Match on HEAD"
    );

    let stats = server.stats();
    assert_eq!(stats.precondition_failed, 2);
    assert_eq!(stats.get_object, 4);
    assert_eq!(stats.head_object, 2);
    assert_eq!(stats.bytes_sent, 7 + 9, "only served bodies count");
}

#[tokio::test]
async fn weird_keys_round_trip() {
    let (_root, server) = server();
    let client = client(&server);
    let long = format!("long/{}.safetensors", "x".repeat(300));
    let keys = [
        "a",
        "a/b",
        "a//b",
        "../x",
        "./y",
        "sp ace/ü.safetensors",
        "q?uery#frag&amp=+%20.bin",
        long.as_str(),
    ];
    for (i, key) in keys.iter().enumerate() {
        put(&client, key, format!("content {i}").into_bytes()).await;
    }
    for (i, key) in keys.iter().enumerate() {
        let (body, _) = get(&client, key, None).await;
        assert_eq!(body, format!("content {i}").as_bytes(), "{key:?}");
        assert_eq!(
            server
                .store()
                .get_bytes(BUCKET, key)
                .expect("stored under the exact key"),
            format!("content {i}").as_bytes()
        );
    }
    let mut expected: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    expected.sort();
    assert_eq!(all_keys(&client).await, expected);
}

#[tokio::test]
async fn bad_signatures_are_rejected() {
    let (_root, server) = server_holding("k", b"secret");
    let wrong = client_with_secret(&server, "not-the-secret");
    let err = get_error(&wrong, "k").await;
    assert_eq!(status(&err), Some(403));
    assert_eq!(
        err.into_service_error().code(),
        Some("SignatureDoesNotMatch")
    );

    // No signature at all.
    let addr = server.local_addr();
    let response = tokio::task::spawn_blocking(move || {
        let mut socket = std::net::TcpStream::connect(addr).expect("connect");
        write!(
            socket,
            "GET /{BUCKET}/k HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut response = String::new();
        socket.read_to_string(&mut response).expect("read");
        response
    })
    .await
    .expect("raw request");
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(!response.contains("secret\r\n"), "no content leaks");
}

#[tokio::test]
async fn buckets_over_http() {
    let (_root, server) = server();
    let client = client(&server);
    client
        .create_bucket()
        .bucket("second")
        .send()
        .await
        .expect("CreateBucket");
    assert!(server.store().bucket_exists("second"));
    client
        .head_bucket()
        .bucket("second")
        .send()
        .await
        .expect("HeadBucket");
    let names: Vec<String> = client
        .list_buckets()
        .send()
        .await
        .expect("ListBuckets")
        .buckets()
        .iter()
        .map(|b| b.name().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, [BUCKET, "second"]);
    let err = client
        .head_bucket()
        .bucket("missing")
        .send()
        .await
        .expect_err("missing");
    assert_eq!(status(&err), Some(404));
    client
        .delete_bucket()
        .bucket("second")
        .send()
        .await
        .expect("DeleteBucket");
    assert!(!server.store().bucket_exists("second"));
}

#[tokio::test]
async fn large_generated_model_streams_and_counts() {
    let (_root, server) = server();
    let spec = SafetensorsSpec::new(11, 24 << 20);
    let meta = server
        .store()
        .put_from_reader(
            BUCKET,
            "checkpoints/big.safetensors",
            SafetensorsReader::new(&spec),
        )
        .expect("seed");
    let source = std::fs::read(
        server
            .store()
            .data_path(BUCKET, "checkpoints/big.safetensors")
            .expect("path"),
    )
    .expect("read source");
    assert_eq!(source.len() as u64, meta.size);
    assert_eq!(md5_etag(&source), meta.etag);

    let client = client(&server);
    server.reset_stats();
    let (body, _) = get(&client, "checkpoints/big.safetensors", None).await;
    assert!(body == source, "GET returns the stored bytes");
    let header = parse_safetensors_header(&body).expect("valid safetensors");
    assert_eq!(header.data_len(), 24 << 20);
    let (tail, _) = get(
        &client,
        "checkpoints/big.safetensors",
        Some("bytes=-1048576"),
    )
    .await;
    assert!(tail == source[source.len() - (1 << 20)..]);
    let stats = server.stats();
    assert_eq!(stats.get_object, 2);
    assert_eq!(stats.bytes_sent, meta.size + (1 << 20));
    assert_eq!(stats.put_object, 0);
}

#[tokio::test]
async fn objects_survive_a_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let etag = {
        let server = LocalS3::start(LocalS3Config::new(root.path())).expect("start");
        server.store().create_bucket(BUCKET).expect("bucket");
        let out = put(&client(&server), "a//b", b"persistent".to_vec()).await;
        out.e_tag().expect("etag").to_string()
    };
    let server = LocalS3::start(LocalS3Config::new(root.path())).expect("restart");
    let client = client(&server);
    let out = head(&client, "a//b").await.expect("head after restart");
    assert_eq!(out.e_tag(), Some(etag.as_str()));
    let (body, _) = get(&client, "a//b", None).await;
    assert_eq!(body, b"persistent");
}

#[test]
fn usable_from_plain_tests() {
    let (_root, server) = server_holding("k", b"v");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = client(&server);
    let body = runtime.block_on(async {
        let out = get_object(&client, "k", None).await.expect("get");
        out.body.collect().await.expect("body").into_bytes()
    });
    assert_eq!(&body[..], b"v");
    assert_eq!(server.stats().get_object, 1);
}

/// `cpu_seconds` counts what serving costs the server's threads, and not the client's CPU in
/// the same process: a client spinning for a second adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_seconds_counts_the_servers_threads_only() {
    let content = vec![7u8; 256 << 20];
    let (_root, server) = server_holding("big.bin", &content);
    let client = client(&server);
    let cpu = || server.cpu_seconds().expect("the clock rate");
    let before = cpu();
    for _ in 0..4 {
        let (body, _) = get(&client, "big.bin", None).await;
        assert_eq!(body.len(), content.len());
    }
    let served = cpu() - before;
    assert!(served > 0.0, "1 GiB served for {served} CPU-s");

    let before = cpu();
    let started = std::time::Instant::now();
    let mut x = 0u64;
    while started.elapsed() < std::time::Duration::from_secs(1) {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    let idle = cpu() - before;
    assert!(idle < 0.1, "{idle} CPU-s counted while only the client ran");
}
