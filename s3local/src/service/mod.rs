//! [`LocalS3Service`]: the [`s3s::S3`] implementation over a [`FileStore`].
//!
//! s3s parses requests, checks SigV4 signatures and renders responses; this module maps each
//! supported operation onto the store: buckets (list, create, head, delete), ListObjectsV2,
//! HeadObject and GetObject (ranges, conditional requests, streamed bodies), PutObject
//! (streamed uploads) and DeleteObject. Blocking file work runs on tokio's blocking pool.

mod body;
mod conditions;
mod list;
mod upload;

use std::sync::Arc;

use hyper::header::{self, HeaderMap, HeaderValue};
use s3s::dto::{
    Bucket, ChecksumMode, ChecksumType, CommonPrefix, CreateBucketInput, CreateBucketOutput,
    DeleteBucketInput, DeleteBucketOutput, DeleteObjectInput, DeleteObjectOutput, ETag,
    EncodingType, GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput,
    HeadObjectInput, HeadObjectOutput, ListBucketsInput, ListBucketsOutput, ListObjectsV2Input,
    ListObjectsV2Output, Object, ObjectStorageClass, PutObjectInput, PutObjectOutput,
    StreamingBlob, Timestamp, TimestampFormat,
};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};

use crate::access::{ReadOnlyUser, SessionIssuer, SharedUsers, Users};
use crate::encoding::url_encode;
use crate::faults::{Fault, FaultBody, Faults, Op};
use crate::shaping::{Pace, Shaper, Shaping};
use crate::stats::{Counters, RequestStats};
use crate::store::{FileStore, ObjectChecksum, ObjectMeta, StoreError};
use body::FileBody;
use conditions::{condition_matches, read_preconditions, resolve_range, Preconditions, Verdict};
use list::{list_page, Entry, ListQuery, Marker};
use upload::{upload, UploadError};

/// Largest page ListObjectsV2 returns, and its default size.
const MAX_KEYS: usize = 1000;

/// The S3 API over a [`FileStore`], counting the requests it serves and injecting the
/// [`Faults`] a test asks for.
#[derive(Clone, Debug)]
pub struct LocalS3Service {
    store: Arc<FileStore>,
    counters: Arc<Counters>,
    shaper: Option<Arc<Shaper>>,
    faults: Arc<Faults>,
}

impl LocalS3Service {
    /// A service over `store` with zeroed counters.
    pub fn new(store: Arc<FileStore>) -> LocalS3Service {
        LocalS3Service {
            store,
            counters: Arc::new(Counters::default()),
            shaper: None,
            faults: Arc::new(Faults::new()),
        }
    }

    /// The same service with responses shaped as `shaping` says (benchmarks).
    pub fn with_shaping(mut self, shaping: Shaping) -> LocalS3Service {
        self.shaper = Shaper::new(shaping);
        self
    }

    async fn shaping_delay(&self) {
        if let Some(shaper) = &self.shaper {
            shaper.request_delay().await;
        }
    }

    /// The store behind the service.
    pub fn store(&self) -> &Arc<FileStore> {
        &self.store
    }

    /// The faults the service injects (none until a rule is added), shared with its clones.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// The error answered for an injected status fault (`None` for a body fault); a 412
    /// counts as one in the request counters.
    fn fault_error(&self, fault: Fault) -> Option<S3Error> {
        let err = fault.to_error()?;
        if fault == Fault::PreconditionFailed {
            Counters::bump(&self.counters.precondition_failed);
        }
        Some(err)
    }

