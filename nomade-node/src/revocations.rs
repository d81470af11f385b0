//! Revoking a device (a lost phone): signed records that spread to every
//! device and take effect on each (docs/PROTOCOL.md, "Revocation").
//!
//! A record says "`signer` revokes `revoked`, keeping its operations up to
//! `cutoff`". Each device keeps every record it accepted (in its store,
//! one per revoked device and signer), passes each new one on to the
//! devices it is connected to, and for each revoked device:
//!
//! - refuses its connections for good (it is removed from the paired set
//!   and can never be paired again: it comes back only with a new
//!   identity);
//! - closes its history at the highest `cutoff` of the records about it:
//!   its operations up to there stay (they were legitimately made), those
//!   after are refused and counted, whoever relays them;
//! - when it had applied more of the revoked device's operations than that
//!   (it learned of the revocation late), signs a record of its own with
//!   what it applied as `cutoff`, so that every device converges on the
//!   same history.
//!
//! Any device may revoke any other (a person's devices are one closed set;
//! a quorum would leave a person with two devices unable to revoke one).
//! Records are never withdrawn: when two devices revoke each other at
//! once, both are revoked everywhere, and the person pairs the one they
//! still hold again with a new identity.

use std::collections::BTreeMap;
use std::sync::Mutex;

use nomade_transport::revocation::{sign_revocation, verify_revocation, RevocationError};
use nomade_transport::DeviceId;
use nomade_wire::{Envelope, Message, Revocation, StreamRole};
use serde::{Deserialize, Serialize};

use crate::core::now_ms;
use crate::error::{NodeError, StoreError};
use crate::lock;
use crate::node::Node;
use crate::store::Store;
use crate::sync::envelope;

/// Most records a device keeps by default (one per revoked device and
/// signer; [`crate::NodeConfig::max_revocations`]): a paired device cannot
/// make another keep an unbounded list.
pub const MAX_REVOCATIONS: usize = 4096;

/// Where the records are kept in the store.
const META_KEY: &str = "revocations";

/// How long a revoked device's live connections stay open once the
/// revocation is accepted: nothing more is sent to it (no operation, no
/// artifact, no new stream served but revocations), but the revocations it
/// sent meanwhile (two devices revoking each other at once) are still
/// read, and it is sent the record about itself. Then they are closed.
pub const REVOKED_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a revocation record was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationRefused {
    /// The record itself is bad: a forged or altered signature, a key that
    /// is not the signer's, a malformed id, a self-revocation.
    #[error("invalid revocation: {0}")]
    Invalid(#[from] RevocationError),
    /// Signed by a device this one does not know (not paired, never
    /// revoked, no operation of it held): nobody vouches for the signer.
    #[error("revocation signed by {signer}, a device this one does not know")]
    UnknownSigner {
        /// The signer named.
        signer: String,
    },
    /// This device already holds this record, or a later one by the same
    /// signer: a replay changes nothing. (Each device sends every record it
    /// holds at every connection, so this is the common case: it is
    /// counted in `nomade_revocations_already_held_total`, not as an error.)
    #[error("revocation of {revoked} by {signer} already held")]
    Replayed {
        /// The revoked device.
        revoked: String,
        /// The signer.
        signer: String,
    },
    /// This device holds as many records as it keeps
    /// ([`crate::NodeConfig::max_revocations`]).
    #[error("too many revocations held ({limit})")]
    TooMany {
        /// The most kept.
        limit: usize,
    },
    /// The record could not be stored; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RevocationRefused {
    /// The kind counted in `nomade_errors_total` (a record already held is
    /// counted apart, in `nomade_revocations_already_held_total`).
    pub fn metric(&self) -> &'static str {
        match self {
            RevocationRefused::Invalid(RevocationError::SelfRevocation) => "REVOCATION_SELF",
            RevocationRefused::Invalid(_) => "REVOCATION_INVALID",
            RevocationRefused::UnknownSigner { .. } => "REVOCATION_UNKNOWN_SIGNER",
            RevocationRefused::Replayed { .. } => "REVOCATION_ALREADY_HELD",
            RevocationRefused::TooMany { .. } => "REVOCATION_TOO_MANY",
            RevocationRefused::Store(_) => "REVOCATION_STORE",
        }
    }
}

