//! Streaming a PutObject request body into the store without buffering it in memory.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use s3s::dto::StreamingBlob;
use tokio::sync::mpsc;

use crate::store::{FileStore, ObjectChecksum, ObjectMeta, StoreError};

/// Chunks in flight between the request body and the blocking writer.
const QUEUE: usize = 16;

/// What the async side hands to the blocking writer.
enum Message {
    /// More content.
    Data(Bytes),
    /// The body ended normally: publish the object.
    Finish,
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UploadError {
    /// The request body could not be read (client gone, bad chunk signature, …).
    #[error("reading the request body: {0}")]
    Body(#[source] s3s::StdError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking writer task died.
    #[error("the writer task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Writes `body` to `key` in `bucket`: the body is read here while a blocking task writes
/// and hashes it, the two connected by a bounded queue (so a slow disk slows the client).
/// If the body fails or ends early, or does not match the checksum the client `claimed`,
/// nothing is published.
pub(crate) async fn upload(
    store: Arc<FileStore>,
    bucket: String,
    key: String,
    body: Option<StreamingBlob>,
    claimed: Option<ObjectChecksum>,
) -> Result<ObjectMeta, UploadError> {
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    let writer = tokio::task::spawn_blocking(move || -> Result<Option<ObjectMeta>, StoreError> {
        let mut writer = match claimed {
            Some(claimed) => store.writer_claiming(&bucket, &key, claimed)?,
            None => store.writer(&bucket, &key)?,
        };
        loop {
            match rx.blocking_recv() {
                Some(Message::Data(chunk)) => writer.append(&chunk)?,
                Some(Message::Finish) => return writer.commit().map(Some),
                // The request was abandoned: dropping the writer discards the data.
                None => return Ok(None),
            }
        }
    });

    if let Some(mut body) = body {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(UploadError::Body)?;
            if tx.send(Message::Data(chunk)).await.is_err() {
                // The writer stopped early; its result says why.
                break;
            }
        }
    }
    // A send error here also means the writer already stopped.
    let _ = tx.send(Message::Finish).await;
    drop(tx);
    match writer.await?? {
        Some(meta) => Ok(meta),
        None => Err(UploadError::Store(StoreError::Io {
            context: "finishing an upload",
            path: Default::default(),
            source: std::io::Error::other("the upload was abandoned"),
        })),
    }
}
