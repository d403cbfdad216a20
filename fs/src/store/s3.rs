//! [`ObjectStore`] over `aws-sdk-s3`: credentials from the standard AWS chain, any
//! S3-compatible endpoint, errors classified into [`StoreError`].

use std::future::Future;
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, IdentityCache, Region, SharedCredentialsProvider};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::TryFutureExt;

use super::throttle::Throttles;
use super::{
    ChecksumHeaders, FullObjectChecksum, ListPage, ObjectInfo, ObjectStore, ObjectVersion,
    RangeSink, ReplaceableCredentials, StoreError, StoreOrigin,
};
use crate::metrics::metrics;

/// How to reach the bucket.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// The bucket name.
    pub bucket: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); `None` means AWS S3.
    pub endpoint_url: Option<String>,
    /// The region; `None` takes it from the environment/profile chain.
    pub region: Option<String>,
    /// Address the bucket in the path (`endpoint/bucket/key`) instead of the host name.
    pub force_path_style: bool,
    /// Send unsigned requests (public buckets); no credentials are looked up.
    pub no_sign_request: bool,
    /// How long one attempt of a request waits for its response headers (connecting
    /// included) before it is abandoned and tried again; see
    /// [`S3Config::max_wait_without_answer`].
    pub first_byte_timeout: Duration,
    /// Credentials given by the caller (a pod's, exchanged by the CSI plugin); `None` takes
    /// them from the standard chain.
    pub credentials: Option<ReplaceableCredentials>,
}

impl Default for S3Config {
    fn default() -> S3Config {
        S3Config {
            bucket: String::new(),
            endpoint_url: None,
            region: None,
            force_path_style: false,
            no_sign_request: false,
            first_byte_timeout: S3Config::DEFAULT_FIRST_BYTE_TIMEOUT,
            credentials: None,
        }
    }
}

impl S3Config {
    /// Default of [`S3Config::first_byte_timeout`]. S3 answers in milliseconds; an endpoint
    /// silent for 5 s is more likely gone than slow, and the bound below grows with it.
    pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(5);

    /// The longest one operation (a ranged read, a HEAD, a listing page) waits on an endpoint
    /// that accepts connections and never answers before it fails with
    /// [`StoreError::NoAnswer`]: each of the SDK's three attempts waits the
    /// first-byte timeout, with the SDK's backoff between them, and modelfs' own rounds do
    /// not start again after an unanswered round. 3 × 5 s + (1 s + 2 s) = 18 s by default.
    pub fn max_wait_without_answer(&self) -> Duration {
        first_byte_timeout(self.first_byte_timeout) * MAX_ATTEMPTS + sdk_backoff_ceiling()
    }
}

/// The real object store: one `aws-sdk-s3` client for one bucket.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: Client,
    bucket: String,
    endpoint: String,
    /// The endpoint actually addressed, normalized (caches key blocks by it).
    origin: StoreOrigin,
    stall_timeout: Duration,
    /// As configured (for error messages; the SDK client enforces it).
    first_byte_timeout: Duration,
    /// Throttling answers to this store's requests, counted by the client.
    throttles: Throttles,
}