    /// Fails the request with an injected status fault, if one fires for `op`.
    fn status_fault(&self, op: Op) -> S3Result<()> {
        match self
            .faults
            .decide(op, None)
            .and_then(|f| self.fault_error(f))
        {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// A snapshot of the request counters.
    pub fn stats(&self) -> RequestStats {
        self.counters.snapshot()
    }

    /// Sets every request counter to zero.
    pub fn reset_stats(&self) {
        self.counters.reset();
    }

    /// An HTTP service (for hyper) serving this S3 API to clients that sign their requests
    /// (SigV4, or SigV2) with the owner's `access_key`/`secret_key` (every operation) or a
    /// reader's (listings and reads under its prefixes); path-style addressing.
    pub fn into_http_service(
        self,
        access_key: &str,
        secret_key: &str,
        readers: &[ReadOnlyUser],
        sessions: Option<Arc<dyn SessionIssuer>>,
    ) -> S3Service {
        let users = SharedUsers(Arc::new(Users::new(
            access_key, secret_key, readers, sessions,
        )));
        let mut builder = S3ServiceBuilder::new(self);
        builder.set_auth(users.clone());
        builder.set_access(users);
        builder.build()
    }

    /// Metadata of an object, or NoSuchKey / NoSuchBucket.
    fn meta(&self, bucket: &str, key: &str) -> S3Result<ObjectMeta> {
        match self.store.head(bucket, key) {
            Some(meta) => Ok(meta),
            None if self.store.bucket_exists(bucket) => Err(no_such_key()),
            None => Err(no_such_bucket()),
        }
    }

    fn precondition_failed(&self) -> S3Error {
        Counters::bump(&self.counters.precondition_failed);
        s3_error!(
            PreconditionFailed,
            "At least one of the pre-conditions you specified did not hold"
        )
    }

    /// Refuses a read of `meta` with 412 or 304 when its `preconditions` say so.
    fn check_read(&self, preconditions: &Preconditions, meta: &ObjectMeta) -> S3Result<()> {
        match preconditions.evaluate(meta) {
            Verdict::Proceed => Ok(()),
            Verdict::PreconditionFailed => Err(self.precondition_failed()),
            Verdict::NotModified => Err(not_modified(meta)),
        }
    }
}

fn no_such_bucket() -> S3Error {
    s3_error!(NoSuchBucket, "The specified bucket does not exist")
}

fn no_such_key() -> S3Error {
    s3_error!(NoSuchKey, "The specified key does not exist.")
}

/// 304 Not Modified, with the validators S3 sends along (hyper drops the error body, as
/// a 304 must not have one). s3s only lets errors choose their status, hence an error.
fn not_modified(meta: &ObjectMeta) -> S3Error {
    let mut err = S3Error::new(S3ErrorCode::NotModified);
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&meta.etag) {
        headers.insert(header::ETAG, value);
    }
    let mut date = Vec::new();
    let formatted =
        Timestamp::from(meta.last_modified).format(TimestampFormat::HttpDate, &mut date);
    if let (Ok(()), Ok(value)) = (formatted, HeaderValue::from_bytes(&date)) {
        headers.insert(header::LAST_MODIFIED, value);
    }
    err.set_headers(headers);
    err
}

fn invalid_range(size: u64) -> S3Error {
    s3_error!(
        InvalidRange,
        "The requested range is not satisfiable (object size {size})"
    )
}

/// Maps a store failure to the S3 error a client should see.
fn store_error(err: StoreError) -> S3Error {
    match err {
        StoreError::NoSuchBucket { .. } => no_such_bucket(),
        StoreError::NoSuchKey { .. } => no_such_key(),
        StoreError::InvalidBucketName { .. } => {
            S3Error::with_message(S3ErrorCode::InvalidBucketName, err.to_string())
        }
        StoreError::BucketNotEmpty { .. } => S3Error::with_message(
            S3ErrorCode::BucketNotEmpty,
            "The bucket you tried to delete is not empty",
        ),
        StoreError::BadDigest { .. } => {
            S3Error::with_message(S3ErrorCode::BadDigest, err.to_string())
        }
        StoreError::Body { .. } => S3Error::with_source(S3ErrorCode::IncompleteBody, err.into()),
        StoreError::Io { .. } => S3Error::internal_error(err),
    }
}

/// Runs blocking store work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> S3Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(store_error),
        Err(join) => Err(S3Error::internal_error(join)),
    }
}

fn etag(meta: &ObjectMeta) -> ETag {
    ETag::Strong(meta.etag_value().to_string())
}

fn size_i64(size: u64) -> S3Result<i64> {
    i64::try_from(size).map_err(S3Error::internal_error)
}

