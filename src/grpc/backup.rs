//! A backup file as a stream of chunks: the revision and size first, the
//! bytes in order, the SHA-256 last. The staged file is removed when the
//! stream ends or the client goes away.

use std::pin::Pin;

use futures::Stream;
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::proto::BackupChunk;
use crate::domain::Error;

/// Bytes per chunk, well below the default 4 MiB message limit of clients.
const CHUNK: usize = 256 * 1024;

/// The stream `Backup` answers with.
pub type Chunks = Pin<Box<dyn Stream<Item = Result<BackupChunk, Status>> + Send>>;

/// Streams `file`, a copy holding `revision`.
pub async fn chunks(file: NamedTempFile, revision: u64) -> Result<Chunks, Status> {
    let unreadable = |error: std::io::Error| {
        Status::from(Error::Internal(format!("cannot read the backup: {error}")))
    };
    let mut reader = tokio::fs::File::open(file.path())
        .await
        .map_err(unreadable)?;
    let size = reader.metadata().await.map_err(unreadable)?.len();
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        // Holding the handle keeps the staged file until the stream ends.
        let _staged = file;
        let mut hasher = Sha256::new();
        let mut first = BackupChunk {
            revision,
            size,
            ..Default::default()
        };
        loop {
            let mut data = vec![0; CHUNK];
            let read = match reader.read(&mut data).await {
                Ok(read) => read,
                Err(error) => {
                    sender.send(Err(unreadable(error))).await.ok();
                    return;
                }
            };
            if read == 0 {
                break;
            }
            data.truncate(read);
            hasher.update(&data);
            let chunk = BackupChunk {
                data,
                ..std::mem::take(&mut first)
            };
            if sender.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        let last = BackupChunk {
            sha256: format!("{:x}", hasher.finalize()),
            ..first
        };
        sender.send(Ok(last)).await.ok();
    });
    Ok(Box::pin(ReceiverStream::new(receiver)))
}