/// Connect timeout (or the first-byte timeout, if shorter: that one counts the connecting
/// too): an unreachable endpoint must fail a mount quickly, not hang it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a ListObjectsV2 page's body may take after its headers: the SDK reads that body
/// within the attempt, so one attempt may take the first-byte timeout plus this. (A
/// GetObject body is handed over unread and guarded by the stall timeout; HEAD has none.)
const LISTING_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// The SDK's backoff before its second attempt is at most this, doubling for each further
/// one (standard mode, full jitter): ≤ 1 s, then ≤ 2 s.
const SDK_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Attempts per request inside the SDK, which backs off exponentially with full jitter
/// between them (up to 1 s, then 2 s). Standard mode, not adaptive: adaptive mode's client-side
/// rate limiter charges 5 tokens per retry and, after a few `SlowDown`s at the modest request
/// rates of a filesystem, refills at 0.5 tokens/s, i.e. one retry per 10 s for the whole
/// mount: reads that took 0.5 s took 40 s with 30% of GETs throttled (tests/faults.rs).
const MAX_ATTEMPTS: u32 = 3;
/// Attempts of one operation around the SDK's own: a ranged read is tried again when its body
/// fails after the response started (reset connection, truncated, stalled or mis-sized body),
/// which the SDK does not retry, and every operation when the service still answers with an
/// error worth retrying (5xx, throttling) after the SDK's attempts; never after a round that
/// got no answer at all. At most `OUTER_ATTEMPTS × MAX_ATTEMPTS` requests per operation.
const OUTER_ATTEMPTS: u32 = 4;
/// Default of [`S3Store::with_stall_timeout`]: a response body that sends nothing for this
/// long is abandoned and retried.
const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts one request in the metrics, by outcome.
fn record(op: &'static str, started: Instant, error: Option<&StoreError>) {
    let result = match error {
        None => "ok",
        Some(StoreError::NotFound { .. }) => "not_found",
        Some(StoreError::NoSuchBucket { .. }) => "no_such_bucket",
        Some(StoreError::PreconditionFailed { .. }) => "precondition_failed",
        Some(StoreError::AccessDenied { .. }) => "access_denied",
        Some(StoreError::Unreachable { .. }) => "unreachable",
        Some(StoreError::NoAnswer { .. }) => "no_answer",
        Some(StoreError::ShortBody { .. }) => "short_body",
        Some(StoreError::Interrupted { .. }) => "interrupted",
        Some(StoreError::ServerError { .. }) => "server_error",
        Some(StoreError::Other { .. }) => "other",
    };
    metrics().s3_request(op, result, started.elapsed());
}

/// The first-byte timeout in force for `configured` (at least 1 ms; the SDK rejects zero).
fn first_byte_timeout(configured: Duration) -> Duration {
    configured.max(Duration::from_millis(1))
}

/// The most the SDK sleeps between its attempts of one request, all together:
/// `SDK_INITIAL_BACKOFF × (1 + 2 + … + 2^(MAX_ATTEMPTS − 2))`.
fn sdk_backoff_ceiling() -> Duration {
    SDK_INITIAL_BACKOFF * ((1 << (MAX_ATTEMPTS - 1)) - 1)
}

/// Exponential backoff with full jitter: up to 200 ms, 400 ms, 800 ms… capped at 5 s.
fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(100 << attempt.min(6)).min(Duration::from_secs(5));
    ceiling.mul_f64(rand::random::<f64>())
}