/// A content type guessed from the key's extension (the store keeps none).
fn content_type(key: &str) -> &'static str {
    let ext = key
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase());
    match ext.as_deref() {
        Some("yaml" | "yml") => "application/yaml",
        Some("json") => "application/json",
        Some("txt" | "md") => "text/plain",
        _ => "application/octet-stream",
    }
}

/// The `x-amz-checksum-*` fields of a response: crc64nvme, crc32c, crc32 and the type.
#[derive(Default)]
struct ChecksumFields {
    crc64nvme: Option<String>,
    crc32c: Option<String>,
    crc32: Option<String>,
    checksum_type: Option<ChecksumType>,
}

impl ChecksumFields {
    /// The fields for the object's full-object checksum, when `wanted` (the request said
    /// `x-amz-checksum-mode: ENABLED`, or it is a PutObject answer) and the object has one.
    fn of(checksum: Option<ObjectChecksum>, wanted: bool) -> ChecksumFields {
        let Some(checksum) = checksum.filter(|_| wanted) else {
            return ChecksumFields::default();
        };
        let value = Some(checksum.to_base64());
        let mut fields = ChecksumFields {
            checksum_type: Some(ChecksumType::from_static(ChecksumType::FULL_OBJECT)),
            ..ChecksumFields::default()
        };
        match checksum {
            ObjectChecksum::Crc64Nvme(_) => fields.crc64nvme = value,
            ObjectChecksum::Crc32c(_) => fields.crc32c = value,
            ObjectChecksum::Crc32(_) => fields.crc32 = value,
        }
        fields
    }
}

/// A HeadObject or GetObject answer (`$output`, two unrelated s3s types with these fields)
/// describing the object `$meta`, with the `$checksum` fields, plus the fields only that
/// answer has.
macro_rules! read_output {
    ($output:ident, $meta:expr, $checksum:expr, { $($field:ident: $value:expr),* $(,)? }) => {{
        let meta: &ObjectMeta = $meta;
        let checksum: ChecksumFields = $checksum;
        $output {
            checksum_crc64nvme: checksum.crc64nvme,
            checksum_crc32c: checksum.crc32c,
            checksum_crc32: checksum.crc32,
            checksum_type: checksum.checksum_type,
            accept_ranges: Some("bytes".to_string()),
            content_type: Some(content_type(&meta.key).to_string()),
            e_tag: Some(etag(meta)),
            last_modified: Some(Timestamp::from(meta.last_modified)),
            $($field: $value,)*
            ..$output::default()
        }
    }};
}

fn checksum_mode_enabled(mode: Option<&ChecksumMode>) -> bool {
    mode.is_some_and(|m| m.as_str().eq_ignore_ascii_case(ChecksumMode::ENABLED))
}

/// The full-object checksum a PutObject request sent (`x-amz-checksum-crc64nvme`, `-crc32c`
/// or `-crc32`), or `InvalidRequest` when its value is not one.
fn claimed_checksum(input: &PutObjectInput) -> S3Result<Option<ObjectChecksum>> {
    let sent = [
        ("crc64nvme", input.checksum_crc64nvme.as_deref()),
        ("crc32c", input.checksum_crc32c.as_deref()),
        ("crc32", input.checksum_crc32.as_deref()),
    ];
    let Some((algorithm, value)) = sent
        .into_iter()
        .find_map(|(algorithm, value)| Some((algorithm, value?)))
    else {
        return Ok(None);
    };
    ObjectChecksum::from_base64(algorithm, value)
        .map(Some)
        .ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                format!("Value for x-amz-checksum-{algorithm} header is invalid."),
            )
        })
}

fn content_range(range: &std::ops::Range<u64>, size: u64) -> String {
    format!("bytes {}-{}/{size}", range.start, range.end - 1)
}

