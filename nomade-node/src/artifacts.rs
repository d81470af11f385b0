//! Artifacts of a node: putting files in, exporting them, fetching what
//! documents reference from the peers that have it, serving peers' fetches.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use nomade_artifact::{
    ArtifactId, ArtifactStore, Progress, PublicKey, Receiver, ReceiverEvent, Sender,
};
use nomade_transport::{Connection, DeviceId, FramedRecv, FramedSend};
use nomade_wire::{ArtifactRequest, EntityType, Message, StreamRole, Value};
use serde::{Deserialize, Serialize};

use crate::artifact_io;
use crate::error::NodeError;
use crate::handshake;
use crate::lock;
use crate::metrics::Metrics;
use crate::node::{peer_err, Node};
use crate::schedule::PrefetchPace;
use crate::store::ArtifactRecord;

/// Fewest chunks left of an artifact (4 MiB) for a fetch from two holders
/// at once: below, the second request costs more than it saves.
pub const MIN_CHUNKS_FOR_TWO: u32 = 64;

/// Which artifact contents a device fetches by itself after a sync; the
/// others it knows by their metadata and fetches when asked (`nomade get`,
/// [`Node::fetch_artifact`]). Pinned artifacts are always fetched.
///
/// Only the artifacts that the entities this device holds refer to are
/// known at all: a device subscribed to some entities
/// ([`Node::set_subscription`]) fetches by this policy the artifacts of
/// those entities only.
///
/// ```
/// use nomade_node::ArtifactPolicy;
/// // A phone: photos up to 20 MB, nothing else until asked.
/// let phone = ArtifactPolicy {
///     max_size: Some(20_000_000),
///     mime_types: vec!["image/".into()],
///     ..ArtifactPolicy::default()
/// };
/// assert!(phone.wants(3_000_000, Some("image/jpeg")));
/// assert!(!phone.wants(3_000_000, Some("video/mp4")));
/// assert!(!phone.wants(30_000_000, Some("image/png")));
/// assert!(!ArtifactPolicy::metadata_only().wants(1, None));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactPolicy {
    /// Fetch content after a sync at all (false: metadata only).
    pub prefetch: bool,
    /// Only artifacts up to this size (bytes).
    pub max_size: Option<u64>,
    /// A prefetch that would take longer than this at the rate measured
    /// on the link (after its first seconds) is paused and shown as
    /// deferred (`slow_link`); the artifact is still fetched on demand, and
    /// a later prefetch resumes where it stopped and measures again
    /// (default 600 s; `None`: whatever it takes).
    #[serde(default = "default_max_prefetch_secs")]
    pub max_prefetch_secs: Option<u64>,
    /// Only these MIME types: `image/jpeg`, or `image/` for a family.
    /// Empty: any type, and artifacts of no known type.
    pub mime_types: Vec<String>,
}

fn default_max_prefetch_secs() -> Option<u64> {
    Some(600)
}

impl Default for ArtifactPolicy {
    /// Everything: every referenced artifact is fetched (each prefetch
    /// within 600 s at the link's measured rate).
    fn default() -> Self {
        ArtifactPolicy {
            prefetch: true,
            max_size: None,
            max_prefetch_secs: default_max_prefetch_secs(),
            mime_types: Vec::new(),
        }
    }
}

impl ArtifactPolicy {
    /// Fetch nothing by itself: every artifact is known by its metadata
    /// and fetched when asked.
    pub fn metadata_only() -> Self {
        ArtifactPolicy {
            prefetch: false,
            ..ArtifactPolicy::default()
        }
    }

    /// Whether an artifact of this size and type is fetched without being
    /// asked.
    pub fn wants(&self, size: u64, mime_type: Option<&str>) -> bool {
        self.prefetch
            && self.max_size.is_none_or(|max| size <= max)
            && (self.mime_types.is_empty()
                || mime_type.is_some_and(|m| {
                    self.mime_types.iter().any(|t| match t.strip_suffix('/') {
                        Some(family) => m.split('/').next() == Some(family),
                        None => t.eq_ignore_ascii_case(m),
                    })
                }))
    }

    /// Whether judging an artifact needs its metadata.
    fn filters(&self) -> bool {
        self.max_size.is_some() || !self.mime_types.is_empty()
    }