/// A revoked device, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevokedDevice {
    /// The revoked device.
    pub device_id: String,
    /// The last counter of its operations kept (the highest of the records).
    pub cutoff: u64,
    /// Who revoked it, with when each signed (ms, the signer's clock).
    pub revoked_by: Vec<(String, i64)>,
}

/// The records a node holds, by revoked device then signer.
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    records: Mutex<BTreeMap<(DeviceId, DeviceId), Revocation>>,
}

/// The stored form: the records as they travel.
#[derive(Serialize, Deserialize)]
struct Stored(Vec<Revocation>);

impl Revocations {
    /// The records kept in `store`, each checked again (a damaged or
    /// altered record is [`StoreError::Corrupt`]: the node does not start
    /// without knowing whom it revoked).
    pub(crate) fn load(store: &Store) -> Result<Revocations, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt { what };
        let mut records = BTreeMap::new();
        if let Some(bytes) = store.meta(META_KEY)? {
            let Stored(list) = rmp_serde::from_slice(&bytes)
                .map_err(|e| corrupt(format!("the stored revocations: {e}")))?;
            for r in list {
                let v = verify_revocation(&r)
                    .map_err(|e| corrupt(format!("a stored revocation: {e}")))?;
                records.insert((v.revoked, v.signer), r);
            }
        }
        Ok(Revocations {
            records: Mutex::new(records),
        })
    }

    fn save(
        store: &Store,
        records: &BTreeMap<(DeviceId, DeviceId), Revocation>,
    ) -> Result<(), StoreError> {
        let bytes = rmp_serde::to_vec_named(&Stored(records.values().cloned().collect()))
            .map_err(|e| StoreError::Database(e.to_string()))?;
        store.set_meta(META_KEY, &bytes)
    }

    /// Every record held.
    pub(crate) fn all(&self) -> Vec<Revocation> {
        lock(&self.records).values().cloned().collect()
    }

    /// The highest cutoff of the records about `revoked`, if any.
    pub(crate) fn cutoff(&self, revoked: &DeviceId) -> Option<u64> {
        lock(&self.records)
            .range(
                (*revoked, DeviceId::from_bytes([0; 20]))
                    ..=(*revoked, DeviceId::from_bytes([0xff; 20])),
            )
            .map(|(_, r)| r.cutoff)
            .max()
    }

    /// Each revoked device with the highest cutoff of the records about it.
    pub(crate) fn cutoffs(&self) -> BTreeMap<DeviceId, u64> {
        let mut out = BTreeMap::new();
        for ((revoked, _), r) in lock(&self.records).iter() {
            let c = out.entry(*revoked).or_insert(r.cutoff);
            *c = (*c).max(r.cutoff);
        }
        out
    }

    /// The revoked devices, for `status`.
    pub(crate) fn revoked(&self) -> Vec<RevokedDevice> {
        let records = lock(&self.records);
        let mut out: Vec<RevokedDevice> = Vec::new();
        for ((revoked, signer), r) in records.iter() {
            let id = revoked.to_string();
            match out.last_mut() {
                Some(last) if last.device_id == id => {
                    last.cutoff = last.cutoff.max(r.cutoff);
                    last.revoked_by.push((signer.to_string(), r.issued_at));
                }
                _ => out.push(RevokedDevice {
                    device_id: id,
                    cutoff: r.cutoff,
                    revoked_by: vec![(signer.to_string(), r.issued_at)],
                }),
            }
        }
        out
    }
}