#[async_trait::async_trait]
impl S3 for LocalS3Service {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        Counters::bump(&self.counters.other);
        let buckets = self
            .store
            .buckets()
            .into_iter()
            .map(|b| Bucket {
                name: Some(b.name),
                creation_date: Some(Timestamp::from(b.created)),
                ..Bucket::default()
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..ListBucketsOutput::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        Counters::bump(&self.counters.other);
        let bucket = req.input.bucket;
        if self.store.bucket_exists(&bucket) {
            return Err(s3_error!(
                BucketAlreadyOwnedByYou,
                "Your previous request to create the named bucket succeeded and you already own it."
            ));
        }
        let store = Arc::clone(&self.store);
        let name = bucket.clone();
        blocking(move || store.create_bucket(&name)).await?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        Counters::bump(&self.counters.other);
        if !self.store.bucket_exists(&req.input.bucket) {
            return Err(no_such_bucket());
        }
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        Counters::bump(&self.counters.other);
        let store = Arc::clone(&self.store);
        let bucket = req.input.bucket;
        blocking(move || store.delete_bucket(&bucket)).await?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        Counters::bump(&self.counters.list_objects_v2);
        self.shaping_delay().await;
        let input = req.input;
        let max_keys = match input.max_keys {
            None => MAX_KEYS,
            Some(n) => usize::try_from(n)
                .map_err(|_| s3_error!(InvalidArgument, "max-keys must not be negative"))?
                .min(MAX_KEYS),
        };
        let max_keys = self.faults.list_page_size(max_keys);
        let resume = match input.continuation_token.as_deref() {
            None => None,
            Some(token) => Some(Marker::from_token(token).ok_or_else(|| {
                s3_error!(
                    InvalidArgument,
                    "The continuation token provided is incorrect"
                )
            })?),
        };
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let encode = |s: &str| if url { url_encode(s) } else { s.to_string() };
        let prefix = input.prefix.clone().unwrap_or_default();
        let query = ListQuery {
            prefix: &prefix,
            delimiter: input.delimiter.as_deref(),
            start_after: input.start_after.as_deref(),
            resume,
            max_keys,
        };
        let page = self
            .store
            .with_index(&input.bucket, |index| list_page(index, &query))
            .map_err(store_error)?;
        self.status_fault(Op::ListObjectsV2)?;

        let key_count = i32::try_from(page.entries.len()).map_err(S3Error::internal_error)?;
        let mut contents = Vec::new();
        let mut common_prefixes = Vec::new();
        for entry in page.entries {
            match entry {
                Entry::Object(meta) => contents.push(Object {
                    key: Some(encode(&meta.key)),
                    e_tag: Some(etag(&meta)),
                    size: Some(size_i64(meta.size)?),
                    last_modified: Some(Timestamp::from(meta.last_modified)),
                    storage_class: Some(ObjectStorageClass::from_static(
                        ObjectStorageClass::STANDARD,
                    )),
                    ..Object::default()
                }),
                Entry::Prefix(prefix) => common_prefixes.push(CommonPrefix {
                    prefix: Some(encode(&prefix)),
                }),
            }
        }
        let output = ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(encode(&prefix)),
            delimiter: input.delimiter.as_deref().map(encode),
            start_after: input.start_after.as_deref().map(encode),
            max_keys: Some(i32::try_from(max_keys).map_err(S3Error::internal_error)?),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            is_truncated: Some(page.next.is_some()),
            next_continuation_token: page.next.map(|m| m.to_token()),
            contents: Some(contents),
            common_prefixes: Some(common_prefixes),
            encoding_type: input.encoding_type,
            ..ListObjectsV2Output::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        Counters::bump(&self.counters.head_object);
        self.shaping_delay().await;
        let input = req.input;
        let meta = self.meta(&input.bucket, &input.key)?;
        self.check_read(&read_preconditions!(input), &meta)?;
        self.status_fault(Op::HeadObject)?;
        // A Range on HEAD is ignored (RFC 9110 allows it): the full length is reported.
        let checksum = ChecksumFields::of(
            meta.checksum,
            checksum_mode_enabled(input.checksum_mode.as_ref()),
        );
        let output = read_output!(HeadObjectOutput, &meta, checksum, {
            content_length: Some(size_i64(meta.size)?),
        });
        Ok(S3Response::new(output))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        Counters::bump(&self.counters.get_object);
        let input = req.input;
        let store = Arc::clone(&self.store);
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let (meta, file) = blocking(move || store.open_object(&bucket, &key)).await?;
        self.check_read(&read_preconditions!(input), &meta)?;

        let (window, content_range) = match &input.range {
            None => (0..meta.size, None),
            Some(range) => {
                let window =
                    resolve_range(range, meta.size).ok_or_else(|| invalid_range(meta.size))?;
                let header = content_range(&window, meta.size);
                (window, Some(header))
            }
        };
        let len = window.end - window.start;
        let pace = self.shaper.as_ref().map(|s| Pace::new(Arc::clone(s)));
        let body =
            FileBody::new(file, window.start, len, Arc::clone(&self.counters)).with_pace(pace);
        // Injected faults come after the real checks, like in every operation: a request
        // that fails for a real reason draws none.
        let (body, content_length) = match self.faults.decide(Op::GetObject, Some(len)) {
            None => (StreamingBlob::new(body), len),
            Some(fault) => {
                if let Some(err) = self.fault_error(fault) {
                    return Err(err);
                }
                let announced = fault.content_length(len);
                (
                    StreamingBlob::new(FaultBody::new(body, len, fault)),
                    announced,
                )
            }
        };
        // Like S3: a ranged GET carries no full-object checksum.
        let checksum = ChecksumFields::of(
            meta.checksum,
            input.range.is_none() && checksum_mode_enabled(input.checksum_mode.as_ref()),
        );
        let output = read_output!(GetObjectOutput, &meta, checksum, {
            body: Some(body),
            content_length: Some(size_i64(content_length)?),
            content_range: content_range,
        });
        Ok(S3Response::new(output))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        Counters::bump(&self.counters.put_object);
        let input = req.input;
        if !self.store.bucket_exists(&input.bucket) {
            return Err(no_such_bucket());
        }
        // Conditional writes: If-None-Match: * (create only) and If-Match (replace only
        // that version). Checked before the upload, which is enough for a test server.
        let current = self.store.head(&input.bucket, &input.key);
        let current_matches = |condition| {
            current
                .as_ref()
                .is_some_and(|m| condition_matches(condition, m))
        };
        if input.if_none_match.as_ref().is_some_and(current_matches) {
            return Err(self.precondition_failed());
        }
        if let Some(condition) = &input.if_match {
            if !current_matches(condition) {
                return Err(match current {
                    None => no_such_key(),
                    Some(_) => self.precondition_failed(),
                });
            }
        }
        let claimed = claimed_checksum(&input)?;
        let meta = upload(
            Arc::clone(&self.store),
            input.bucket,
            input.key,
            input.body,
            claimed,
        )
        .await
        .map_err(|err| match err {
            UploadError::Store(err) => store_error(err),
            UploadError::Body(source) => S3Error::with_source(S3ErrorCode::IncompleteBody, source),
            UploadError::Task(join) => S3Error::internal_error(join),
        })?;
        let checksum = ChecksumFields::of(meta.checksum, true);
        Ok(S3Response::new(PutObjectOutput {
            checksum_crc64nvme: checksum.crc64nvme,
            checksum_crc32c: checksum.crc32c,
            checksum_crc32: checksum.crc32,
            checksum_type: checksum.checksum_type,
            e_tag: Some(etag(&meta)),
            size: Some(size_i64(meta.size)?),
            ..PutObjectOutput::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        Counters::bump(&self.counters.other);
        let store = Arc::clone(&self.store);
        let (bucket, key) = (req.input.bucket, req.input.key);
        blocking(move || store.delete(&bucket, &key)).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            content_type("configs/v1-inference.yaml"),
            "application/yaml"
        );
        assert_eq!(content_type("a/b.safetensors"), "application/octet-stream");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }

    #[test]
    fn store_errors_map_to_s3_codes() {
        let code = |err| store_error(err).code().clone();
        assert_eq!(
            code(StoreError::NoSuchBucket { bucket: "b".into() }),
            S3ErrorCode::NoSuchBucket
        );
        assert_eq!(
            code(StoreError::NoSuchKey {
                bucket: "b".into(),
                key: "k".into()
            }),
            S3ErrorCode::NoSuchKey
        );
        assert_eq!(
            code(StoreError::BucketNotEmpty { bucket: "b".into() }),
            S3ErrorCode::BucketNotEmpty
        );
    }
}