    /// Whether the metadata of an artifact left to the policy is asked
    /// for: to judge it by size or type, or, when nothing is prefetched,
    /// to list it with its size and type.
    fn judges_by_metadata(&self) -> bool {
        !self.prefetch || self.filters()
    }

    /// Whether an artifact known as `record` is fetched without being
    /// asked: one of unknown size only when the policy does not filter.
    fn wants_record(&self, record: &ArtifactRecord) -> bool {
        match record.size {
            Some(size) => self.wants(size, record.mime_type.as_deref()),
            None => self.prefetch && !self.filters(),
        }
    }
}

/// Where an artifact's content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactState {
    /// Held here, whole and verified.
    Local,
    /// Partly fetched: the next fetch resumes after the last verified chunk.
    Partial,
    /// Known (referenced, or evicted), its content on other devices only.
    RemoteOnly,
    /// Held here, sealed for other devices: this device is not among its
    /// recipients and cannot open it; it passes it on to them.
    HeldForOthers,
}

/// One artifact as `nomade artifacts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactEntry {
    /// Its id (SHA-256 of the content, hex).
    pub id: String,
    /// Where its content is.
    pub state: ArtifactState,
    /// Its size, when known (held, or described by a holder).
    pub size: Option<u64>,
    /// Its MIME type, when known.
    pub mime_type: Option<String>,
    /// Whether it is pinned.
    pub pinned: bool,
    /// The entities that refer to it (`document:ID`, `conversation:ID`).
    pub referenced_by: Vec<String>,
}

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
        self.put_artifact_for_with_progress(path, mime, &[], progress)
    }

    /// Stores a file as an artifact sealed for this device and the paired
    /// devices `recipients` only (docs/PROTOCOL.md, "Sealed relays"): other
    /// devices may hold and pass on its sealed records, and cannot open
    /// them. With no recipients, the same as [`Node::put_artifact`]. A
    /// device whose artifact key this device has not learned yet (it
    /// learns it at the start of each session with it) is
    /// [`NodeError::NoArtifactKey`], and nothing is stored.
    ///
    /// ```no_run
    /// # fn demo(node: &nomade_node::Node, phone: nomade_transport::DeviceId) -> Result<(), nomade_node::NodeError> {
    /// let id = node.put_artifact_for("passport.pdf".as_ref(), Some("application/pdf"), &[phone])?;
    /// // Reference it as any artifact; only this device and the phone can open it.
    /// println!("{}", id.to_reference());
    /// # Ok(()) }
    /// ```
    pub fn put_artifact_for(
        &self,
        path: &Path,
        mime: Option<&str>,
        recipients: &[DeviceId],
    ) -> Result<ArtifactId, NodeError> {
        self.put_artifact_for_with_progress(path, mime, recipients, |_, _| {})
    }

    /// [`Node::put_artifact_for`] with progress, as
    /// [`Node::put_artifact_with_progress`].
    pub fn put_artifact_for_with_progress(
        &self,
        path: &Path,
        mime: Option<&str>,
        recipients: &[DeviceId],
        progress: impl FnMut(u64, u64),
    ) -> Result<ArtifactId, NodeError> {
        let keys = self.artifact_keys_of(recipients)?;
        let file = std::fs::File::open(path)?;
        let total = file.metadata()?.len().saturating_mul(2);
        let reader = crate::progress::CountingReader::new(file, total, progress);
        let store = &self.inner.artifacts;
        Ok(if recipients.is_empty() {
            store.put_reader(reader, mime, &[])?
        } else {
            store.put_reader_for(reader, mime, &keys)?
        })
    }

    /// The artifact keys of `devices`, as learned from each.
    fn artifact_keys_of(&self, devices: &[DeviceId]) -> Result<Vec<PublicKey>, NodeError> {
        devices
            .iter()
            .map(|&d| {
                self.peer(d)?
                    .and_then(|p| p.artifact_key.as_deref().and_then(parse_artifact_key))
                    .ok_or(NodeError::NoArtifactKey {
                        device: d.to_string(),
                    })
            })
            .collect()
    }

    /// Keeps `key` as `peer`'s artifact key (learned from its own request)
    /// when it is paired and the key is new.
    fn learn_artifact_key(&self, peer: DeviceId, key: &PublicKey) -> Result<(), NodeError> {
        let hex = hex::encode(key.as_bytes());
        let Some(record) = self.peer(peer)? else {
            return Ok(());
        };
        if record.artifact_key.as_deref() != Some(hex.as_str()) {
            tracing::info!(%peer, key = %hex, "learned the device's artifact key");
            self.update_peer(peer, |p| p.artifact_key = Some(hex.clone()))?;
        }
        Ok(())
    }

    /// Tells the peer this device's artifact key, for it to seal artifacts
    /// for this device (docs/PROTOCOL.md, "Sealed relays"): a request for
    /// the metadata of no artifact (the all-zero id), sealed for the key.
    /// The peer answers that it has no such artifact.
    pub(crate) async fn announce_artifact_key(&self, conn: &Connection) -> Result<(), NodeError> {
        let (mut tx, mut rx) = conn.open_bi(StreamRole::Artifact).await?;
        let request = ArtifactRequest {
            artifact_id: nomade_wire::Hash32::from([0; 32]),
            priority: 0,
            resume_from: None,
            sealed_for: Some(nomade_wire::Hash32::from(
                *self.inner.artifacts.public_key().as_bytes(),
            )),
            metadata_only: true,
            end_before: None,
        };
        tx.send(&crate::sync::envelope(request)).await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        let _ = tx.finish().await;
        Ok(())
    }

    /// Writes an artifact's plaintext to `out`, verified against its id.
    pub fn export_artifact(&self, id: &ArtifactId, out: &Path) -> Result<(), NodeError> {
        Ok(self.inner.artifacts.export(id, out)?)
    }

    pub(crate) async fn serve_artifact(
        &self,
        peer: DeviceId,
        tx: FramedSend,
        rx: FramedRecv,
    ) -> Result<(), NodeError> {
        // Every paired (TLS-authenticated) device may fetch: the data key is
        // wrapped for the key it sends (a sealed transfer), or it seals the
        // plaintext under its own key (a plaintext one).
        let sender = Sender::new(
            self.inner.artifacts.clone(),
            self.inner.paired.contains(&peer),
        )
        .relaying(self.peer_has(&peer, handshake::SEALED_RELAY));
        // (Served where the stream's connection is handled.)
        let (sender, mut tx) = artifact_io::drive(sender, tx, rx, None, |event| {
            tracing::debug!(%peer, ?event, "artifact");
        })
        .await?;
        if let Some(key) = sender.requester() {
            self.learn_artifact_key(peer, &key)?;
        }
        if sender.is_finished() {
            let _ = tx.finish().await;
        }
        Ok(())
    }

    /// Artifact ids referenced by the values of every document and conversation.
    pub fn referenced_artifacts(&self) -> Vec<ArtifactId> {
        self.artifact_references().into_keys().collect()
    }

    /// Each referenced artifact with the entities that refer to it
    /// (`document:ID`, `conversation:ID`), in id order.
    pub fn artifact_references(&self) -> BTreeMap<ArtifactId, Vec<String>> {
        self.references_in(self.inner.core.entities())
    }

    /// [`Node::artifact_references`] within `entities` only.
    fn references_in(
        &self,
        entities: impl IntoIterator<Item = (EntityType, String)>,
    ) -> BTreeMap<ArtifactId, Vec<String>> {
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
        let mut refs: BTreeMap<ArtifactId, Vec<String>> = BTreeMap::new();
        for (t, id) in entities {
            let mut found = Vec::new();
            match t {
                EntityType::Conversation => {
                    for v in core.conversation(&id).unwrap_or_default() {
                        walk(&v, &mut found);
                    }
                }
                _ => {
                    for v in core.document(&id).unwrap_or_default().values() {
                        walk(v, &mut found);
                    }
                }
            }
            for a in found {
                let by = refs.entry(a).or_default();
                let name = format!("{}:{id}", t.as_str());
                if !by.contains(&name) {
                    by.push(name);
                }
            }
        }
        refs
    }

    /// After the first sync with a peer: fetches what the artifact policy
    /// ([`NodeConfig::artifact_policy`]) wants of the referenced artifacts
    /// this device lacks, and pinned ones, from that peer; of the others,
    /// asks their metadata only (when the peer `describes`: it announced
    /// [`crate::handshake::ARTIFACT_METADATA`]), so that `nomade artifacts`
    /// shows their size and type without their content on disk. The
    /// fetches wait until the device allows background work
    /// ([`crate::schedule`]); they show in `status` meanwhile.
    pub(crate) async fn fetch_missing_artifacts(&self, conn: &Connection, describes: bool) {
        let all = self.referenced_artifacts();
        let conn = self.bulk_or(conn.clone());
        self.fetch_missing_of(&[(conn, describes)], all).await
    }

    /// While the node is online: the artifacts that edits (of peers, or
    /// local) reference from the first sync on are fetched by the same
    /// rules as [`Node::fetch_missing_artifacts`], a moment after the edits
    /// come (edits that come together are looked at together, and only the
    /// entities they changed), from the device that made the edit first,
    /// then from any other connected one. One loop per device, whatever
    /// the number of sessions.
    pub(crate) async fn watch_new_references(
        &self,
        mut changes: tokio::sync::broadcast::Receiver<crate::core::Change>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let mut entities = std::collections::BTreeSet::new();
            let mut authors = Vec::new();
            let mut everything = false;
            let mut take = |c: Result<crate::core::Change, RecvError>| match c {
                Ok(c) => {
                    if !authors.contains(&c.actor_id) {
                        authors.push(c.actor_id.clone());
                    }
                    entities.insert((c.entity_type, c.entity_id));
                    true
                }
                Err(RecvError::Lagged(_)) => {
                    everything = true;
                    true
                }
                Err(RecvError::Closed) => false,
            };
            if !take(changes.recv().await) {
                return;
            }
            let settle = tokio::time::sleep(Duration::from_millis(200));
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    () = &mut settle => break,
                    c = changes.recv() => if !take(c) { return },
                }
            }
            // The authors' sessions first: they hold what they referenced.
            let mut holders: Vec<(DeviceId, Connection, bool)> = self
                .sessions()
                .iter()
                .filter(|(_, s)| {
                    s.conn.close_reason().is_none()
                        && s.info.has(crate::handshake::ARTIFACT_TRANSFER)
                        && s.initial.borrow().is_some()
                })
                .map(|(id, s)| {
                    (
                        *id,
                        s.conn.clone(),
                        s.info.has(crate::handshake::ARTIFACT_METADATA),
                    )
                })
                .collect();
            holders.sort_by_key(|(id, ..)| !authors.contains(&id.to_string()));
            let holders: Vec<(Connection, bool)> = holders
                .into_iter()
                .map(|(_, c, d)| (self.bulk_or(c), d))
                .collect();
            // Nobody to fetch from (initial syncs under way, which fetch
            // what they bring): the state is not walked.
            if holders.is_empty() {
                continue;
            }
            let ids: Vec<ArtifactId> = if everything {
                self.referenced_artifacts()
            } else {
                self.references_in(entities).into_keys().collect()
            };
            if ids.iter().all(|id| self.inner.artifacts.has(id)) {
                continue;
            }
            self.fetch_missing_of(&holders, ids).await;
        }
    }

    /// Fetches what the policy wants of `ids` (see
    /// [`Node::fetch_missing_artifacts`]) from the first of `holders` that
    /// has each; a holder comes with whether it describes artifacts.
    async fn fetch_missing_of(&self, holders: &[(Connection, bool)], ids: Vec<ArtifactId>) {
        let Some((first, _)) = holders.first() else {
            return;
        };
        let describer = holders.iter().find(|(_, d)| *d).map(|(c, _)| c);
        let describes = describer.is_some();
        let conn = describer.unwrap_or(first);
        let policy = self.inner.config.artifact_policy.clone();
        let records = self.artifact_records();
        let mut wanted = Vec::new();
        for id in ids {
            if self.inner.artifacts.has(&id) {
                continue;
            }
            let mut record = records.get(&id.to_hex()).cloned().unwrap_or_default();
            // Pinned ones, and interrupted transfers, are fetched whatever
            // the policy; the others it judges, by their metadata when it
            // filters. Metadata is asked for to judge, and to list what is
            // left remote.
            let forced = record.pinned || self.inner.artifacts.has_partial(&id);
            if describes && !forced && record.size.is_none() && policy.judges_by_metadata() {
                record = self.describe_logged(conn, id).await.unwrap_or(record);
            }
            if forced || policy.wants_record(&record) {
                wanted.push(id);
            } else {
                tracing::debug!(artifact = %id, "left remote by the artifact policy");
            }
        }
        if wanted.is_empty() {
            return;
        }
        // Prefetching can wait for the device to allow it (battery, link,
        // time of day); the session ending ends the wait. Meanwhile the
        // artifacts are known by their metadata.
        if describes && self.background_decision().is_err() {
            for id in &wanted {
                if records.get(&id.to_hex()).is_none_or(|r| r.size.is_none()) {
                    self.describe_logged(conn, *id).await;
                }
            }
        }
        let work = format!("artifact prefetch from {}", conn.peer());
        lock(&self.inner.deferred).remove(&work);
        self.background_allowed(&work, wanted.len()).await;
        let conns: Vec<Connection> = holders.iter().map(|(c, _)| c.clone()).collect();
        let limit = policy.max_prefetch_secs.map(Duration::from_secs);
        for (i, &id) in wanted.iter().enumerate() {
            let Some(limit) = limit else {
                let _ = self.fetch_from_first(&conns, id, |_, _| {}).await;
                continue;
            };
            // Measured as it goes: a prefetch the link cannot carry within
            // the bound is paused (dropped: what it verified stays), and
            // what is left waits, shown in `status`.
            let pace: std::sync::Mutex<Option<(PrefetchPace, u64, u64)>> = Default::default();
            let fetch = self.fetch_from_first(&conns, id, |_, p| {
                let mut pace = lock(&pace);
                let (judge, ..) = *pace.get_or_insert_with(|| {
                    (
                        PrefetchPace::new(Instant::now(), p.bytes_at_start, limit),
                        0,
                        0,
                    )
                });
                *pace = Some((judge, p.bytes_done, p.bytes_total));
            });
            let too_slow = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let verdict = lock(&pace)
                        .map(|(judge, done, total)| judge.check(Instant::now(), done, total));
                    if let Some(Err(reason)) = verdict {
                        return reason;
                    }
                }
            };
            tokio::select! {
                _ = fetch => {}
                reason = too_slow => {
                    tracing::info!(peer = %conn.peer(), artifact = %id, %reason, "prefetch paused: the link is too slow for it");
                    lock(&self.inner.deferred).insert(
                        work.clone(),
                        crate::schedule::DeferredWork {
                            work: work.clone(),
                            items: wanted.len() - i,
                            why: reason.to_string(),
                            reason,
                        },
                    );
                    return;
                }
            }
        }
    }

    /// [`Node::describe_artifact`], a failure logged: `None` then.
    async fn describe_logged(&self, conn: &Connection, id: ArtifactId) -> Option<ArtifactRecord> {
        match self.describe_artifact(conn, id).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::info!(peer = %conn.peer(), artifact = %id, error = %e, "could not describe an artifact");
                None
            }
        }
    }

    /// Asks the connected `peer` for the metadata of artifact `id` only
    /// and keeps it (size and type, shown by [`Node::artifact_entries`]),
    /// without fetching any content.
    pub async fn describe_artifact_from(
        &self,
        peer: &DeviceId,
        id: ArtifactId,
    ) -> Result<ArtifactRecord, NodeError> {
        let conn = self.artifact_conn(peer);
        let conn = conn.ok_or_else(|| peer_err(peer, "not connected"))?;
        self.describe_artifact(&conn, id).await
    }

    /// Asks `conn`'s peer for the metadata of artifact `id` only (an
    /// `ARTIFACT_REQUEST` with `metadata_only`) and keeps it. Metadata that
    /// contradicts itself (another id, a chunk count that does not fit the
    /// size) is refused: [`NodeError::Artifact`], counted, nothing kept.
    pub(crate) async fn describe_artifact(
        &self,
        conn: &Connection,
        id: ArtifactId,
    ) -> Result<ArtifactRecord, NodeError> {
        let (mut tx, mut rx) = conn.open_bi(StreamRole::Artifact).await?;
        tx.send(&crate::sync::envelope(ArtifactRequest {
            artifact_id: id.hash32(),
            priority: 0,
            resume_from: None,
            sealed_for: None,
            metadata_only: true,
            end_before: None,
        }))
        .await?;
        let _ = tx.finish().await;
        let answer = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| peer_err(&conn.peer(), "no answer to a metadata request"))??;
        let bad = |why: String| {
            self.metrics().record_error("ARTIFACT");
            NodeError::Artifact(nomade_artifact::ArtifactError::Protocol(why))
        };
        let meta = match answer.map(|e| e.message) {
            Some(Message::ArtifactMetadata(m)) => m,
            Some(Message::Error(e)) => {
                return Err(NodeError::NotFound(format!(
                    "{} does not hold artifact {id}: {}",
                    conn.peer(),
                    e.error_message
                )))
            }
            other => {
                return Err(bad(format!(
                    "expected ARTIFACT_METADATA, got {:?}",
                    other.map(|m| m.message_type().name())
                )))
            }
        };
        if ArtifactId::from(meta.artifact_id) != id {
            return Err(bad(format!("metadata of {} for {id}", meta.artifact_id)));
        }
        if u64::from(meta.chunk_count) != meta.size.div_ceil(nomade_artifact::CHUNK_SIZE as u64) {
            return Err(bad(format!(
                "metadata of {id}: {} chunks for {} bytes",
                meta.chunk_count, meta.size
            )));
        }
        let mime = meta.mime_type.filter(|m| m.len() <= 255);
        Ok(self
            .inner
            .core
            .store()
            .update_artifact_record(&id.to_hex(), |r| {
                r.size = Some(meta.size);
                r.mime_type = mime.clone();
            })?)
    }

    fn artifact_records(&self) -> BTreeMap<String, ArtifactRecord> {
        self.inner
            .core
            .store()
            .artifact_records()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not read the artifact records");
                BTreeMap::new()
            })
    }

    /// Every artifact this device knows of: held here (whole or in part),
    /// referenced by its documents and conversations, or pinned; with its
    /// state, size and type when known, and who refers to it.
    pub fn artifact_entries(&self) -> Result<Vec<ArtifactEntry>, NodeError> {
        let mut records = self.inner.core.store().artifact_records()?;
        let refs = self.artifact_references();
        let mut ids: std::collections::BTreeSet<ArtifactId> = refs.keys().copied().collect();
        ids.extend(self.inner.artifacts.list()?);
        ids.extend(records.keys().filter_map(|h| ArtifactId::from_hex(h)));
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let record = records.remove(&id.to_hex()).unwrap_or_default();
            let (state, size, mime_type) = match self.inner.artifacts.metadata(&id) {
                Ok(info) => (
                    match info.relay_copy {
                        true => ArtifactState::HeldForOthers,
                        false => ArtifactState::Local,
                    },
                    Some(info.size),
                    info.mime_type.clone(),
                ),
                Err(_) => {
                    let state = match self.inner.artifacts.has_partial(&id) {
                        true => ArtifactState::Partial,
                        false => ArtifactState::RemoteOnly,
                    };
                    (state, record.size, record.mime_type.clone())
                }
            };
            out.push(ArtifactEntry {
                id: id.to_hex(),
                state,
                size,
                mime_type,
                pinned: record.pinned,
                referenced_by: refs.get(&id).cloned().unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Pins (or unpins) an artifact: a pinned one is fetched whatever the
    /// policy (at the next sync, or by `nomade get`) and never evicted.
    pub fn pin_artifact(&self, id: &ArtifactId, pinned: bool) -> Result<(), NodeError> {
        self.inner
            .core
            .store()
            .update_artifact_record(&id.to_hex(), |r| r.pinned = pinned)?;
        Ok(())
    }

    /// Drops an artifact's content (and any partial transfer of it) from
    /// this device, keeping what is known of it (size, type): it stays
    /// listed as remote only and is fetched again when asked. Returns the
    /// bytes freed. Refused for a pinned artifact.
    pub fn evict_artifact(&self, id: &ArtifactId) -> Result<u64, NodeError> {
        let store = self.inner.core.store();
        let record = store.artifact_record(&id.to_hex())?.unwrap_or_default();
        if record.pinned {
            return Err(NodeError::Invalid(format!(
                "artifact {id} is pinned: unpin it first"
            )));
        }
        let before = self.inner.artifacts.used_bytes()?;
        if let Ok(info) = self.inner.artifacts.metadata(id) {
            let (size, mime) = (info.size, info.mime_type.clone());
            store.update_artifact_record(&id.to_hex(), |r| {
                r.size = Some(size);
                r.mime_type = mime.clone();
            })?;
            self.inner.artifacts.remove(id)?;
        } else if !self.inner.artifacts.has_partial(id) {
            return Err(NodeError::NotFound(format!(
                "artifact {id} is not held here"
            )));
        }
        if self.inner.artifacts.has_partial(id) {
            self.inner.artifacts.discard_partial(id)?;
        }
        Ok(before.saturating_sub(self.inner.artifacts.used_bytes()?))
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
        let conn = self.artifact_conn(peer);
        let conn = conn.ok_or_else(|| peer_err(peer, "not connected"))?;
        self.fetch_on(&conn, id, progress).await
    }

    /// Fetches an artifact from whichever of `holders` has it, in that
    /// order (connected ones only): a holder that does not have it, fails,
    /// or drops mid-transfer is left for the next, which resumes after the
    /// last chunk verified so far. `progress` gets each holder's progress.
    /// Returns the holder that completed it (this device itself when it
    /// held it already).
    pub async fn fetch_artifact_from(
        &self,
        holders: &[DeviceId],
        id: ArtifactId,
        progress: impl FnMut(&DeviceId, &Progress),
    ) -> Result<DeviceId, NodeError> {
        if self.inner.artifacts.has(&id) {
            return Ok(self.inner.device_id);
        }
        let conns: Vec<Connection> = holders
            .iter()
            .filter_map(|h| self.artifact_conn(h))
            .collect();
        self.fetch_from_first(&conns, id, progress).await
    }

    /// Fetches `id` on the first of `conns` that has it: one that does not,
    /// fails or drops is left for the next, which resumes after the last
    /// verified chunk (the partial file stays). Returns the peer that
    /// completed it.
    async fn fetch_from_first(
        &self,
        conns: &[Connection],
        id: ArtifactId,
        mut progress: impl FnMut(&DeviceId, &Progress),
    ) -> Result<DeviceId, NodeError> {
        let mut last = NodeError::NotFound(format!(
            "artifact {id} is not held here and no connected device has it"
        ));
        if let [first, second, ..] = conns {
            match self.fetch_from_two(first, second, id, &mut progress).await {
                Ok(Some(holder)) => return Ok(holder),
                Ok(None) => {}
                Err(e) => {
                    // What was verified stays: the next resumes after it.
                    tracing::info!(artifact = %id, error = %e, "fetching from two devices at once did not complete; going on from one at a time");
                    if !e.is_connection_loss() {
                        self.metrics().record_error("ARTIFACT");
                    }
                }
            }
        }
        for conn in conns {
            let holder = conn.peer();
            match self.fetch_on(conn, id, |p| progress(&holder, p)).await {
                Ok(()) => {
                    tracing::info!(peer = %holder, artifact = %id, "artifact fetched");
                    return Ok(holder);
                }
                Err(e) => {
                    tracing::info!(peer = %holder, artifact = %id, error = %e, "artifact not fetched from this device; trying the next");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Fetches `id` from two holders at once (docs/PROTOCOL.md, "Two holders
    /// at once"): the chunks before the middle of what is left from
    /// `first`, the others from `second`, written to their places in the
    /// partial file as they come, then taken in (opened and hashed in
    /// order) once the first range is done. `Ok(None)`, nothing done, when
    /// it does not apply: a holder did not announce `"artifact-ranges"`,
    /// the size is not known (nor can be asked), fewer than
    /// [`MIN_CHUNKS_FOR_TWO`] chunks are left, or another fetch of it is
    /// under way. An error leaves the partial with what was verified.
    async fn fetch_from_two(
        &self,
        first: &Connection,
        second: &Connection,
        id: ArtifactId,
        progress: &mut impl FnMut(&DeviceId, &Progress),
    ) -> Result<Option<DeviceId>, NodeError> {
        use crate::handshake::{ARTIFACT_METADATA, ARTIFACT_RANGES};
        let (a, b) = (first.peer(), second.peer());
        if !self.peer_has(&a, ARTIFACT_RANGES) || !self.peer_has(&b, ARTIFACT_RANGES) {
            return Ok(None);
        }
        let known = self
            .core()
            .store()
            .artifact_record(&id.to_hex())?
            .and_then(|r| r.size);
        let size = match known {
            Some(size) => size,
            None if self.peer_has(&a, ARTIFACT_METADATA) => {
                match self.describe_artifact(first, id).await?.size {
                    Some(size) => size,
                    None => return Ok(None),
                }
            }
            None => return Ok(None),
        };
        let Some(count) = nomade_artifact::chunk_count(size) else {
            return Ok(None);
        };
        let store = self.inner.artifacts.clone();
        let main = match Receiver::new(store.clone(), id, 128) {
            Ok(r) => r,
            Err(nomade_artifact::ArtifactError::AlreadyStored { .. }) => {
                return Ok(Some(self.inner.device_id))
            }
            Err(nomade_artifact::ArtifactError::TransferInProgress { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let resume = main.progress().chunks_done;
        let left = count.saturating_sub(resume);
        if left < MIN_CHUNKS_FOR_TWO {
            return Ok(None);
        }
        let mid = resume + left / 2;
        let main = main.until(mid);
        tracing::info!(artifact = %id, first = %a, second = %b, from = resume, mid, count, "fetching from two devices at once");
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let metrics = self.metrics();
        let mut counted = main.progress().bytes_done;
        let mut started = Some(started_tx);
        let main_half = async {
            let (tx, rx) = first.open_bi(StreamRole::Artifact).await?;
            let (main, mut tx) =
                artifact_io::drive(main, tx, rx, Some(first), |event| match event {
                    ReceiverEvent::Started(p)
                    | ReceiverEvent::Progress(p)
                    | ReceiverEvent::RangeDone(p) => {
                        if let Some(tx) = started.take() {
                            let _ = tx.send(());
                        }
                        Metrics::add(
                            &metrics.artifact_bytes_received,
                            p.bytes_done.saturating_sub(counted),
                        );
                        counted = p.bytes_done;
                        progress(&a, &p);
                    }
                    _ => {}
                })
                .await?;
            let _ = tx.finish().await;
            Ok::<Receiver, NodeError>(main)
        };
        let second_half = async {
            // The partial file exists once the first holder's metadata came.
            if started_rx.await.is_err() {
                return Err(NodeError::NotFound(format!("a transfer of {id} under way")));
            }
            let key = store.range_key(&id)?;
            let range = nomade_artifact::RangeReceiver::new(store.clone(), id, key, mid, count);
            let (tx, rx) = second.open_bi(StreamRole::Artifact).await?;
            let (range, mut tx) = artifact_io::drive(range, tx, rx, Some(second), |_| {}).await?;
            let _ = tx.finish().await;
            Ok::<bool, NodeError>(range.is_done())
        };
        let (main, range) = tokio::join!(main_half, second_half);
        let mut main = main?;
        if let Err(e) = &range {
            tracing::info!(peer = %b, artifact = %id, error = %e, "the second range did not complete; what it verified is kept");
        }
        // Taken in (opened and hashed) on a blocking thread.
        let (main, absorbed) = tokio::task::spawn_blocking(move || {
            let r = main.absorb();
            (main, r)
        })
        .await?;
        let event = absorbed?;
        let done = main.progress();
        Metrics::add(
            &metrics.artifact_bytes_received,
            done.bytes_done.saturating_sub(counted),
        );
        progress(&b, &done);
        match event {
            ReceiverEvent::Complete { .. } => {
                tracing::info!(artifact = %id, first = %a, second = %b, "artifact fetched from two devices at once");
                Ok(Some(a))
            }
            _ => Err(peer_err(
                &b,
                format!("the second range stopped at chunk {}", done.chunks_done),
            )),
        }
    }

    /// Opens an artifact for reading, chunk by chunk, each verified:
    /// fetched first from whichever connected device has it when this one
    /// holds only its metadata (an application opening a file it sees
    /// listed).
    pub async fn open_artifact(
        &self,
        id: ArtifactId,
    ) -> Result<nomade_artifact::ArtifactReader, NodeError> {
        if !self.inner.artifacts.has(&id) {
            self.fetch_artifact_from_any(id, |_, _| {}).await?;
        }
        Ok(self.inner.artifacts.open_artifact(&id)?)
    }

    /// [`Node::fetch_artifact_from`] every connected device (an
    /// application opening an artifact it does not hold).
    pub async fn fetch_artifact_from_any(
        &self,
        id: ArtifactId,
        progress: impl FnMut(&DeviceId, &Progress),
    ) -> Result<DeviceId, NodeError> {
        let holders = self.connected_peers();
        self.fetch_artifact_from(&holders, id, progress).await
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
        let (tx, rx) = conn.open_bi(StreamRole::Artifact).await?;
        let mut counted = receiver.progress().bytes_done;
        let metrics = self.metrics();
        let (receiver, mut tx) =
            artifact_io::drive(receiver, tx, rx, Some(conn), |event| match event {
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

/// An artifact key as kept in a peer record (64 hex characters).
fn parse_artifact_key(hex: &str) -> Option<PublicKey> {
    let bytes: [u8; 32] = hex::decode(hex).ok()?.try_into().ok()?;
    Some(PublicKey::from(bytes))
}
