//! S3 endpoints for tests: the project's local server, and a small synchronous admin client
//! (aws-sdk-s3) that changes a bucket the way a user would, over HTTP.

use std::sync::Arc;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use modelfs_s3local::{FileStore, LocalS3, LocalS3Config, ReadOnlyUser, SessionIssuer};

/// How to reach an S3 endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Region name.
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
}

/// The project's s3s-based server on loopback, over a temporary directory.
pub struct LocalServer {
    /// The running server.
    pub server: LocalS3,
    /// How to reach it.
    pub endpoint: Endpoint,
    bucket: String,
    _root: tempfile::TempDir,
}

impl LocalServer {
    /// Starts a server with one empty bucket, `bucket`.
    pub fn start(bucket: &str) -> LocalServer {
        LocalServer::start_with_readers(bucket, Vec::new())
    }

    /// Starts a server with one empty bucket and, besides its owner, `readers` who may list
    /// and read only keys under their prefixes.
    pub fn start_with_readers(bucket: &str, readers: Vec<ReadOnlyUser>) -> LocalServer {
        LocalServer::start_configured(bucket, |config| config.readers = readers)
    }

    /// Starts a server with one empty bucket that also honours the temporary credentials
    /// `sessions` issued.
    pub fn start_with_sessions(bucket: &str, sessions: Arc<dyn SessionIssuer>) -> LocalServer {
        LocalServer::start_configured(bucket, |config| config.sessions = Some(sessions))
    }

    /// Starts a server with one empty bucket, configured by `configure` (shaping, users).
    pub fn start_configured(
        bucket: &str,
        configure: impl FnOnce(&mut LocalS3Config),
    ) -> LocalServer {
        let root = tempfile::tempdir().expect("tempdir");
        let mut config = LocalS3Config::new(root.path());
        configure(&mut config);
        let server = LocalS3::start(config).expect("start local S3");
        server.store().create_bucket(bucket).expect("create bucket");
        let endpoint = Endpoint {
            url: server.endpoint_url(),
            region: server.region().to_string(),
            access_key: server.access_key().to_string(),
            secret_key: server.secret_key().to_string(),
        };
        LocalServer {
            server,
            endpoint,
            bucket: bucket.to_string(),
            _root: root,
        }
    }

    /// How to reach the server as `reader` (one of its read-only users).
    pub fn endpoint_as(&self, reader: &ReadOnlyUser) -> Endpoint {
        Endpoint {
            access_key: reader.access_key.clone(),
            secret_key: reader.secret_key.clone(),
            ..self.endpoint.clone()
        }
    }

    /// The file store behind the server (seeds large or unusual objects without HTTP).
    pub fn store(&self) -> &Arc<FileStore> {
        self.server.store()
    }

    /// Stores a safetensors model with `data_bytes` of tensor data generated from `seed` as
    /// `key` of the server's bucket; returns the path of the stored copy (the expected bytes).
    pub fn seed_safetensors(&self, key: &str, data_bytes: u64, seed: u64) -> std::path::PathBuf {
        let spec = modelfs_s3local::SafetensorsSpec::new(seed, data_bytes);
        self.store()
            .put_from_reader(
                &self.bucket,
                key,
                modelfs_s3local::models::SafetensorsReader::new(&spec),
            )
            .unwrap_or_else(|e| panic!("seed {key}: {e}"));
        self.store()
            .data_path(&self.bucket, key)
            .expect("source path")
    }

    /// Asserts that no GetObject reached the server since its stats were last reset, failing
    /// with `message`.
    #[track_caller]
    pub fn assert_no_gets(&self, message: &str) {
        assert_eq!(self.server.stats().get_object, 0, "{message}");
    }

    /// Waits (at most 20 s) until at least `at_least` GetObjects reached the server since its
    /// stats were reset and none came for half a second; false if that never happened.
    pub fn gets_settle(&self, at_least: u64) -> bool {
        super::suite::eventually(std::time::Duration::from_secs(20), || {
            let before = self.server.stats().get_object;
            std::thread::sleep(std::time::Duration::from_millis(500));
            before == self.server.stats().get_object && before >= at_least
        })
    }

    /// Stores `data` as `key` of the server's bucket.
    pub fn seed(&self, key: &str, data: &[u8]) {
        self.store()
            .put_bytes(&self.bucket, key, data)
            .unwrap_or_else(|e| panic!("seed {key}: {e}"));
    }

    /// Stores `size` pseudo-random bytes from `seed` as `key` of the server's bucket without
    /// holding them in memory; returns the path of the stored copy (the expected bytes).
    pub fn seed_pseudo_random(&self, key: &str, size: u64, seed: u64) -> std::path::PathBuf {
        self.store()
            .put_from_reader(
                &self.bucket,
                key,
                super::PseudoRandomReader::new(seed, size),
            )
            .unwrap_or_else(|e| panic!("seed {key}: {e}"));
        self.store()
            .data_path(&self.bucket, key)
            .expect("source path")
    }
}

/// An S3 client for `endpoint` (path-style, its static credentials).
pub fn client(endpoint: &Endpoint) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&endpoint.url)
        .region(Region::new(endpoint.region.clone()))
        .credentials_provider(Credentials::new(
            &endpoint.access_key,
            &endpoint.secret_key,
            None,
            None,
            "tests",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A blocking S3 client for changing buckets from tests.
pub struct Admin {
    client: aws_sdk_s3::Client,
    runtime: tokio::runtime::Runtime,
}

impl Admin {
    /// A client for `endpoint` (path-style, static credentials).
    pub fn new(endpoint: &Endpoint) -> Admin {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Admin {
            client: client(endpoint),
            runtime,
        }
    }

    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) {
        self.runtime
            .block_on(self.client.create_bucket().bucket(bucket).send())
            .expect("CreateBucket");
    }

    /// Puts `data` at `key`; returns the new ETag.
    pub fn put(&self, bucket: &str, key: &str, data: Vec<u8>) -> String {
        let out = self
            .runtime
            .block_on(
                self.client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(data.into())
                    .send(),
            )
            .unwrap_or_else(|e| panic!("PutObject {key}: {e:?}"));
        out.e_tag().unwrap_or_default().to_string()
    }

    /// Deletes `key`.
    pub fn delete(&self, bucket: &str, key: &str) {
        self.runtime
            .block_on(self.client.delete_object().bucket(bucket).key(key).send())
            .unwrap_or_else(|e| panic!("DeleteObject {key}: {e:?}"));
    }
}