impl S3Store {
    /// Builds a client from the standard AWS configuration chain (environment, profile,
    /// web identity / IRSA, EKS Pod Identity, IMDS) plus the overrides in `config`.
    pub async fn connect(config: &S3Config) -> S3Store {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if config.no_sign_request {
            loader = loader.no_credentials();
        }
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        if let Some(credentials) = &config.credentials {
            // Read from memory on every request, so a replacement applies at once.
            loader = loader
                .credentials_provider(SharedCredentialsProvider::new(credentials.clone()))
                .identity_cache(IdentityCache::no_cache());
        }
        let shared = loader.load().await;
        let first_byte = first_byte_timeout(config.first_byte_timeout);
        // The HTTP client's read timeout runs from sending the request (connecting included)
        // to the response headers: our first-byte timeout, retried by the SDK as transient.
        let throttles = Throttles::default();
        let s3_config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.force_path_style)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT.min(first_byte))
                    .read_timeout(first_byte)
                    .operation_attempt_timeout(first_byte + LISTING_BODY_TIMEOUT)
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(SDK_INITIAL_BACKOFF),
            )
            .interceptor(throttles.clone())
            .build();
        let endpoint = config
            .endpoint_url
            .clone()
            .unwrap_or_else(|| "AWS S3".to_string());
        let origin = StoreOrigin::new(
            &origin_endpoint(
                config.endpoint_url.as_deref().or(shared.endpoint_url()),
                s3_config.region().map(|r| r.as_ref()),
            ),
            config.force_path_style,
            &config.bucket,
        );
        S3Store {
            client: Client::from_conf(s3_config),
            bucket: config.bucket.clone(),
            endpoint,
            origin,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            first_byte_timeout: first_byte,
            throttles,
        }
    }

    /// The same store, abandoning (and retrying) a response body that sends nothing for
    /// `timeout` (default 10 s; at least 1 ms).
    pub fn with_stall_timeout(mut self, timeout: Duration) -> S3Store {
        self.stall_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Runs one operation (`once`, which makes one SDK call) until it succeeds, fails for a
    /// reason that `retry` says trying again cannot fix, or [`OUTER_ATTEMPTS`] are spent, with
    /// a jittered backoff between attempts. Each attempt is counted in the metrics.
    async fn with_retries<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        retry: fn(&StoreError) -> bool,
        mut once: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let result = once().await;
            record(op, started, result.as_ref().err());
            match result {
                Err(e) if retry(&e) && attempt < OUTER_ATTEMPTS => {
                    metrics().s3_retry();
                    let pause = backoff(attempt);
                    tracing::debug!(op, key, attempt, ?pause, "retrying: {e}");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// One ranged GET: the request (retried by the SDK), then the body, read chunk by chunk
    /// with a stall timeout, handed to `sink` (see [`ObjectStore::get_range_into`]) and
    /// checked for length.
    async fn get_range_once(
        &self,
        version: &ObjectVersion,
        range: Range<u64>,
        sink: &Mutex<&mut RangeSink<'_>>,
    ) -> Result<(), StoreError> {
        let (key, if_match) = (&*version.key, &*version.etag);
        let expected = range.end - range.start;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .if_match(if_match)
            .send()
            .await
            .map_err(|e| match self.classify(e, "GetObject", key) {
                StoreError::PreconditionFailed { key, .. } => StoreError::PreconditionFailed {
                    key,
                    etag: if_match.to_string(),
                },
                other => other,
            })?;
        let interrupted = |message: String| StoreError::Interrupted {
            key: key.to_string(),
            range: (range.start, range.end),
            message,
        };
        let short = |received: u64| StoreError::ShortBody {
            key: key.to_string(),
            expected,
            received,
        };
        let mut body = out.body;
        let mut received = 0u64;
        let stall = self.stall_timeout;
        loop {
            match tokio::time::timeout(stall, body.next()).await {
                Err(_) => return Err(interrupted(format!("no data for {stall:?}"))),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(interrupted(error_chain(&e))),
                Ok(Some(Ok(chunk))) => {
                    let at = range.start + received;
                    received += chunk.len() as u64;
                    if received > expected {
                        return Err(short(received));
                    }
                    let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
                    (*sink)(at, &chunk)?;
                }
            }
        }
        if received != expected {
            return Err(short(received));
        }
        Ok(())
    }

    /// Turns an SDK error into a [`StoreError`] that says what to do about it.
    fn classify<E>(&self, err: SdkError<E, HttpResponse>, operation: &str, key: &str) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                let message = error_chain(&err);
                let timed_out = match &err {
                    SdkError::DispatchFailure(failure) => failure.is_timeout(),
                    _ => true,
                };
                if message.contains("credential") {
                    return StoreError::AccessDenied {
                        code: "NoCredentials".into(),
                        message: format!(
                            "no AWS credentials found (environment, profile, web identity, \
                             Pod Identity, instance metadata): {message}"
                        ),
                    };
                }
                if timed_out {
                    return StoreError::NoAnswer {
                        endpoint: self.endpoint.clone(),
                        operation: request(operation, key),
                        message: format!(
                            "{message} (first-byte timeout {:?}, up to {MAX_ATTEMPTS} attempts)",
                            self.first_byte_timeout
                        ),
                    };
                }
                return StoreError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    message,
                };
            }
            SdkError::ServiceError(service) => {
                let answer = Answer {
                    status: service.raw().status().as_u16(),
                    code: service.err().code().unwrap_or_default(),
                    message: service.err().message().unwrap_or_default(),
                };
                if let Some(error) = answer.classify(&self.bucket, operation, key) {
                    return error;
                }
            }
            _ => {}
        }
        StoreError::Other {
            operation: request(operation, key),
            message: error_chain(&err),
        }
    }
}

