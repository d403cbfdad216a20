//! Injected faults as a client sees them on the wire: aws-sdk-s3 with its retries off, so
//! every request shows exactly what the server answered.

use std::time::{Duration, Instant};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::Client;
use modelfs_s3local::faults::Op;
use modelfs_s3local::{Fault, LocalS3, Rule};

mod common;
use common::{status, BUCKET};

const KEY: &str = "m/model.safetensors";
/// Larger than the server's 256 KiB read chunk, so cuts land inside and between chunks.
const LEN: usize = 700_000;

fn data() -> Vec<u8> {
    (0..LEN).map(|i| (i * 31 % 253) as u8).collect()
}

/// A server holding [`data`] under [`KEY`].
fn server() -> (tempfile::TempDir, LocalS3) {
    let (root, server) = common::server();
    server
        .store()
        .put_bytes(BUCKET, KEY, &data())
        .expect("seed");
    (root, server)
}

/// A client that never retries, so each call is one request.
fn client(server: &LocalS3) -> Client {
    common::client_for(server, server.secret_key(), false)
}

/// [`server`] and a [`client`] of it.
fn server_and_client() -> (tempfile::TempDir, LocalS3, Client) {
    let (root, server) = server();
    let client = client(&server);
    (root, server, client)
}

/// What one GetObject of `range` brought: the announced length, the body bytes (with the
/// time each chunk arrived) and whether the body ended with an error.
struct Got {
    content_length: Option<i64>,
    bytes: Vec<u8>,
    chunk_times: Vec<(usize, Instant)>,
    body_error: bool,
}

async fn get(client: &Client, range: Option<&str>) -> Result<Got, SdkError<GetObjectError>> {
    let out = common::get_object(client, KEY, range).await?;
    let content_length = out.content_length();
    let mut body = out.body;
    let mut got = Got {
        content_length,
        bytes: Vec::new(),
        chunk_times: Vec::new(),
        body_error: false,
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(30), body.next()).await {
            Err(_) => panic!("body hung"),
            Ok(None) => break,
            Ok(Some(Ok(chunk))) => {
                got.chunk_times.push((got.bytes.len(), Instant::now()));
                got.bytes.extend_from_slice(&chunk);
            }
            Ok(Some(Err(_))) => {
                got.body_error = true;
                break;
            }
        }
    }
    Ok(got)
}

/// One GetObject of `range` with `fault` injected, by a new client (returned with what it
/// got): after a wrong Content-Length the server closes the connection rather than send the
/// rest, so the next request needs a connection of its own.
async fn get_by_new_client(server: &LocalS3, fault: Fault, range: Option<&str>) -> (Client, Got) {
    let client = client(server);
    server.faults().set([Rule::get(fault).next(1)]);
    let got = get(&client, range).await.expect("get");
    (client, got)
}

#[tokio::test]
async fn status_faults_answer_500_503_and_412_then_stop() {
    let (_root, server, client) = server_and_client();
    let faults = server.faults();
    faults.set([
        Rule::get(Fault::InternalError).next(1),
        Rule::get(Fault::SlowDown).next(1),
        Rule::get(Fault::PreconditionFailed).next(1),
    ]);
    let mut answers = Vec::new();
    for _ in 0..3 {
        let err = get(&client, None).await.err().expect("a fault");
        answers.push((status(&err), err.code().map(str::to_string)));
    }
    assert_eq!(
        answers,
        [
            (Some(500), Some("InternalError".into())),
            (Some(503), Some("SlowDown".into())),
            (Some(412), Some("PreconditionFailed".into())),
        ]
    );
    let ok = get(&client, None).await.expect("no fault left");
    assert!(ok.bytes == data() && !ok.body_error);
    let stats = faults.stats();
    assert_eq!(
        (
            stats.internal_error,
            stats.slow_down,
            stats.precondition_failed
        ),
        (1, 1, 1)
    );
    assert_eq!(server.stats().get_object, 4);
    assert_eq!(server.stats().precondition_failed, 1);

    // HEAD and LIST take status faults too.
    faults.set([
        Rule::new(Op::HeadObject, Fault::InternalError).next(1),
        Rule::new(Op::ListObjectsV2, Fault::SlowDown).next(1),
    ]);
    let err = client
        .head_object()
        .bucket(BUCKET)
        .key(KEY)
        .send()
        .await
        .expect_err("HEAD fault");
    assert_eq!(status(&err), Some(500));
    let err = client
        .list_objects_v2()
        .bucket(BUCKET)
        .send()
        .await
        .expect_err("LIST fault");
    assert_eq!(status(&err), Some(503));
    assert_eq!(err.code(), Some("SlowDown"));
    assert!(client
        .head_object()
        .bucket(BUCKET)
        .key(KEY)
        .send()
        .await
        .is_ok());
    assert_eq!(faults.stats().total(), 5);
}

