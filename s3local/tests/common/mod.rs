//! Helpers shared by the server's wire tests: an aws-sdk-s3 client for a server, and the
//! status of a refused request.

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::Client;
use modelfs_s3local::LocalS3;

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

/// The HTTP status of a failed request, when it got a response.
pub fn status<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}