/// What S3 answered to a refused request: the HTTP status, the error code and message.
struct Answer<'a> {
    status: u16,
    code: &'a str,
    message: &'a str,
}

impl Answer<'_> {
    /// The [`StoreError`] this answer means for `operation` on `key` of `bucket`; `None` when
    /// it means nothing in particular (reported as [`StoreError::Other`]).
    fn classify(&self, bucket: &str, operation: &str, key: &str) -> Option<StoreError> {
        let (status, code, message) = (self.status, self.code, self.message);
        Some(match (status, code) {
            (_, "NoSuchBucket") => StoreError::NoSuchBucket {
                bucket: bucket.to_string(),
            },
            (412, _) | (_, "PreconditionFailed") => StoreError::PreconditionFailed {
                key: key.to_string(),
                etag: String::new(),
            },
            (404, _) | (_, "NoSuchKey") => StoreError::NotFound {
                key: key.to_string(),
            },
            (401 | 403, _) => StoreError::AccessDenied {
                code: if code.is_empty() {
                    format!("HTTP {status}")
                } else {
                    code.to_string()
                },
                message: message.to_string(),
            },
            (429 | 500..=599, _) | (_, "SlowDown" | "RequestTimeout") => StoreError::ServerError {
                operation: request(operation, key),
                status,
                message: format!("{code}: {message}"),
            },
            _ => return None,
        })
    }
}

/// The request an error concerns: `GetObject key`, `ListObjectsV2 prefix ""` (the root).
fn request(operation: &str, key: &str) -> String {
    if key.is_empty() {
        format!("{operation} \"\"")
    } else {
        format!("{operation} {key}")
    }
}

/// Whether a ranged read is worth another round: any transient failure but an endpoint that
/// did not answer, which has had the SDK's attempts, each waiting the first-byte timeout;
/// more rounds would multiply the bound of [`S3Config::max_wait_without_answer`].
fn read_retryable(e: &StoreError) -> bool {
    e.is_transient() && !matches!(e, StoreError::NoAnswer { .. })
}

/// Whether a listing or a HEAD is worth trying again: only when the service answered with a
/// retryable error. An endpoint that does not answer at all has had the SDK's attempts; more
/// would only delay the mount-time check (and `ls`) that reports it.
fn answered_retryable(e: &StoreError) -> bool {
    matches!(e, StoreError::ServerError { .. })
}