#[tokio::test]
async fn a_reset_or_a_truncated_body_breaks_off_after_the_cut() {
    let (_root, server, client) = server_and_client();
    let data = data();
    for (fault, cut) in [
        (Fault::Reset { after: 0 }, 0),
        (Fault::Reset { after: 100_000 }, 100_000),
        (Fault::Reset { after: 262_144 }, 262_144),
        (Fault::Truncate { after: 300_001 }, 300_001),
        (Fault::Truncate { after: 10 << 20 }, LEN - 1),
    ] {
        server.faults().set([Rule::get(fault).next(1)]);
        let got = get(&client, None).await.expect("headers arrive");
        assert_eq!(got.content_length, Some(LEN as i64), "{fault:?}");
        assert!(got.body_error, "{fault:?}: the client sees a broken body");
        assert_eq!(got.bytes.len(), cut, "{fault:?}");
        assert!(got.bytes == data[..cut], "{fault:?}: bytes before the cut");
    }
    let stats = server.faults().stats();
    assert_eq!((stats.reset, stats.truncated), (3, 2));
}

#[tokio::test]
async fn a_stalled_body_pauses_then_completes() {
    let (_root, server, client) = server_and_client();
    let pause = Duration::from_millis(1500);
    server
        .faults()
        .set([Rule::get(Fault::Stall { after: 4096, pause }).next(1)]);
    let got = get(&client, Some("bytes=1000-500999")).await.expect("get");
    assert!(!got.body_error);
    assert!(
        got.bytes == data()[1000..501_000],
        "every byte after the pause"
    );
    let gap = got
        .chunk_times
        .windows(2)
        .find(|w| w[1].0 >= 4096)
        .map(|w| w[1].1 - w[0].1)
        .expect("a chunk after the cut");
    assert!(gap >= pause - Duration::from_millis(50), "gap {gap:?}");
    assert_eq!(server.faults().stats().stalled, 1);
}

#[tokio::test]
async fn content_length_disagreeing_with_the_body_and_extra_bytes() {
    let (_root, server) = server();
    let data = data();
    let range = Some("bytes=0-299999");

    // Header short of the body: a well-formed response 1000 bytes short of the range.
    let fault = Fault::ContentLength { delta: -1000 };
    let (_, got) = get_by_new_client(&server, fault, range).await;
    assert_eq!(got.content_length, Some(299_000));
    assert!(!got.body_error);
    assert!(got.bytes == data[..299_000]);

    // Header past the body: the body ends before what the header promised.
    let fault = Fault::ContentLength { delta: 1000 };
    let (_, got) = get_by_new_client(&server, fault, range).await;
    assert_eq!(got.content_length, Some(301_000));
    assert!(got.body_error, "the connection closes short of the header");
    assert!(got.bytes == data[..300_000]);

    // Bytes past the range, announced.
    let fault = Fault::ExtraBytes { extra: 77 };
    let (client, got) = get_by_new_client(&server, fault, range).await;
    assert_eq!(got.content_length, Some(300_077));
    assert!(!got.body_error);
    assert_eq!(got.bytes.len(), 300_077);
    assert!(got.bytes[..300_000] == data[..300_000]);

    // And the same client goes on working.
    let got = get(&client, range).await.expect("get");
    assert!(got.bytes == data[..300_000] && !got.body_error);
    let stats = server.faults().stats();
    assert_eq!((stats.content_length, stats.extra_bytes), (2, 1));
}

#[tokio::test]
async fn listings_come_in_pages_of_the_forced_size() {
    let (_root, server, client) = server_and_client();
    for i in 0..10 {
        server
            .store()
            .put_bytes(BUCKET, &format!("many/{i:02}"), b"x")
            .expect("seed");
    }
    server.faults().set_list_page_size(Some(3));
    let mut keys = Vec::new();
    let mut pages = 0;
    let mut token = None;
    loop {
        let out = client
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix("many/")
            .set_continuation_token(token.take())
            .send()
            .await
            .expect("list");
        pages += 1;
        assert!(out.contents().len() <= 3);
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
        match out.next_continuation_token() {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
        assert!(pages < 20, "listing does not end");
    }
    assert_eq!(pages, 4);
    let want: Vec<String> = (0..10).map(|i| format!("many/{i:02}")).collect();
    assert_eq!(keys, want);
    assert_eq!(server.faults().stats().short_pages, 4);
}

#[tokio::test]
async fn rates_inject_the_seeded_share_of_requests() {
    let (_root, server, client) = server_and_client();
    let faults = server.faults();
    faults.set_seed(42);
    faults.set([Rule::get(Fault::SlowDown).rate(0.25)]);
    let mut failed = 0;
    for _ in 0..200 {
        match get(&client, Some("bytes=0-99")).await {
            Err(err) => {
                assert_eq!(status(&err), Some(503));
                failed += 1;
            }
            Ok(got) => assert!(got.bytes == data()[..100]),
        }
    }
    assert_eq!(faults.stats().slow_down, failed);
    assert!((25..=75).contains(&failed), "{failed} of 200 at 25%");
    faults.clear();
    assert!(get(&client, None).await.is_ok());
}
