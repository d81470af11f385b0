//! Artifacts of a node: putting files in, exporting them, fetching what
//! documents reference from the peers that have it, serving peers' fetches.

use std::path::Path;
use std::time::Duration;

use nomade_artifact::{ArtifactId, ArtifactStore, Progress, Receiver, ReceiverEvent, Sender};
use nomade_transport::{Connection, DeviceId, FramedRecv, FramedSend};
use nomade_wire::StreamRole;
use nomade_wire::{EntityType, Value};

use crate::artifact_io;
use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::node::{peer_err, Node};

impl Node {
    // ----- artifacts ------------------------------------------------------

    /// The artifact store.
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.inner.artifacts
    }

    /// Stores a file as an artifact (sealed at rest for this device) and
    /// returns its id. Reference it in a document with
    /// [`ArtifactId::to_reference`]; peers fetch it after syncing.
    pub fn put_artifact(&self, path: &Path, mime: Option<&str>) -> Result<ArtifactId, NodeError> {
        self.put_artifact_with_progress(path, mime, |_, _| {})
    }

    /// [`Node::put_artifact`], calling `progress(done, total)` as the file
    /// is read: it is read twice (to hash it, then to seal it), so `total`
    /// is twice its size.
    pub fn put_artifact_with_progress(
        &self,
        path: &Path,
        mime: Option<&str>,
        progress: impl FnMut(u64, u64),
    ) -> Result<ArtifactId, NodeError> {
        let me = self.inner.artifacts.public_key();
        let file = std::fs::File::open(path)?;
        let total = file.metadata()?.len().saturating_mul(2);
        let reader = crate::progress::CountingReader::new(file, total, progress);
        Ok(self.inner.artifacts.put_reader(reader, mime, &[me])?)
    }

    /// Writes an artifact's plaintext to `out`, verified against its id.
    pub fn export_artifact(&self, id: &ArtifactId, out: &Path) -> Result<(), NodeError> {
        Ok(self.inner.artifacts.export(id, out)?)
    }

    pub(crate) async fn serve_artifact(
        &self,
        peer: DeviceId,
        mut tx: FramedSend,
        mut rx: FramedRecv,
    ) -> Result<(), NodeError> {
        // Every paired (TLS-authenticated) device may fetch: the data key is
        // wrapped for the key it sends (a sealed transfer), or it seals the
        // plaintext under its own key (a plaintext one).
        let sender = Sender::new(
            self.inner.artifacts.clone(),
            self.inner.paired.contains(&peer),
        );
        let sender = artifact_io::drive(sender, &mut tx, &mut rx, |event| {
            tracing::debug!(%peer, ?event, "artifact");
        })
        .await?;
        if sender.is_finished() {
            let _ = tx.finish().await;
        }
        Ok(())
    }

    /// Artifact ids referenced by the values of every document and conversation.
    pub fn referenced_artifacts(&self) -> Vec<ArtifactId> {
        fn walk(v: &Value, out: &mut Vec<ArtifactId>) {
            match v {
                Value::String(s) => {
                    if let Some(id) = ArtifactId::from_reference(s) {
                        out.push(id);
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                Value::Map(m) => m.values().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        let core = &self.inner.core;
        let mut out = Vec::new();
        for (t, id) in core.entities() {
            match t {
                EntityType::Conversation => {
                    for v in core.conversation(&id).unwrap_or_default() {
                        walk(&v, &mut out);
                    }
                }
                _ => {
                    for v in core.document(&id).unwrap_or_default().values() {
                        walk(v, &mut out);
                    }
                }
            }
        }
        out.sort_by_key(|a| a.to_hex());
        out.dedup();
        out
    }

    pub(crate) async fn fetch_missing_artifacts(&self, conn: &Connection) {
        for id in self.referenced_artifacts() {
            if self.inner.artifacts.has(&id) {
                continue;
            }
            match self.fetch_on(conn, id, |_| {}).await {
                Ok(()) => tracing::info!(peer = %conn.peer(), artifact = %id, "artifact fetched"),
                // The partial file stays: the next session resumes from it.
                Err(e) if e.is_connection_loss() => tracing::info!(
                    peer = %conn.peer(), artifact = %id, error = %e,
                    "artifact fetch interrupted; it resumes when the peer is back"
                ),
                Err(e) => {
                    tracing::warn!(peer = %conn.peer(), artifact = %id, error = %e, "artifact fetch failed")
                }
            }
        }
    }

    /// Fetches an artifact from a connected peer, resuming a partial transfer.
    /// `progress` is called when the transfer starts, as chunks are verified
    /// and written (at most every 10 ms), and once at the end with the final
    /// figures.
    pub async fn fetch_artifact(
        &self,
        peer: &DeviceId,
        id: ArtifactId,
        progress: impl FnMut(&Progress),
    ) -> Result<(), NodeError> {
        let conn = self.session_conn(peer);
        let conn = conn.ok_or_else(|| peer_err(peer, "not connected"))?;
        self.fetch_on(&conn, id, progress).await
    }

    /// Fetches on `conn`; a failure other than a lost connection (bad data,
    /// a refusal, a quota) is counted as an `ARTIFACT` error.
    pub(crate) async fn fetch_on(
        &self,
        conn: &Connection,
        id: ArtifactId,
        progress: impl FnMut(&Progress),
    ) -> Result<(), NodeError> {
        let result = self.fetch_uncounted(conn, id, progress).await;
        if let Err(e) = &result {
            if !e.is_connection_loss() {
                self.metrics().record_error("ARTIFACT");
            }
        }
        result
    }

    pub(crate) async fn fetch_uncounted(
        &self,
        conn: &Connection,
        id: ArtifactId,
        mut progress: impl FnMut(&Progress),
    ) -> Result<(), NodeError> {
        if self.inner.artifacts.has(&id) {
            return Ok(());
        }
        // Another task may be fetching it already: wait for that one to end,
        // then use its result or take over from its partial file.
        let receiver = loop {
            match Receiver::new(self.inner.artifacts.clone(), id, 128) {
                Ok(r) => break r,
                Err(nomade_artifact::ArtifactError::AlreadyStored { .. }) => return Ok(()),
                Err(nomade_artifact::ArtifactError::TransferInProgress { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (mut tx, mut rx) = conn.open_bi(StreamRole::Artifact).await?;
        let mut counted = receiver.progress().bytes_done;
        let metrics = self.metrics();
        let receiver = artifact_io::drive(receiver, &mut tx, &mut rx, |event| match event {
            ReceiverEvent::Started(p)
            | ReceiverEvent::Progress(p)
            | ReceiverEvent::Complete { progress: p, .. } => {
                Metrics::add(
                    &metrics.artifact_bytes_received,
                    p.bytes_done.saturating_sub(counted),
                );
                counted = p.bytes_done;
                progress(&p)
            }
            _ => {}
        })
        .await?;
        let _ = tx.finish().await;
        if receiver.is_complete() {
            Ok(())
        } else {
            Err(peer_err(&conn.peer(), "artifact stream ended early"))
        }
    }
}