/// The error and its sources on one line (the SDK's top-level message alone says little).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The endpoint a client addresses: the one configured, or AWS S3's regional endpoint.
fn origin_endpoint(configured: Option<&str>, region: Option<&str>) -> String {
    match (configured, region) {
        (Some(url), _) => url.to_string(),
        (None, Some(region)) => format!("https://s3.{region}.amazonaws.com"),
        (None, None) => "https://s3.amazonaws.com".to_string(),
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn list_page(
        &self,
        prefix: &str,
        continuation_token: Option<String>,
    ) -> Result<ListPage, StoreError> {
        let out = self
            .with_retries("ListObjectsV2", prefix, answered_retryable, || {
                self.client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .delimiter("/")
                    .set_continuation_token(continuation_token.clone())
                    .send()
                    .map_err(|e| self.classify(e, "ListObjectsV2 prefix", prefix))
            })
            .await?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectInfo {
                    key: o.key()?.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().unwrap_or_default().to_string(),
                    last_modified: to_system_time(o.last_modified()),
                    checksum: None,
                })
            })
            .collect();
        let common_prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_string))
            .collect();
        let next_continuation_token = if out.is_truncated().unwrap_or(false) {
            out.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok(ListPage {
            objects,
            common_prefixes,
            next_continuation_token,
        })
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        let out = self
            .with_retries("HeadObject", key, answered_retryable, || {
                self.client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                    .send()
                    .map_err(|e| self.classify(e, "HeadObject", key))
            })
            .await?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: out.e_tag().unwrap_or_default().to_string(),
            last_modified: to_system_time(out.last_modified()),
            checksum: FullObjectChecksum::from_headers(
                key,
                &ChecksumHeaders {
                    crc64nvme: out.checksum_crc64_nvme(),
                    crc32c: out.checksum_crc32_c(),
                    crc32: out.checksum_crc32(),
                    checksum_type: out.checksum_type().map(|t| t.as_str()),
                },
            ),
        })
    }

    async fn get_range(
        &self,
        version: &ObjectVersion,
        range: Range<u64>,
    ) -> Result<Bytes, StoreError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let mut buf = BytesMut::with_capacity((range.end - range.start) as usize);
        let start = range.start;
        self.get_range_into(version, range, &mut |at, chunk| {
            if at == start {
                buf.clear(); // a retry starts over
            }
            buf.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(buf.freeze())
    }

    async fn get_range_into(
        &self,
        version: &ObjectVersion,
        range: Range<u64>,
        sink: &mut RangeSink<'_>,
    ) -> Result<(), StoreError> {
        if range.is_empty() {
            return Ok(());
        }
        let len = range.end - range.start;
        let sink = Mutex::new(sink);
        self.with_retries("GetObject", &version.key, read_retryable, || {
            self.get_range_once(version, range.clone(), &sink)
        })
        .await?;
        metrics().s3_bytes(len);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("s3://{} at {}", self.bucket, self.endpoint)
    }

    fn origin(&self) -> StoreOrigin {
        self.origin.clone()
    }

    fn throttles(&self) -> u64 {
        self.throttles.count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn the_wait_on_a_silent_endpoint_is_three_first_byte_timeouts_and_the_sdk_backoff() {
        let default = S3Config::default();
        assert_eq!(default.first_byte_timeout, Duration::from_secs(5));
        assert_eq!(sdk_backoff_ceiling(), Duration::from_secs(3));
        assert_eq!(default.max_wait_without_answer(), Duration::from_secs(18));
        let two = S3Config {
            first_byte_timeout: Duration::from_secs(2),
            ..S3Config::default()
        };
        assert_eq!(two.max_wait_without_answer(), Duration::from_secs(9));
        let zero = S3Config {
            first_byte_timeout: Duration::ZERO,
            ..S3Config::default()
        };
        assert_eq!(
            zero.max_wait_without_answer(),
            Duration::from_millis(3003),
            "at least 1 ms per attempt"
        );
    }

    #[test]
    fn s3_answers_are_classified_by_status_and_code() {
        let classify = |status, code, message| {
            Answer {
                status,
                code,
                message,
            }
            .classify("models", "GetObject", "a/b")
        };
        assert!(matches!(
            classify(404, "NoSuchBucket", ""),
            Some(StoreError::NoSuchBucket { bucket }) if bucket == "models"
        ));
        assert!(matches!(
            classify(412, "", ""),
            Some(StoreError::PreconditionFailed { key, .. }) if key == "a/b"
        ));
        assert!(matches!(
            classify(404, "NoSuchKey", ""),
            Some(StoreError::NotFound { key }) if key == "a/b"
        ));
        assert!(matches!(
            classify(403, "AccessDenied", "no"),
            Some(StoreError::AccessDenied { code, message }) if code == "AccessDenied" && message == "no"
        ));
        assert!(matches!(
            classify(403, "", ""),
            Some(StoreError::AccessDenied { code, .. }) if code == "HTTP 403"
        ));
        for (status, code) in [
            (503, "SlowDown"),
            (500, "InternalError"),
            (429, ""),
            (400, "RequestTimeout"),
        ] {
            let error = classify(status, code, "busy");
            assert!(
                matches!(&error, Some(StoreError::ServerError { status: s, .. }) if *s == status),
                "{status} {code}: {error:?}"
            );
            assert!(
                error.is_some_and(|e| e.is_transient()),
                "{status} {code} is retried"
            );
        }
        assert!(
            classify(400, "InvalidArgument", "bad").is_none(),
            "anything else is Other"
        );
        assert!(classify(403, "AccessDenied", "").is_some_and(|e| !e.is_transient()));
    }

    #[test]
    fn an_unanswered_read_is_transient_but_gets_no_round_of_our_own() {
        let silent = StoreError::NoAnswer {
            endpoint: "http://x".into(),
            operation: "GetObject k".into(),
            message: "HTTP read timeout occurred after 5s".into(),
        };
        assert!(silent.is_transient());
        assert!(!read_retryable(&silent));
        assert!(!answered_retryable(&silent));
        let refused = StoreError::Unreachable {
            endpoint: "http://x".into(),
            message: "connection refused".into(),
        };
        assert!(read_retryable(&refused), "a refusal costs no wait");
        let reset = StoreError::Interrupted {
            key: "k".into(),
            range: (0, 1),
            message: "reset".into(),
        };
        assert!(read_retryable(&reset));
    }

    /// A TCP endpoint that accepts connections, reads what is sent and never answers; counts
    /// the requests (request heads) it swallowed.
    async fn silent_endpoint() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let heads = buf[..n].windows(5).filter(|w| w == b"HTTP/").count();
                        counted.fetch_add(heads, Ordering::SeqCst);
                    }
                });
            }
        });
        (url, requests)
    }

    #[tokio::test]
    async fn the_origin_names_the_endpoint_addressed() {
        let config = |endpoint_url: Option<&str>, force_path_style| S3Config {
            bucket: "models".into(),
            endpoint_url: endpoint_url.map(str::to_string),
            region: Some("us-west-2".into()),
            force_path_style,
            no_sign_request: true,
            ..S3Config::default()
        };
        let local = S3Store::connect(&config(Some("http://LocalHost:9000/"), true)).await;
        assert_eq!(
            local.origin().to_string(),
            "s3://models at http://localhost:9000 path-style"
        );
        // Without an endpoint (and none in the environment): the region's AWS endpoint.
        if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
            let aws = S3Store::connect(&config(None, false)).await;
            assert_eq!(
                aws.origin().address(),
                "https://s3.us-west-2.amazonaws.com:443 virtual-hosted"
            );
        }
    }

    #[tokio::test]
    async fn a_silent_endpoint_fails_every_operation_within_the_bound() {
        let (url, requests) = silent_endpoint().await;
        let config = S3Config {
            bucket: "models".into(),
            endpoint_url: Some(url),
            region: Some("us-east-1".into()),
            force_path_style: true,
            no_sign_request: true,
            first_byte_timeout: Duration::from_millis(300),
            ..S3Config::default()
        };
        let bound = config.max_wait_without_answer();
        let store = S3Store::connect(&config).await;
        let version = ObjectVersion {
            key: "k".into(),
            etag: "\"e\"".into(),
            size: 10,
            checksum: None,
        };
        let mut sent = 0;
        for op in ["GetObject", "HeadObject", "ListObjectsV2"] {
            let started = Instant::now();
            let result = match op {
                "GetObject" => store.get_range(&version, 0..10).await.map(drop),
                "HeadObject" => store.head("k").await.map(drop),
                _ => store.list_page("p/", None).await.map(drop),
            };
            let took = started.elapsed();
            let err = result.expect_err("nobody answers");
            eprintln!("{op}: failed after {took:.1?} (bound {bound:?}): {err}");
            assert!(matches!(err, StoreError::NoAnswer { .. }), "{op}: {err}");
            assert!(err.to_string().contains(op), "{op}: {err}");
            assert!(
                took >= config.first_byte_timeout * MAX_ATTEMPTS,
                "{op}: waited for every attempt ({took:?})"
            );
            assert!(took <= bound, "{op}: {took:?} > {bound:?}");
            let now = requests.load(Ordering::SeqCst);
            assert_eq!(
                now - sent,
                MAX_ATTEMPTS as usize,
                "{op}: the SDK's attempts, and no round of our own"
            );
            sent = now;
        }
    }
}
