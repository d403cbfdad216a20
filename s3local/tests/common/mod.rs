//! Helpers shared by the server's wire tests: a server with one bucket, an aws-sdk-s3 client
//! for it, a GetObject, and the status of a refused request.

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::get_object::{GetObjectError, GetObjectOutput};
use aws_sdk_s3::Client;
use modelfs_s3local::{LocalS3, LocalS3Config};

/// The bucket every test server has.
pub const BUCKET: &str = "models";

/// A server with the empty bucket [`BUCKET`], and its temporary root (the server's files go
/// when it is dropped).
pub fn server() -> (tempfile::TempDir, LocalS3) {
    let root = tempfile::tempdir().expect("tempdir");
    let server = LocalS3::start(LocalS3Config::new(root.path())).expect("start");
    server.store().create_bucket(BUCKET).expect("bucket");
    (root, server)
}

/// A path-style client for `server`, signing with `secret`; with `retries` off each call is
/// exactly one request.
pub fn client_for(server: &LocalS3, secret: &str, retries: bool) -> Client {
    let builder = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(server.endpoint_url())
        .region(Region::new(server.region().to_string()))
        .credentials_provider(Credentials::new(
            server.access_key(),
            secret,
            None,
            None,
            "test",
        ))
        .force_path_style(true);
    let builder = if retries {
        builder
    } else {
        builder.retry_config(RetryConfig::disabled())
    };
    Client::from_conf(builder.build())
}

/// GetObject of `key` in [`BUCKET`]; of the bytes `range` (an HTTP `Range` value) selects,
/// when given.
pub async fn get_object(
    client: &Client,
    key: &str,
    range: Option<&str>,
) -> Result<GetObjectOutput, SdkError<GetObjectError>> {
    client
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .set_range(range.map(str::to_string))
        .send()
        .await
}

/// The HTTP status of a failed request, when it got a response.
pub fn status<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}