impl Node {
    /// Revokes a paired device (lost or stolen): signs a record with this
    /// device's key, keeps it, applies it here and sends it to every
    /// connected device, which passes it on. The revoked device's
    /// operations up to the last one this device applied stay everywhere;
    /// every later one is refused by every device that has the record.
    ///
    /// Refused for this device itself (another device revokes it).
    pub fn revoke_peer(&self, id: &DeviceId) -> Result<RevokedDevice, NodeError> {
        if *id == self.inner.device_id {
            return Err(NodeError::Invalid(
                "a device cannot revoke itself: revoke it from another of your devices".into(),
            ));
        }
        let cutoff = self.inner.core.applied_counter(&id.to_string());
        let record = sign_revocation(&self.inner.identity, id, cutoff, now_ms())
            .map_err(RevocationRefused::from)?;
        match self.receive_revocation(None, record) {
            Ok(()) | Err(RevocationRefused::Replayed { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.revoked_devices()
            .into_iter()
            .find(|r| r.device_id == id.to_string())
            .ok_or_else(|| NodeError::Invalid("the revocation was not kept".into()))
    }

    /// The devices revoked, by any device, as this one knows.
    pub fn revoked_devices(&self) -> Vec<RevokedDevice> {
        self.inner.revocations.revoked()
    }

    /// Whether a device revoked this one (it keeps its data; the devices
    /// that know refuse it).
    pub fn is_revoked(&self) -> bool {
        self.inner
            .revocations
            .cutoff(&self.inner.device_id)
            .is_some()
    }

    /// Takes a record from `from` (a connected peer; `None`: made here):
    /// checks it, keeps it, applies it and passes it on. A refusal is
    /// logged and counted; it changes nothing.
    pub(crate) fn receive_revocation(
        &self,
        from: Option<DeviceId>,
        record: Revocation,
    ) -> Result<(), RevocationRefused> {
        let result = self.accept_revocation(from, record);
        match &result {
            Ok(()) => {}
            Err(e @ RevocationRefused::Replayed { .. }) => {
                crate::metrics::Metrics::add(&self.metrics().revocations_already_held, 1);
                tracing::debug!(from = ?from.map(|f| f.to_string()), error = %e, "revocation already held");
            }
            Err(e) => {
                self.metrics().record_error(e.metric());
                tracing::warn!(from = ?from.map(|f| f.to_string()), error = %e, "revocation refused");
            }
        }
        result
    }

    fn accept_revocation(
        &self,
        from: Option<DeviceId>,
        record: Revocation,
    ) -> Result<(), RevocationRefused> {
        let v = verify_revocation(&record)?;
        let me = self.inner.device_id;
        let known = v.signer == me
            || self.inner.paired.contains(&v.signer)
            || self.inner.paired.is_revoked(&v.signer)
            || self.inner.core.applied_counter(&v.signer.to_string()) > 0;
        if !known {
            return Err(RevocationRefused::UnknownSigner {
                signer: record.signer.clone(),
            });
        }
        let before = self.inner.revocations.cutoff(&v.revoked);
        {
            let mut records = lock(&self.inner.revocations.records);
            let key = (v.revoked, v.signer);
            if records
                .get(&key)
                .is_some_and(|held| held.cutoff >= v.cutoff)
            {
                return Err(RevocationRefused::Replayed {
                    revoked: record.revoked.clone(),
                    signer: record.signer.clone(),
                });
            }
            let limit = self.inner.config.max_revocations;
            if !records.contains_key(&key) && records.len() >= limit {
                return Err(RevocationRefused::TooMany { limit });
            }
            let previous = records.insert(key, record.clone());
            if let Err(e) = Revocations::save(self.inner.core.store(), &records) {
                match previous {
                    Some(p) => records.insert(key, p),
                    None => records.remove(&key),
                };
                return Err(e.into());
            }
        }
        let cutoff = before.map_or(v.cutoff, |b| b.max(v.cutoff));
        // Learned late: this device applied more of the revoked one than
        // the records keep. It keeps what it applied, and its own record
        // (below) raises the cutoff everywhere to that.
        let applied = match v.revoked == me {
            true => 0,
            false => self.inner.core.applied_counter(&v.revoked.to_string()),
        };
        let kept = cutoff.max(applied);
        tracing::warn!(
            revoked = %v.revoked, signer = %v.signer, cutoff = kept,
            "device revoked: its connections are refused, its operations after the cutoff too"
        );
        self.enforce_revocation(&v.revoked, kept);
        self.spread_revocation(from, record);
        if applied > cutoff {
            match sign_revocation(&self.inner.identity, &v.revoked, applied, now_ms()) {
                Ok(own) => {
                    let _ = self.receive_revocation(None, own);
                }
                Err(e) => tracing::warn!(error = %e, "could not sign a revocation"),
            }
        }
        Ok(())
    }

    /// What a revocation does on this device (also at start, for the
    /// records kept): the revoked device is refused from now on and its
    /// history closed at `cutoff`.
    pub(crate) fn enforce_revocation(&self, revoked: &DeviceId, cutoff: u64) {
        if *revoked == self.inner.device_id {
            tracing::error!(
                "this device was revoked by another of its devices: they refuse it; \
                 to sync again, give it a new identity and pair it again"
            );
            return;
        }
        self.inner.core.close_actor(&revoked.to_string(), cutoff);
        self.inner.paired.revoke(*revoked);
        // Forgotten as an unpaired device is; its live connections closed
        // after the grace (see [`REVOKED_GRACE`]).
        if let Err(e) = self.forget_peer(revoked) {
            tracing::warn!(peer = %revoked, error = %e, "could not forget a revoked device");
        }
        let Some(transport) = self.transport() else {
            return;
        };
        let conn = self.session_conn(revoked);
        let records: Vec<Revocation> = self
            .inner
            .revocations
            .all()
            .into_iter()
            .filter(|r| r.revoked == revoked.to_string())
            .collect();
        let runtime = self.runtime();
        match (conn, runtime) {
            (Some(conn), Some(runtime)) => {
                let revoked = *revoked;
                runtime.spawn(async move {
                    let deadline = tokio::time::Instant::now() + REVOKED_GRACE;
                    let _ =
                        tokio::time::timeout_at(deadline, send_revocations(&conn, records)).await;
                    tokio::time::sleep_until(deadline).await;
                    transport.unpair(&revoked);
                });
            }
            _ => {
                transport.unpair(revoked);
            }
        }
    }

    /// Sends `record` to every connected device that takes revocations,
    /// but `from`.
    fn spread_revocation(&self, from: Option<DeviceId>, record: Revocation) {
        let targets: Vec<_> = self
            .sessions()
            .iter()
            .filter(|(peer, s)| Some(**peer) != from && s.info.has(crate::handshake::REVOCATION))
            .map(|(_, s)| s.conn.clone())
            .collect();
        let runtime = self.runtime();
        let Some(runtime) = runtime else { return };
        for conn in targets {
            let records = vec![record.clone()];
            runtime.spawn(async move {
                if let Err(e) = send_revocations(&conn, records).await {
                    tracing::debug!(peer = %conn.peer(), error = %e, "could not send a revocation");
                }
            });
        }
    }

    /// Reads a revocation stream from `peer`: every record on it is taken
    /// ([`Node::receive_revocation`]); anything else ends the stream.
    pub(crate) async fn read_revocations(
        &self,
        peer: DeviceId,
        mut recv: nomade_transport::FramedRecv,
    ) -> Result<(), NodeError> {
        while let Some(env) = recv.recv().await? {
            match env.message {
                Message::Revocation(r) => {
                    let node = self.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || node.receive_revocation(Some(peer), r))
                            .await;
                }
                other => {
                    recv.refuse(
                        nomade_wire::ErrorCode::INVALID_MESSAGE,
                        "a revocation stream carries REVOCATION only",
                    )
                    .await;
                    return Err(crate::node::peer_err(
                        &peer,
                        format!("{} on a revocation stream", other.message_type().name()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Opens a revocation stream on `conn` and sends `records` on it.
pub(crate) async fn send_revocations(
    conn: &nomade_transport::Connection,
    records: Vec<Revocation>,
) -> Result<(), NodeError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut tx = conn.open_uni(StreamRole::Revocation).await?;
    for r in records {
        let env: Envelope = envelope(r);
        tx.send(&env).await?;
    }
    tx.finish().await?;
    Ok(())
}
