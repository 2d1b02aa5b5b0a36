//! Backups: [`Client::snapshot`] streams one member's whole replicated state as a snapshot file
//! (`Maintenance.Snapshot`): what `latch snapshot save` writes, `latch snapshot status` checks
//! and `latch snapshot restore` makes a new cluster from.

use latch_proto::v1::maintenance_client::MaintenanceClient;
use latch_proto::v1::{ResponseHeader, SnapshotRequest, SnapshotResponse};
use tonic::Streaming;

use crate::{Client, Error};

/// A snapshot file as a member streams it: its parts, in order, make the whole file. A stream
/// that fails part way has no use (a snapshot cannot be resumed): take it again.
pub struct SnapshotStream {
    header: ResponseHeader,
    first: Option<Vec<u8>>,
    parts: Streaming<SnapshotResponse>,
    /// The member said the file is whole (`SnapshotResponse.last`).
    whole: bool,
}

impl SnapshotStream {
    /// The answering member's header: its cluster, its id, and the snapshot's revision.
    pub fn header(&self) -> &ResponseHeader {
        &self.header
    }

    /// The next part of the file, or `None` once the member sent it all (and said so: a
    /// stream that ends before is an error).
    pub async fn next_part(&mut self) -> Result<Option<Vec<u8>>, Error> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        if self.whole {
            return Ok(None);
        }
        match self.parts.message().await? {
            Some(part) if part.last => {
                self.whole = true;
                Ok(None)
            }
            Some(part) => Ok(Some(part.blob)),
            None => Err(Error::from(tonic::Status::unavailable(
                "the member's snapshot stream ended before the end of the file: take the snapshot again",
            ))),
        }
    }
}

impl Client {
    /// Streams the whole state of one member (the first that answers) as a snapshot file. By
    /// default the member first catches up as for a linearizable read, so the snapshot holds
    /// every write acknowledged before the call; `serializable` takes its state as it stands (a
    /// member cut off from the others can be backed up so). A member streams at most two at
    /// once (RESOURCE_EXHAUSTED beyond).
    pub async fn snapshot(&self, serializable: bool) -> Result<SnapshotStream, Error> {
        let mut parts = self
            .open_stream("Snapshot", |channel| async move {
                MaintenanceClient::new(channel)
                    .max_decoding_message_size(usize::MAX)
                    .snapshot(SnapshotRequest { serializable })
                    .await
            })
            .await?;
        let first = parts.message().await?.ok_or_else(|| {
            Error::from(tonic::Status::unavailable(
                "the member ended the snapshot stream before sending anything",
            ))
        })?;
        let header = first.header.unwrap_or_default();
        Ok(SnapshotStream { header, first: Some(first.blob), parts, whole: false })
    }
}
