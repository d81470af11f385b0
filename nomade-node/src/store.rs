//! The node's durable state: a redb database in the data directory.
//!
//! Tables:
//! - `ops`: the operation log. Each operation has an arrival sequence number
//!   (1, 2, ...). Arrival order is a causal order (an operation is stored only
//!   once it was applied), so replaying the log in order rebuilds the replica,
//!   and scanning it from a cursor yields what a subscriber has not yet seen.
//!   Each row holds a *run* of consecutive operations, keyed by the sequence
//!   number of its first: a `0x00` byte, the run's length (u32, big-endian),
//!   then the operations as the payload of a `BATCHED_SYNC` (the device ids
//!   they name in a table, once, and the operations naming them by index;
//!   decoded with the wire's checks, canonical form included). An append cuts
//!   its operations into runs of about 60 KiB: a sync that applies
//!   thousands of operations in one transaction writes a few rows, not
//!   thousands, and each fits a 64 KiB page.
//! - `peers`: device id -> MessagePack [`PeerRecord`].
//! - `meta`: small settings (device name), the snapshot's header, and the
//!   store's format ([`STORE_FORMAT`], 4 bytes big-endian under
//!   `store_format`). A database of another format is refused when opened
//!   ([`StoreError::Format`]), never misread.
//!
//! Every write is one redb transaction committed with immediate durability:
//! when a method returns `Ok`, the data survives a crash or `kill -9`.
//!
//! A write that fails for lack of room is [`StoreError::Full`] (any other
//! I/O failure [`StoreError::Io`]). redb refuses every transaction after a
//! failed write until the database is reopened; the store reopens it on the
//! next call, so a node whose disk filled up carries on once space is freed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{PoisonError, RwLock};

use nomade_transport::stream::now_ms;
use nomade_transport::KnownPaths;

use bytes::BytesMut;
use nomade_wire::{BatchEncoder, Limits, Message, MessageType, SyncOperation, VersionVector};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

const OPS: TableDefinition<u64, &[u8]> = TableDefinition::new("ops");
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// What each paired device acknowledged (stored durably on its side), as a
/// version vector: device id -> MessagePack `VersionVector`. Written
/// without a disk sync of its own (it becomes durable with the next
/// commit that has one); after a crash a device is known to hold a little
/// less than it does, which only holds more history back.
const ACKED: TableDefinition<&str, &[u8]> = TableDefinition::new("acked");
/// For each row of `OPS` (by its first sequence number): the version vector
/// of the operations stored before it. Those are exactly the operations it
/// covers (the log is in applied order, each device's operations in counter
/// order without gaps), so a peer whose version vector covers it lacks
/// nothing before that row: a pusher starts there, not at the beginning.
const FRONTIERS: TableDefinition<u64, &[u8]> = TableDefinition::new("frontiers");

/// The latest snapshot of the replica, in chunks (index -> bytes); its
/// header (format, sequence number covered, length, BLAKE3) is the `META`
/// entry [`SNAPSHOT_KEY`].
const SNAPSHOT: TableDefinition<u32, &[u8]> = TableDefinition::new("snapshot");

/// What this device knows of artifacts whose content it may not hold
/// (artifact id in hex -> MessagePack [`ArtifactRecord`]): their metadata,
/// asked of a holder, and whether the user pinned them.
const ARTIFACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("artifacts");

/// What the node keeps of an artifact besides its content (which lives in
/// the artifact store): its metadata as a holder described it, and whether
/// it is pinned (its content is fetched whatever the policy, and never
/// evicted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// Its size in bytes, when known.
    pub size: Option<u64>,
    /// Its MIME type, when known.
    pub mime_type: Option<String>,
    /// Whether the user pinned it.
    pub pinned: bool,
}

/// The `META` key of the store's format.
const FORMAT_KEY: &str = "store_format";

/// The store format this build writes and reads: 4 since sequence
/// insertions carry their right origin (`before`) and snapshots their
/// elements' origins (snapshot format 4, then 5: a snapshot of another
/// version in a store is refused when the store opens); 3 since snapshots became the
/// format a device may send another (fields as their concurrent values)
/// and the log may be compacted (format 2 came with operations version 2,
/// format 1 before). A database whose `OPS` holds rows and that has no
/// format entry was written by an earlier build: format 1.
pub const STORE_FORMAT: u32 = 4;

/// The `META` key of the compacted frontier: the version vector (MessagePack)
/// of the operations the log no longer holds (dropped by compaction, or
/// never received as operations because they came in a peer's snapshot).
/// Absent: the log holds every operation applied.
const COMPACTED_KEY: &str = "compacted";

/// The `META` key of the log's base: the sequence number the log's first
/// row follows once rows were dropped (8 bytes big-endian), so that
/// sequence numbers keep growing when every row is gone.
const LOG_BASE_KEY: &str = "log_base";

/// The `META` key of the remembered network paths (`KnownPaths`,
/// MessagePack): hints for the transport, kept across restarts.
const KNOWN_PATHS_KEY: &str = "known_paths";
/// The `META` key of the snapshot's header.
const SNAPSHOT_KEY: &str = "snapshot";

/// Snapshot chunk size: each fills about one 64 KiB page.
const SNAPSHOT_CHUNK: usize = 60 * 1024;

/// The snapshot's header in `META`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotHeader {
    /// Layout of this header and its chunks: 2 (LZ4-compressed).
    format: u32,
    /// The operations it covers: every one stored up to this sequence number.
    seq: u64,
    /// Its length in bytes, as stored (compressed).
    len: u64,
    /// BLAKE3 of its bytes as stored.
    blake3: [u8; 32],
    /// Its length once unpacked.
    raw_len: u64,
}

/// The snapshot format this build writes and reads: 2, the snapshot
/// compressed with LZ4 (block format).
const SNAPSHOT_FORMAT: u32 = 2;

/// LZ4 never unpacks a byte to more than this many: a header announcing
/// more than that is damaged, and is refused before anything is allocated.
const LZ4_MAX_RATIO: u64 = 255;

/// Operations between two recorded frontiers, at least: a reconnecting peer
/// is sent from at most about this many operations (plus a row) before
/// what it lacks.
const FRONTIER_EVERY: u64 = 256;

/// What the node remembers about a paired device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The peer's device id (its pinned key).
    pub device_id: String,
    /// The name it announced, if any.
    pub name: Option<String>,
    /// Addresses it can be reached at, best first: typed by the user, used
    /// to pair, or learned from its connections (the most recent first).
    pub addresses: Vec<String>,
    /// When a session with it last ended or was last up (ms since the Unix
    /// epoch), if ever.
    #[serde(default)]
    pub last_seen_ms: Option<i64>,
    /// Its artifact key (X25519 public key, hex), learned from the device
    /// itself: what an artifact sealed for it is wrapped for
    /// ([`crate::Node::put_artifact_for`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_key: Option<String>,
}

/// Most addresses kept per peer; the oldest learned one goes first.
pub const MAX_PEER_ADDRESSES: usize = 8;

impl PeerRecord {
    /// A record of `device_id` with nothing known yet.
    pub fn new(device_id: &str) -> PeerRecord {
        PeerRecord {
            device_id: device_id.to_string(),
            name: None,
            addresses: Vec::new(),
            last_seen_ms: None,
            artifact_key: None,
        }
    }

    /// Puts `addr` first among the addresses (once), keeping at most
    /// [`MAX_PEER_ADDRESSES`].
    pub fn remember_address(&mut self, addr: &str) {
        self.addresses.retain(|a| a != addr);
        self.addresses.insert(0, addr.to_string());
        self.addresses.truncate(MAX_PEER_ADDRESSES);
    }
}

/// First byte of a row holding a run of operations as they are.
const RUN_MARKER: u8 = 0x00;

/// First byte of a row holding a run of operations compressed with LZ4
/// (block format), its uncompressed length after the count.
const RUN_MARKER_LZ4: u8 = 0x01;

/// Most bytes a compressed row may unpack to: no row written is larger
/// (rows are cut at about 60 KiB, an operation fits a frame), so a damaged
/// length can never make a read allocate more.
const MAX_ROW_PAYLOAD: usize = 16 << 20;

/// A commit whose operations follow a row stored smaller than this joins
/// that row (rewritten in the same transaction) instead of starting its
/// own: a commit per keystroke does not leave a row per keystroke, and rows
/// grow large enough to compress.
const JOIN_ROWS_BELOW: usize = 4096;

/// A run's row is closed once it reaches this size. redb gives a row that
/// does not fit a 4 KiB leaf a page of its own, rounded up to a power of two:
/// one 1.1 MB row (a sync's five thousand operations) took a 2 MiB page, so
/// the database wrote 1.7 bytes per byte stored. Rows of at most about 60 KiB
/// fill 64 KiB pages.
const RUN_ROW_TARGET: usize = 60 * 1024;

/// The operations as runs: (count, row) pairs, each row at most about
/// [`RUN_ROW_TARGET`] bytes (or one operation, if larger).
fn encode_runs(ops: &[SyncOperation]) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
    encode_runs_after(BatchEncoder::new(RUN_ROW_TARGET), ops)
}

/// [`encode_runs`], the first row starting with what `batch` holds.
fn encode_runs_after(
    mut batch: BatchEncoder,
    ops: &[SyncOperation],
) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
    let encode = |e: nomade_wire::EncodeError| StoreError::Encode(e.to_string());
    let mut rows = Vec::new();
    let close = |batch: &mut BatchEncoder, rows: &mut Vec<(u32, Vec<u8>)>| {
        let count = batch.len() as u32;
        let mut payload = BytesMut::with_capacity(RUN_ROW_TARGET + 1024);
        batch.finish_payload(&mut payload)?;
        let packed = lz4_flex::block::compress(&payload);
        let mut row = Vec::with_capacity(9 + packed.len().min(payload.len()));
        if packed.len() + 4 < payload.len() {
            row.push(RUN_MARKER_LZ4);
            row.extend_from_slice(&count.to_be_bytes());
            row.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            row.extend_from_slice(&packed);
        } else {
            row.push(RUN_MARKER);
            row.extend_from_slice(&count.to_be_bytes());
            row.extend_from_slice(&payload);
        }
        rows.push((count, row));
        Ok::<(), nomade_wire::EncodeError>(())
    };
    for op in ops {
        match batch.push(op) {
            Ok(true) => {}
            Ok(false) => {
                close(&mut batch, &mut rows).map_err(encode)?;
                if !batch.push(op).map_err(encode)? {
                    return Err(StoreError::Encode("an operation fits no row".into()));
                }
            }
            // Larger than a row: a row of its own.
            Err(nomade_wire::EncodeError::PayloadTooLarge { .. }) => {
                if !batch.is_empty() {
                    close(&mut batch, &mut rows).map_err(encode)?;
                }
                let mut alone = BatchEncoder::new(u32::MAX as usize);
                alone.push(op).map_err(encode)?;
                close(&mut alone, &mut rows).map_err(encode)?;
            }
            Err(e) => return Err(encode(e)),
        }
    }
    if !batch.is_empty() {
        close(&mut batch, &mut rows).map_err(encode)?;
    }
    Ok(rows)
}

fn corrupt_op(seq: u64, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what: format!("operation {seq}: {what}"),
    }
}

/// How many operations the row keyed `first` holds, from its header.
fn run_len(first: u64, row: &[u8]) -> Result<u64, StoreError> {
    match row {
        [RUN_MARKER | RUN_MARKER_LZ4, a, b, c, d, ..] => {
            match u32::from_be_bytes([*a, *b, *c, *d]) {
                0 => Err(corrupt_op(first, "empty run")),
                n => Ok(u64::from(n)),
            }
        }
        [RUN_MARKER | RUN_MARKER_LZ4, ..] => Err(corrupt_op(first, "truncated run header")),
        _ => Err(corrupt_op(first, "not a run of operations")),
    }
}

/// The row keyed `first` as the number of operations it holds and their
/// `BATCHED_SYNC` payload (unpacked if the row is compressed).
fn split_run(first: u64, row: &[u8]) -> Result<(u64, Cow<'_, [u8]>), StoreError> {
    let count = run_len(first, row)?;
    match row {
        [RUN_MARKER, _, _, _, _, payload @ ..] => Ok((count, Cow::Borrowed(payload))),
        [RUN_MARKER_LZ4, _, _, _, _, a, b, c, d, packed @ ..] => {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            if len > MAX_ROW_PAYLOAD {
                return Err(corrupt_op(first, format!("a row unpacking to {len} bytes")));
            }
            let payload = lz4_flex::block::decompress(packed, len)
                .map_err(|e| corrupt_op(first, format!("compressed run: {e}")))?;
            if payload.len() != len {
                return Err(corrupt_op(
                    first,
                    format!(
                        "a row of {} bytes where {len} were announced",
                        payload.len()
                    ),
                ));
            }
            Ok((count, Cow::Owned(payload)))
        }
        _ => Err(corrupt_op(first, "truncated run header")),
    }
}

/// Decodes the row keyed `first`, calling `f` with each operation and its
/// sequence number until it breaks.
fn decode_run(
    first: u64,
    row: &[u8],
    mut f: impl FnMut(u64, SyncOperation) -> ControlFlow<()>,
) -> Result<(), StoreError> {
    let (count, payload) = split_run(first, row)?;
    for (i, op) in decode_payload_ops(first, count, &payload)?
        .into_iter()
        .enumerate()
    {
        if f(first + i as u64, op).is_break() {
            return Ok(());
        }
    }
    Ok(())
}

/// The `count` operations of the `BATCHED_SYNC` payload of the row keyed
/// `first`, checked like any received payload.
fn decode_payload_ops(
    first: u64,
    count: u64,
    payload: &[u8],
) -> Result<Vec<SyncOperation>, StoreError> {
    let limits = Limits {
        max_payload: u32::MAX,
        ..Limits::default()
    };
    let ops = match Message::decode_payload(MessageType::BatchedSync, payload, &limits) {
        Ok(Message::BatchedSync(batch)) => batch.operations,
        Ok(_) => return Err(corrupt_op(first, "not a run of operations")),
        Err(e) => return Err(corrupt_op(first, e)),
    };
    if ops.len() as u64 != count {
        return Err(corrupt_op(
            first,
            format!("{} operations where the run announces {count}", ops.len()),
        ));
    }
    Ok(ops)
}

/// One stored row, as a pusher reads it: its operations' `BATCHED_SYNC`
/// payload as stored (unpacked), and the frontiers recorded before and
/// after it, when there are.
#[derive(Debug)]
pub struct StoredRun {
    /// The sequence number of its first operation.
    pub first: u64,
    /// How many operations it holds.
    pub count: u64,
    /// Their `BATCHED_SYNC` payload, canonical, as stored.
    pub payload: Vec<u8>,
    /// The payload as stored compressed, if it is: its length as a `u32`
    /// and an LZ4 block, the payload of a compressed frame as it is
    /// (docs/PROTOCOL.md, "Compressed frames").
    pub packed: Option<Vec<u8>>,
    /// The version vector of everything stored before it, if recorded.
    pub before: Option<VersionVector>,
    /// The version vector of everything up to its end, if recorded (the
    /// next row's frontier).
    pub after: Option<VersionVector>,
}

impl StoredRun {
    /// Its operations, decoded and checked.
    pub fn operations(&self) -> Result<Vec<SyncOperation>, StoreError> {
        decode_payload_ops(self.first, self.count, &self.payload)
    }
}

fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    match e.into() {
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            StoreError::Corrupt {
                what: io.to_string(),
            }
        }
        redb::Error::Io(io) => StoreError::from_io(io),
        redb::Error::PreviousIo => StoreError::Io(std::io::Error::other(
            "an earlier write failed; the database will be reopened",
        )),
        redb::Error::Corrupted(what) => StoreError::Corrupt { what },
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked,
        other => StoreError::Database(other.to_string()),
    }
}

/// The node's redb database.
///
/// After a failed write (a full disk, an I/O error) redb refuses every later
/// transaction until the database is reopened. The store does that itself:
/// the failing call returns its error, and the next call reopens the file
/// (redb repairs it if needed) and goes on, so a node whose disk filled up
/// carries on, without a restart, once there is room again.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    slot: RwLock<Slot>,
    /// When a write last failed for want of space (ms since the Unix
    /// epoch), and when operations were last appended: the disk is full
    /// while the first is the later.
    full_at_ms: AtomicI64,
    appended_at_ms: AtomicI64,
}

/// redb's page cache. Its default (1 GiB) keeps every page a scan touched:
/// opening a store replays the whole log, so the cache ended up holding the
/// whole file, resident for as long as the node ran. The history is read
/// sequentially (replay, a pusher's scan), which a cache does not help; the
/// B-tree's interior pages and a commit's dirty pages fit in far less.
const CACHE_BYTES: usize = 32 << 20;

/// The open database, or none once an I/O error closed it.
#[derive(Debug)]
struct Slot {
    db: Option<Database>,
    /// Counts the openings, so that an error seen on one opening never
    /// closes the next.
    generation: u64,
}

/// Opens the file and makes sure the tables exist.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| match db_err(e) {
            StoreError::Database(what) => StoreError::Corrupt { what },
            other => other,
        })?;
    if ready(&db)? {
        return Ok(db);
    }
    let txn = db.begin_write().map_err(db_err)?;
    {
        let ops = txn.open_table(OPS).map_err(db_err)?;
        txn.open_table(PEERS).map_err(db_err)?;
        let mut meta = txn.open_table(META).map_err(db_err)?;
        txn.open_table(FRONTIERS).map_err(db_err)?;
        txn.open_table(SNAPSHOT).map_err(db_err)?;
        txn.open_table(ACKED).map_err(db_err)?;
        txn.open_table(ARTIFACTS).map_err(db_err)?;
        let found = match meta.get(FORMAT_KEY).map_err(db_err)? {
            Some(raw) => match <[u8; 4]>::try_from(raw.value()) {
                Ok(b) => Some(u32::from_be_bytes(b)),
                Err(_) => {
                    return Err(StoreError::Corrupt {
                        what: format!("the store format entry ({} bytes)", raw.value().len()),
                    })
                }
            },
            // Operations without a format entry: an earlier build's.
            None if !ops.is_empty().map_err(db_err)? => Some(1),
            None => None,
        };
        match found {
            Some(STORE_FORMAT) => {}
            Some(found) => {
                // Dropped without committing: nothing changes on disk.
                return Err(StoreError::Format {
                    found,
                    supported: STORE_FORMAT,
                });
            }
            None => {
                meta.insert(FORMAT_KEY, STORE_FORMAT.to_be_bytes().as_slice())
                    .map_err(db_err)?;
            }
        }
    }
    txn.commit().map_err(db_err)?;
    Ok(db)
}

/// Whether every table exists and the store is of this build's format,
/// read without a write transaction (which would sync the disk at every
/// start): then there is nothing to create or record.
fn ready(db: &Database) -> Result<bool, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let exists = |result: Result<(), redb::TableError>| match result {
        Ok(()) => Ok(true),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
        Err(e) => Err(db_err(e)),
    };
    let all = [
        exists(txn.open_table(OPS).map(drop))?,
        exists(txn.open_table(PEERS).map(drop))?,
        exists(txn.open_table(FRONTIERS).map(drop))?,
        exists(txn.open_table(SNAPSHOT).map(drop))?,
        exists(txn.open_table(ACKED).map(drop))?,
        exists(txn.open_table(ARTIFACTS).map(drop))?,
    ];
    if all.contains(&false) {
        return Ok(false);
    }
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(db_err(e)),
    };
    let format = meta.get(FORMAT_KEY).map_err(db_err)?;
    Ok(format.is_some_and(|raw| raw.value() == STORE_FORMAT.to_be_bytes().as_slice()))
}

impl Store {
    /// Opens (or creates) the database at `path`. A truncated or corrupt file
    /// is a [`StoreError::Corrupt`], never a crash.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = open_database(path)?;
        Ok(Store {
            path: path.to_path_buf(),
            slot: RwLock::new(Slot {
                db: Some(db),
                generation: 0,
            }),
            full_at_ms: AtomicI64::new(i64::MIN),
            appended_at_ms: AtomicI64::new(i64::MIN),
        })
    }

    /// Runs `f` on the open database, reopening it first if an I/O error
    /// closed it. An I/O error from `f` closes it, for the next call to
    /// reopen.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (result, generation) = {
            let mut slot = self.slot.read().unwrap_or_else(PoisonError::into_inner);
            if slot.db.is_none() {
                drop(slot);
                if let Err(e) = self.reopen() {
                    self.note_failure(&e);
                    return Err(e);
                }
                slot = self.slot.read().unwrap_or_else(PoisonError::into_inner);
            }
            let Some(db) = slot.db.as_ref() else {
                return Err(StoreError::Io(std::io::Error::other(
                    "the database was closed after an I/O error",
                )));
            };
            (f(db), slot.generation)
        };
        if let Err(e) = &result {
            self.note_failure(e);
            if e.needs_reopen() {
                let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
                if slot.generation == generation && slot.db.is_some() {
                    tracing::warn!(error = %e, "a database write failed: the database is reopened on next use");
                    slot.db = None;
                }
            }
        }
        result
    }

    fn note_failure(&self, e: &StoreError) {
        if matches!(e, StoreError::Full(_)) {
            self.full_at_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Reopens the database an I/O error closed (unless another call did).
    fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        if slot.db.is_none() {
            slot.db = Some(open_database(&self.path)?);
            slot.generation += 1;
            tracing::info!(path = %self.path.display(), "database reopened after an I/O error");
        }
        Ok(())
    }

    /// Gives the space of pages no longer used (rows of a replaced snapshot,
    /// the copies every commit leaves) back to the file system: redb keeps
    /// them for reuse, so without this the file only grows. Waits for the
    /// transactions under way; returns whether anything moved.
    pub fn compact(&self) -> Result<bool, StoreError> {
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = slot.db.as_mut() else {
            return Ok(false);
        };
        let mut moved = false;
        // Each pass moves what it can; a few passes reach the fixed point.
        for _ in 0..4 {
            match db.compact() {
                Ok(true) => moved = true,
                Ok(false) => break,
                Err(redb::CompactionError::Storage(e)) => return Err(db_err(e)),
                Err(e) => return Err(StoreError::Database(e.to_string())),
            }
        }
        Ok(moved)
    }

    /// Durably appends operations (already applied to the replica) in order,
    /// in one transaction. Returns the sequence number of the last one.
    /// `before`, when given, is the version vector of everything stored
    /// before `ops`: each new row's frontier is recorded from it (see
    /// [`Store::resume_point`]).
    pub fn append_ops(
        &self,
        ops: &[SyncOperation],
        before: Option<&VersionVector>,
    ) -> Result<u64, StoreError> {
        if ops.is_empty() {
            return self.last_seq();
        }
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            let last = write_rows(&txn, ops, before)?;
            txn.commit().map_err(db_err)?;
            self.appended_at_ms.store(now_ms(), Ordering::Relaxed);
            Ok(last)
        })
    }

    /// The compacted frontier: the version vector of the operations the log
    /// no longer holds (empty when it holds every one applied). A peer
    /// whose version vector does not cover it is sent a snapshot first.
    pub fn compacted(&self) -> Result<VersionVector, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let meta = txn.open_table(META).map_err(db_err)?;
            meta_vv(&meta, COMPACTED_KEY)
        })
    }

    /// Drops the log's rows that every holder of `floor` has and that the
    /// snapshot covers, in one transaction: those before the last row whose
    /// frontier `floor` covers and that the snapshot's sequence number
    /// reaches. The compacted frontier becomes that row's frontier. Returns
    /// how many operations were dropped (0 when nothing could be). A crash
    /// leaves the log as it was or compacted, never in between.
    pub fn compact_log(&self, floor: &VersionVector) -> Result<u64, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            let dropped = {
                let snapshot_seq = {
                    let meta = txn.open_table(META).map_err(db_err)?;
                    let header = meta.get(SNAPSHOT_KEY).map_err(db_err)?;
                    match header {
                        None => return Ok(0),
                        Some(h) => {
                            rmp_serde::from_slice::<SnapshotHeader>(h.value())
                                .map_err(|e| StoreError::Corrupt {
                                    what: format!("the snapshot's header: {e}"),
                                })?
                                .seq
                        }
                    }
                };
                let mut marks = txn.open_table(FRONTIERS).map_err(db_err)?;
                // The cut: the last recorded frontier at or before the
                // snapshot that the floor covers (frontiers grow with the
                // sequence number).
                let mut cut = None;
                for entry in marks
                    .range(..=snapshot_seq.saturating_add(1))
                    .map_err(db_err)?
                    .rev()
                {
                    let (k, v) = entry.map_err(db_err)?;
                    let frontier = decode_frontier(k.value(), v.value())?;
                    if covers(floor, &frontier) {
                        cut = Some((k.value(), frontier));
                        break;
                    }
                }
                let Some((cut, frontier)) = cut else {
                    return Ok(0);
                };
                let mut table = txn.open_table(OPS).map_err(db_err)?;
                let first = match table.first().map_err(db_err)? {
                    Some((k, _)) => k.value(),
                    None => return Ok(0),
                };
                if first >= cut {
                    return Ok(0);
                }
                table.retain_in(..cut, |_, _| false).map_err(db_err)?;
                marks.retain_in(..cut, |_, _| false).map_err(db_err)?;
                let mut meta = txn.open_table(META).map_err(db_err)?;
                let mut compacted = meta_vv(&meta, COMPACTED_KEY)?;
                for (actor, &c) in &frontier {
                    nomade_crdt::raise_counter(&mut compacted, actor, c);
                }
                let compacted = rmp_serde::to_vec_named(&compacted)
                    .map_err(|e| StoreError::Encode(e.to_string()))?;
                meta.insert(COMPACTED_KEY, compacted.as_slice())
                    .map_err(db_err)?;
                meta.insert(LOG_BASE_KEY, (cut - 1).to_be_bytes().as_slice())
                    .map_err(db_err)?;
                cut - first
            };
            txn.commit().map_err(db_err)?;
            Ok(dropped)
        })
    }

    /// Replaces the whole history with a state adopted from a peer's
    /// snapshot, in one transaction: `raw` (the peer's snapshot, whose
    /// version vector is `base`) becomes the snapshot, covering every
    /// sequence number so far, and `tail` (the operations this device holds
    /// that `base` does not cover, in an order they apply in) the whole log
    /// after it; `base` becomes the compacted frontier. Returns the
    /// snapshot's sequence number and the new last one.
    pub fn rebase(
        &self,
        raw: &[u8],
        base: &VersionVector,
        tail: &[SyncOperation],
    ) -> Result<(u64, u64), StoreError> {
        let last = self.last_seq()?;
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            let seq = {
                txn.open_table(OPS)
                    .map_err(db_err)?
                    .retain(|_, _| false)
                    .map_err(db_err)?;
                txn.open_table(FRONTIERS)
                    .map_err(db_err)?
                    .retain(|_, _| false)
                    .map_err(db_err)?;
                {
                    let mut meta = txn.open_table(META).map_err(db_err)?;
                    meta.insert(LOG_BASE_KEY, last.to_be_bytes().as_slice())
                        .map_err(db_err)?;
                    let compacted = rmp_serde::to_vec_named(base)
                        .map_err(|e| StoreError::Encode(e.to_string()))?;
                    meta.insert(COMPACTED_KEY, compacted.as_slice())
                        .map_err(db_err)?;
                }
                write_snapshot(&txn, last, raw)?;
                if tail.is_empty() {
                    last
                } else {
                    write_rows(&txn, tail, Some(base))?
                }
            };
            txn.commit().map_err(db_err)?;
            self.appended_at_ms.store(now_ms(), Ordering::Relaxed);
            Ok((last, seq))
        })
    }

    /// When a write failed for want of space (disk full, quota, file size
    /// limit), if no operations were appended since: the disk is then
    /// evidently still full.
    pub fn full_since_ms(&self) -> Option<i64> {
        let full = self.full_at_ms.load(Ordering::Relaxed);
        (full != i64::MIN && full >= self.appended_at_ms.load(Ordering::Relaxed)).then_some(full)
    }

    /// Where a pusher serving a peer whose version vector is `peer` may
    /// start: a sequence number such that every operation up to it is
    /// covered by `peer` (0 when no row's frontier is). Pass it to
    /// [`Store::scan_ops`] as `after`.
    pub fn resume_point(&self, peer: &VersionVector) -> Result<u64, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let marks = txn.open_table(FRONTIERS).map_err(db_err)?;
            // Frontiers grow with the sequence number: the last covered one
            // is found from the end (a peer that is nearly up to date stops
            // at once).
            for entry in marks.iter().map_err(db_err)?.rev() {
                let (k, v) = entry.map_err(db_err)?;
                if covers(peer, &decode_frontier(k.value(), v.value())?) {
                    return Ok(k.value() - 1);
                }
            }
            Ok(0)
        })
    }

    /// Calls `f` with every stored operation whose sequence number is above
    /// `after`, in order, until it returns `ControlFlow::Break`.
    pub fn scan_ops(
        &self,
        after: u64,
        mut f: impl FnMut(u64, SyncOperation) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(OPS).map_err(db_err)?;
            let wanted = after.saturating_add(1);
            let start = row_holding(&table, wanted)?;
            for entry in table.range(start..).map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let first = k.value();
                let mut flow = ControlFlow::Continue(());
                decode_run(first, v.value(), |seq, op| {
                    if seq >= wanted {
                        flow = f(seq, op);
                    }
                    flow
                })?;
                if flow.is_break() {
                    break;
                }
            }
            Ok(())
        })
    }

    /// Calls `f` with every stored row that holds an operation above
    /// `after` (the first one may also hold some at or below it), in order,
    /// until it returns `ControlFlow::Break`: what a pusher sends, as stored.
    pub fn scan_runs(
        &self,
        after: u64,
        mut f: impl FnMut(StoredRun) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(OPS).map_err(db_err)?;
            let marks = txn.open_table(FRONTIERS).map_err(db_err)?;
            let frontier = |key: u64| -> Result<Option<VersionVector>, StoreError> {
                match marks.get(key).map_err(db_err)? {
                    None => Ok(None),
                    Some(v) => decode_frontier(key, v.value()).map(Some),
                }
            };
            let start = row_holding(&table, after.saturating_add(1))?;
            for entry in table.range(start..).map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let first = k.value();
                let (count, payload) = split_run(first, v.value())?;
                let packed = match v.value() {
                    [RUN_MARKER_LZ4, _, _, _, _, packed @ ..] => Some(packed.to_vec()),
                    _ => None,
                };
                let run = StoredRun {
                    first,
                    count,
                    payload: payload.into_owned(),
                    packed,
                    before: frontier(first)?,
                    after: frontier(first + count)?,
                };
                if f(run).is_break() {
                    break;
                }
            }
            Ok(())
        })
    }

    /// The sequence number of the newest stored operation (0 when empty).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(OPS).map_err(db_err)?;
            let last = match table.last().map_err(db_err)? {
                Some((k, v)) => k.value() + run_len(k.value(), v.value())? - 1,
                None => log_base(&txn.open_table(META).map_err(db_err)?)?,
            };
            Ok(last)
        })
    }

    /// Records (or replaces) a paired device.
    pub fn put_peer(&self, peer: &PeerRecord) -> Result<(), StoreError> {
        let bytes = rmp_serde::to_vec_named(peer).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.put(PEERS, &peer.device_id, &bytes)
    }

    /// Changes the record of `device_id` (a new one if there is none) with
    /// `change`, in one write transaction: concurrent updates of one peer
    /// (a pairing, a session starting, the user adding an address) never
    /// overwrite each other. Returns the record as stored.
    pub fn update_peer(
        &self,
        device_id: &str,
        change: impl Fn(&mut PeerRecord),
    ) -> Result<PeerRecord, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            let record = {
                let mut table = txn.open_table(PEERS).map_err(db_err)?;
                let mut record = match table.get(device_id).map_err(db_err)? {
                    Some(v) => decode_peer(device_id, v.value())?,
                    // A device is first recorded when it pairs: that
                    // counts as seeing it.
                    None => PeerRecord {
                        last_seen_ms: Some(now_ms()),
                        ..PeerRecord::new(device_id)
                    },
                };
                change(&mut record);
                let bytes = rmp_serde::to_vec_named(&record)
                    .map_err(|e| StoreError::Encode(e.to_string()))?;
                table.insert(device_id, bytes.as_slice()).map_err(db_err)?;
                record
            };
            txn.commit().map_err(db_err)?;
            Ok(record)
        })
    }

    /// Forgets a paired device. Returns whether it was known.
    pub fn remove_peer(&self, device_id: &str) -> Result<bool, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            let existed = {
                let mut table = txn.open_table(PEERS).map_err(db_err)?;
                let removed = table.remove(device_id).map_err(db_err)?;
                removed.is_some()
            };
            txn.commit().map_err(db_err)?;
            Ok(existed)
        })
    }

    /// Every artifact record (see [`ArtifactRecord`]), by artifact id in
    /// hex. A record that does not decode is [`StoreError::Corrupt`].
    pub fn artifact_records(&self) -> Result<BTreeMap<String, ArtifactRecord>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(ARTIFACTS).map_err(db_err)?;
            let mut out = BTreeMap::new();
            for entry in table.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                out.insert(
                    k.value().to_string(),
                    decode_artifact_record(k.value(), v.value())?,
                );
            }
            Ok(out)
        })
    }

    /// The record of artifact `id` (hex), if there is one.
    pub fn artifact_record(&self, id: &str) -> Result<Option<ArtifactRecord>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(ARTIFACTS).map_err(db_err)?;
            table
                .get(id)
                .map_err(db_err)?
                .map(|v| decode_artifact_record(id, v.value()))
                .transpose()
        })
    }

    /// Changes the record of artifact `id` (hex) in one transaction,
    /// creating it if needed; a record left empty is removed.
    pub fn update_artifact_record(
        &self,
        id: &str,
        change: impl Fn(&mut ArtifactRecord),
    ) -> Result<ArtifactRecord, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            let record = {
                let mut table = txn.open_table(ARTIFACTS).map_err(db_err)?;
                let mut record = match table.get(id).map_err(db_err)? {
                    Some(v) => decode_artifact_record(id, v.value())?,
                    None => ArtifactRecord::default(),
                };
                change(&mut record);
                if record == ArtifactRecord::default() {
                    table.remove(id).map_err(db_err)?;
                } else {
                    let bytes = rmp_serde::to_vec_named(&record)
                        .map_err(|e| StoreError::Encode(e.to_string()))?;
                    table.insert(id, bytes.as_slice()).map_err(db_err)?;
                }
                record
            };
            txn.commit().map_err(db_err)?;
            Ok(record)
        })
    }

    /// The record of one paired device, if it is one.
    pub fn peer(&self, device_id: &str) -> Result<Option<PeerRecord>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(PEERS).map_err(db_err)?;
            let record = table.get(device_id).map_err(db_err)?;
            record
                .map(|v| decode_peer(device_id, v.value()))
                .transpose()
        })
    }

    /// Every paired device.
    pub fn peers(&self) -> Result<Vec<PeerRecord>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(PEERS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                out.push(decode_peer(k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    /// Records what these devices acknowledged (replacing what was recorded
    /// for them), in one transaction: synced to disk when `durable`, else
    /// durable with the next commit that is.
    pub fn put_acked(
        &self,
        acked: &[(String, VersionVector)],
        durable: bool,
    ) -> Result<(), StoreError> {
        if acked.is_empty() {
            return Ok(());
        }
        let rows = acked
            .iter()
            .map(|(peer, vv)| {
                rmp_serde::to_vec_named(vv)
                    .map(|bytes| (peer.as_str(), bytes))
                    .map_err(|e| StoreError::Encode(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.with_db(|db| {
            let mut txn = db.begin_write().map_err(db_err)?;
            if !durable {
                txn.set_durability(redb::Durability::None)
                    .map_err(|e| StoreError::Database(e.to_string()))?;
            }
            {
                let mut table = txn.open_table(ACKED).map_err(db_err)?;
                for (peer, bytes) in &rows {
                    table.insert(*peer, bytes.as_slice()).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)?;
            Ok(())
        })
    }

    /// What each paired device acknowledged, as recorded.
    pub fn acked(&self) -> Result<Vec<(String, VersionVector)>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(ACKED).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let vv: VersionVector =
                    rmp_serde::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                        what: format!("what {} acknowledged: {e}", k.value()),
                    })?;
                out.push((k.value().to_string(), vv));
            }
            Ok(out)
        })
    }

    /// Replaces the snapshot with `bytes`, which covers every operation
    /// stored up to sequence number `seq`, in one transaction: a crash
    /// leaves the old snapshot or the new one, whole.
    pub fn put_snapshot(&self, seq: u64, raw: &[u8]) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            write_snapshot(&txn, seq, raw)?;
            txn.commit().map_err(db_err)?;
            Ok(())
        })
    }

    /// The latest snapshot and the sequence number it covers, checked
    /// against its header: a damaged one is [`StoreError::Corrupt`], never
    /// half-read state.
    pub fn snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let bad = |what: String| StoreError::Corrupt {
            what: format!("the snapshot: {what}"),
        };
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let meta = txn.open_table(META).map_err(db_err)?;
            let Some(raw) = meta.get(SNAPSHOT_KEY).map_err(db_err)? else {
                return Ok(None);
            };
            let header: SnapshotHeader =
                rmp_serde::from_slice(raw.value()).map_err(|e| bad(format!("header: {e}")))?;
            if header.format != SNAPSHOT_FORMAT {
                return Err(bad(format!(
                    "format {} (this build reads {SNAPSHOT_FORMAT}): update Nomade",
                    header.format
                )));
            }
            let chunks = txn.open_table(SNAPSHOT).map_err(db_err)?;
            let mut bytes = Vec::with_capacity(header.len.min(1 << 30) as usize);
            for entry in chunks.iter().map_err(db_err)? {
                let (_, v) = entry.map_err(db_err)?;
                bytes.extend_from_slice(v.value());
                if bytes.len() as u64 > header.len {
                    break;
                }
            }
            if bytes.len() as u64 != header.len {
                return Err(bad(format!(
                    "{} bytes where its header says {}",
                    bytes.len(),
                    header.len
                )));
            }
            if *blake3::hash(&bytes).as_bytes() != header.blake3 {
                return Err(bad("checksum mismatch".into()));
            }
            let bound = header.len.saturating_mul(LZ4_MAX_RATIO).saturating_add(64);
            if header.raw_len > bound {
                return Err(bad(format!(
                    "{} bytes cannot unpack to {}",
                    header.len, header.raw_len
                )));
            }
            let raw_len = usize::try_from(header.raw_len)
                .map_err(|_| bad(format!("{} bytes unpacked", header.raw_len)))?;
            let raw = lz4_flex::block::decompress(&bytes, raw_len)
                .map_err(|e| bad(format!("compressed data: {e}")))?;
            if raw.len() != raw_len {
                return Err(bad(format!(
                    "{} bytes unpacked where its header says {raw_len}",
                    raw.len()
                )));
            }
            Ok(Some((header.seq, raw)))
        })
    }

    /// Reads a setting.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(META).map_err(db_err)?;
            Ok(table.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
        })
    }

    /// Writes a setting.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.put(META, key, value)
    }

    /// What the last run learned about the paths to peers (MTUs and
    /// address-validation tokens); empty when nothing was kept. A record
    /// that does not decode is [`StoreError::Corrupt`].
    pub fn known_paths(&self) -> Result<KnownPaths, StoreError> {
        match self.meta(KNOWN_PATHS_KEY)? {
            None => Ok(KnownPaths::default()),
            Some(bytes) => rmp_serde::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                what: format!("the remembered network paths do not decode: {e}"),
            }),
        }
    }

    /// Keeps `known` for the next run (see [`Store::known_paths`]).
    pub fn set_known_paths(&self, known: &KnownPaths) -> Result<(), StoreError> {
        let bytes = rmp_serde::to_vec(known).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.set_meta(KNOWN_PATHS_KEY, &bytes)
    }

    fn put(
        &self,
        def: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(def).map_err(db_err)?;
                table.insert(key, value).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
            Ok(())
        })
    }
}

/// An artifact record as stored; one that does not decode is
/// [`StoreError::Corrupt`].
fn decode_artifact_record(id: &str, bytes: &[u8]) -> Result<ArtifactRecord, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("the record of artifact {id}: {e}"),
    })
}

/// The sequence number the log's first row follows (0 unless rows were
/// dropped: see [`LOG_BASE_KEY`]).
fn log_base(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<u64, StoreError> {
    match meta.get(LOG_BASE_KEY).map_err(db_err)? {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.value())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt {
                what: "the log's base sequence number".into(),
            }),
    }
}

/// Appends `ops` to the log in `txn` (see [`Store::append_ops`]); returns
/// the sequence number of the last.
fn write_rows(
    txn: &redb::WriteTransaction,
    ops: &[SyncOperation],
    before: Option<&VersionVector>,
) -> Result<u64, StoreError> {
    let base = log_base(&txn.open_table(META).map_err(db_err)?)?;
    let mut table = txn.open_table(OPS).map_err(db_err)?;
    let mut marks = txn.open_table(FRONTIERS).map_err(db_err)?;
    let tail = table
        .last()
        .map_err(db_err)?
        .map(|(k, v)| (k.value(), v.value().to_vec()));
    // A small last row is rewritten with these operations after
    // its own; otherwise they start a row after it.
    // The operations already in the row they join (its bytes
    // taken as they are, nothing decoded), if they join one.
    let (start, joined, rows) = match tail {
        Some((first, row)) if row.len() < JOIN_ROWS_BELOW => {
            let (count, payload) = split_run(first, &row)?;
            let resumed =
                BatchEncoder::resume(RUN_ROW_TARGET, &payload).map_err(|e| corrupt_op(first, e))?;
            if resumed.len() as u64 != count {
                return Err(corrupt_op(
                    first,
                    "the run's count and its operations differ",
                ));
            }
            (first, count, encode_runs_after(resumed, ops)?)
        }
        Some((first, row)) => (first + run_len(first, &row)?, 0, encode_runs(ops)?),
        None => (base + 1, 0, encode_runs(ops)?),
    };
    // The frontier at the start of each new row: what `before`
    // covers and the operations ahead of it (the joined row
    // keeps the frontier it had).
    let mut at = before.cloned();
    let mut pending = ops.iter();
    let mut already = joined;
    let mut next = start;
    let mut last_mark = marks.last().map_err(db_err)?.map(|(k, _)| k.value());
    for (i, (count, row)) in rows.iter().enumerate() {
        table.insert(next, row.as_slice()).map_err(db_err)?;
        // One frontier per FRONTIER_EVERY operations at most:
        // small commits (one per keystroke) do not each add one.
        let due = last_mark.is_none_or(|m| next >= m + FRONTIER_EVERY);
        let keeps_its_own = i == 0 && joined > 0;
        if let (true, false, Some(vv)) = (due, keeps_its_own, at.as_ref()) {
            let frontier =
                rmp_serde::to_vec_named(vv).map_err(|e| StoreError::Encode(e.to_string()))?;
            marks.insert(next, frontier.as_slice()).map_err(db_err)?;
            last_mark = Some(next);
        }
        let new_here = u64::from(*count).saturating_sub(std::mem::take(&mut already));
        for op in pending.by_ref().take(new_here as usize) {
            if let Some(vv) = at.as_mut() {
                nomade_crdt::raise_counter(vv, &op.actor_id, op.operation.last_counter());
            }
        }
        next += u64::from(*count);
    }
    Ok(next - 1)
}

/// Replaces the snapshot in `txn` (see [`Store::put_snapshot`]).
fn write_snapshot(txn: &redb::WriteTransaction, seq: u64, raw: &[u8]) -> Result<(), StoreError> {
    let packed = lz4_flex::block::compress(raw);
    let bytes = packed.as_slice();
    let header = rmp_serde::to_vec_named(&SnapshotHeader {
        format: SNAPSHOT_FORMAT,
        seq,
        len: bytes.len() as u64,
        blake3: *blake3::hash(bytes).as_bytes(),
        raw_len: raw.len() as u64,
    })
    .map_err(|e| StoreError::Encode(e.to_string()))?;
    let mut chunks = txn.open_table(SNAPSHOT).map_err(db_err)?;
    chunks.retain(|_, _| false).map_err(db_err)?;
    for (i, chunk) in bytes.chunks(SNAPSHOT_CHUNK).enumerate() {
        let index = u32::try_from(i)
            .map_err(|_| StoreError::Encode("snapshot larger than 256 TB".into()))?;
        chunks.insert(index, chunk).map_err(db_err)?;
    }
    let mut meta = txn.open_table(META).map_err(db_err)?;
    meta.insert(SNAPSHOT_KEY, header.as_slice())
        .map_err(db_err)?;
    Ok(())
}

/// A recorded frontier (the `FRONTIERS` row of `key`), decoded.
fn decode_frontier(key: u64, bytes: &[u8]) -> Result<VersionVector, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("frontier of row {key}: {e}"),
    })
}

/// The key of the row holding sequence number `wanted`: the last starting
/// at or before it (`wanted` itself when there is none).
fn row_holding(
    table: &impl ReadableTable<u64, &'static [u8]>,
    wanted: u64,
) -> Result<u64, StoreError> {
    match table.range(..=wanted).map_err(db_err)?.next_back() {
        Some(entry) => Ok(entry.map_err(db_err)?.0.value()),
        None => Ok(wanted),
    }
}

/// Reads a version vector kept under `key` in `META` (empty when absent).
fn meta_vv(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<VersionVector, StoreError> {
    match meta.get(key).map_err(db_err)? {
        None => Ok(VersionVector::new()),
        Some(v) => rmp_serde::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
            what: format!("{key}: {e}"),
        }),
    }
}

/// Whether `vv` covers every entry of `floor`.
pub fn covers(vv: &VersionVector, floor: &VersionVector) -> bool {
    floor
        .iter()
        .all(|(a, &c)| vv.get(a).copied().unwrap_or(0) >= c)
}

fn decode_peer(device_id: &str, bytes: &[u8]) -> Result<PeerRecord, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("peer {device_id}: {e}"),
    })
}

/// The database is the replica's durable operation log.
impl nomade_crdt::OpLog for Store {
    type Error = StoreError;

    fn append(&mut self, ops: &[SyncOperation]) -> Result<(), StoreError> {
        self.append_ops(ops, None).map(drop)
    }

    fn for_each(&self, f: &mut dyn FnMut(SyncOperation)) -> Result<(), StoreError> {
        self.scan_ops(0, |_, op| {
            f(op);
            ControlFlow::Continue(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nomade_wire::{CrdtOperation, Edit, EntityType, Value};

    fn op(counter: u64) -> SyncOperation {
        SyncOperation {
            entity_id: "doc".into(),
            entity_type: EntityType::Document,
            operation: CrdtOperation {
                counter,
                deps: [("a".into(), counter - 1)].into(),
                edit: Edit::Set {
                    key: "k".into(),
                    value: Value::Int(counter as i64),
                },
            },
            timestamp: 0,
            actor_id: "a".into(),
        }
    }

    fn collect(store: &Store, after: u64) -> Vec<(u64, SyncOperation)> {
        let mut out = Vec::new();
        store
            .scan_ops(after, |seq, op| {
                out.push((seq, op));
                ControlFlow::Continue(())
            })
            .unwrap();
        out
    }

    #[test]
    fn ops_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.append_ops(&[op(1), op(2)], None).unwrap(), 2);
            assert_eq!(store.append_ops(&[op(3)], None).unwrap(), 3);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.last_seq().unwrap(), 3);
        let all = collect(&store, 0);
        assert_eq!(
            all.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(all[2].1, op(3));
        assert_eq!(collect(&store, 2).len(), 1);
    }

    /// Writes a row as it is, bypassing `append_ops`.
    fn put_row(store: &Store, key: u64, row: &[u8]) {
        let slot = store.slot.read().unwrap();
        let txn = slot.db.as_ref().unwrap().begin_write().unwrap();
        txn.open_table(OPS).unwrap().insert(key, row).unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn runs_are_scanned_from_any_position() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("node.redb")).unwrap();
        assert_eq!(store.append_ops(&[op(1), op(2), op(3)], None).unwrap(), 3);
        assert_eq!(store.append_ops(&[], None).unwrap(), 3);
        assert_eq!(store.append_ops(&[op(4)], None).unwrap(), 4);
        assert_eq!(store.append_ops(&[op(5), op(6)], None).unwrap(), 6);
        assert_eq!(store.last_seq().unwrap(), 6);
        for after in 0..=7u64 {
            let got = collect(&store, after);
            let expected: Vec<u64> = (after + 1..=6).collect();
            assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), expected);
            for (seq, o) in got {
                assert_eq!(o, op(seq), "sequence number {seq} is operation {seq}");
            }
        }
        // Stopping early stops inside a run.
        let mut seen = Vec::new();
        store
            .scan_ops(1, |seq, _| {
                seen.push(seq);
                if seq == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert_eq!(seen, vec![2]);
    }

    #[test]
    fn a_large_append_is_stored_as_rows_of_bounded_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("node.redb")).unwrap();
        assert_eq!(store.append_ops(&[op(1)], None).unwrap(), 1);
        let many: Vec<SyncOperation> = (2..=3001).map(op).collect();
        assert_eq!(store.append_ops(&many, None).unwrap(), 3001);
        let op_len = rmp_serde::to_vec_named(&op(3001)).unwrap().len();
        let slot = store.slot.read().unwrap();
        let txn = slot.db.as_ref().unwrap().begin_read().unwrap();
        let table = txn.open_table(OPS).unwrap();
        let mut expected_first = 1;
        let mut rows = 0;
        for entry in table.iter().unwrap() {
            let (k, v) = entry.unwrap();
            assert_eq!(k.value(), expected_first, "rows follow each other");
            assert!(
                v.value().len() < RUN_ROW_TARGET + op_len,
                "a row of {} bytes",
                v.value().len()
            );
            expected_first += run_len(k.value(), v.value()).unwrap();
            rows += 1;
        }
        assert_eq!(expected_first, 3002);
        assert!(rows > 2, "3000 operations of {op_len} bytes in {rows} rows");
        let all = collect(&store, 0);
        assert_eq!(all.len(), 3001);
        for (seq, o) in all {
            assert_eq!(o, op(seq));
        }
        // Scanning from inside any row starts at the right operation.
        for after in [1, 500, 1234, 3000] {
            assert_eq!(collect(&store, after)[0].0, after + 1);
        }
    }

    /// Commits of one operation each (a keystroke at a time) join the last
    /// row while it is small, so they leave a few compressed rows, not one
    /// row each; every operation reads back with its sequence number, from
    /// any position, also after reopening.
    #[test]
    fn small_commits_join_the_last_row_and_rows_are_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let store = Store::open(&path).unwrap();
        let mut before = VersionVector::new();
        for n in 1..=600 {
            assert_eq!(store.append_ops(&[op(n)], Some(&before)).unwrap(), n);
            before.insert("a".into(), n);
        }
        let (rows, compressed) = {
            let slot = store.slot.read().unwrap();
            let txn = slot.db.as_ref().unwrap().begin_read().unwrap();
            let table = txn.open_table(OPS).unwrap();
            let mut rows = 0;
            let mut compressed = 0;
            for entry in table.iter().unwrap() {
                let (_, v) = entry.unwrap();
                rows += 1;
                compressed += usize::from(v.value()[0] == RUN_MARKER_LZ4);
            }
            (rows, compressed)
        };
        assert!(rows <= 20, "600 one-operation commits in {rows} rows");
        assert!(
            compressed >= rows - 1,
            "{compressed} of {rows} rows compressed"
        );
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.last_seq().unwrap(), 600);
        for after in [0, 1, 299, 599] {
            let got = collect(&store, after);
            assert_eq!(got.len() as u64, 600 - after);
            for (seq, o) in got {
                assert_eq!(o, op(seq));
            }
        }
        // Frontiers still let a nearly up-to-date peer start near the end.
        let peer = VersionVector::from([("a".into(), 590)]);
        let resume = store.resume_point(&peer).unwrap();
        assert!(resume > 0 && resume <= 590, "resume at {resume}");
    }

    /// A snapshot is stored compressed; a header announcing more than its
    /// bytes can unpack to, or another length than they do, is refused
    /// before anything is allocated for it.
    #[test]
    fn a_snapshot_header_announcing_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("node.redb")).unwrap();
        let state: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        store.put_snapshot(9, &state).unwrap();
        assert_eq!(store.snapshot().unwrap(), Some((9, state.clone())));
        let stored = |store: &Store| -> SnapshotHeader {
            rmp_serde::from_slice(&store.meta(SNAPSHOT_KEY).unwrap().unwrap()).unwrap()
        };
        assert!(stored(&store).len < 10_000, "stored compressed");
        for raw_len in [u64::MAX, state.len() as u64 + 1, state.len() as u64 - 1] {
            let header = SnapshotHeader {
                raw_len,
                ..stored(&store)
            };
            store
                .set_meta(SNAPSHOT_KEY, &rmp_serde::to_vec_named(&header).unwrap())
                .unwrap();
            assert!(
                matches!(store.snapshot(), Err(StoreError::Corrupt { .. })),
                "raw length {raw_len}"
            );
        }
    }

    /// A database of another store format is refused, with both formats
    /// named, and left as it was; one of this format opens again.
    #[test]
    fn a_store_of_another_format_is_refused_and_left_untouched() {
        let open_raw = |path: &Path| Database::create(path).unwrap();
        // An earlier build's: operations, and no format entry.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        {
            let db = open_raw(&path);
            let txn = db.begin_write().unwrap();
            txn.open_table(OPS)
                .unwrap()
                .insert(1, rmp_serde::to_vec_named(&op(1)).unwrap().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let refused = Store::open(&path).unwrap_err();
        assert!(
            matches!(
                refused,
                StoreError::Format {
                    found: 1,
                    supported: STORE_FORMAT
                }
            ),
            "{refused:?}"
        );
        let message = refused.to_string();
        assert!(
            message.contains("older Nomade") && message.contains("nomade.redb"),
            "{message}"
        );
        // Nothing written: the row is there, no format was stamped, and the
        // next opening refuses the same way.
        {
            let db = open_raw(&path);
            let txn = db.begin_read().unwrap();
            let row = txn
                .open_table(OPS)
                .unwrap()
                .get(1)
                .unwrap()
                .map(|r| r.value().to_vec());
            assert!(
                row == Some(rmp_serde::to_vec_named(&op(1)).unwrap()),
                "the row is kept"
            );
            let stamped = txn
                .open_table(META)
                .is_ok_and(|meta| meta.get(FORMAT_KEY).unwrap().is_some());
            assert!(!stamped, "no format stamped");
        }
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::Format { found: 1, .. })
        ));
        // A later build's.
        let newer = dir.path().join("newer.redb");
        {
            let db = open_raw(&newer);
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(FORMAT_KEY, 9u32.to_be_bytes().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let refused = Store::open(&newer).unwrap_err();
        assert!(
            matches!(refused, StoreError::Format { found: 9, .. }),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("newer Nomade"), "{refused}");
        // A new store is stamped with this format and opens again.
        let fresh = dir.path().join("fresh.redb");
        drop(Store::open(&fresh).unwrap());
        let store = Store::open(&fresh).unwrap();
        store.append_ops(&[op(1)], None).unwrap();
        drop(store);
        assert_eq!(collect(&Store::open(&fresh).unwrap(), 0).len(), 1);
    }

    // BAD_INPUTS #31: damaged rows are typed errors, never a panic.
    #[test]
    fn damaged_runs_are_typed_errors() {
        let run_of = |ops: &[SyncOperation], count: u32| {
            let mut row = vec![RUN_MARKER];
            row.extend_from_slice(&count.to_be_bytes());
            let batch = nomade_wire::BatchedSync {
                operations: ops.to_vec(),
            };
            row.extend(rmp_serde::to_vec_named(&batch).unwrap());
            row
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated header", vec![RUN_MARKER, 0, 0]),
            ("empty run", run_of(&[], 0)),
            ("fewer operations than announced", run_of(&[op(1)], 2)),
            ("bytes after the run", {
                let mut r = run_of(&[op(1)], 1);
                r.push(0xc0);
                r
            }),
            ("garbage", vec![RUN_MARKER, 0, 0, 0, 1, 0xc1, 0xff]),
            ("operations one after the other, without a table", {
                let mut r = vec![RUN_MARKER, 0, 0, 0, 1];
                r.extend(rmp_serde::to_vec_named(&op(1)).unwrap());
                r
            }),
            ("not a run", rmp_serde::to_vec_named(&op(1)).unwrap()),
            ("a compressed row cut short", {
                let mut r = vec![RUN_MARKER_LZ4, 0, 0, 0, 1];
                r.extend_from_slice(&100u32.to_be_bytes());
                r.extend(lz4_flex::block::compress(&[0x90; 100])[..4].iter());
                r
            }),
            ("a compressed row announcing 4 GiB", {
                let mut r = vec![RUN_MARKER_LZ4, 0, 0, 0, 1];
                r.extend_from_slice(&u32::MAX.to_be_bytes());
                r.extend(lz4_flex::block::compress(&[0x90; 100]));
                r
            }),
            ("a compressed row longer than announced", {
                let batch = nomade_wire::BatchedSync {
                    operations: vec![op(1)],
                };
                let payload = rmp_serde::to_vec_named(&batch).unwrap();
                let mut r = vec![RUN_MARKER_LZ4, 0, 0, 0, 1];
                r.extend_from_slice(&((payload.len() - 1) as u32).to_be_bytes());
                r.extend(lz4_flex::block::compress(&payload));
                r
            }),
            (
                "a compressed header cut short",
                vec![RUN_MARKER_LZ4, 0, 0, 0, 1, 0],
            ),
        ];
        for (what, row) in cases {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("node.redb")).unwrap();
            put_row(&store, 1, &row);
            let scanned = store.scan_ops(0, |_, _| ControlFlow::Continue(()));
            assert!(
                matches!(scanned, Err(StoreError::Corrupt { .. })),
                "{what}: {scanned:?}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever bytes a row holds (random, or a valid run with bytes
        /// flipped, cut or appended), decoding it gives operations or a
        /// `Corrupt` error: never a panic, and never more operations than the
        /// run announces.
        #[test]
        fn any_row_decodes_or_is_corrupt(
            random in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            n in 1u64..5,
            flip in proptest::prelude::any::<(usize, u8)>(),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let mut valid = vec![RUN_MARKER];
            valid.extend_from_slice(&(n as u32).to_be_bytes());
            for c in 1..=n {
                valid.extend(rmp_serde::to_vec_named(&op(c)).unwrap());
            }
            let mut flipped = valid.clone();
            let i = flip.0 % flipped.len();
            flipped[i] ^= flip.1;
            let cut_short = valid[..cut % valid.len()].to_vec();
            let mut longer = valid.clone();
            longer.extend_from_slice(&random);
            for row in [random.clone(), flipped, cut_short, longer, valid] {
                let mut seqs = Vec::new();
                let result = decode_run(7, &row, |seq, _| {
                    seqs.push(seq);
                    ControlFlow::Continue(())
                });
                match result {
                    Ok(()) => {
                        let len = run_len(7, &row).unwrap_or(0);
                        proptest::prop_assert_eq!(seqs, (7..7 + len).collect::<Vec<_>>());
                    }
                    Err(StoreError::Corrupt { .. }) => {}
                    Err(other) => proptest::prop_assert!(false, "unexpected error {:?}", other),
                }
            }
        }
    }

    #[test]
    fn known_paths_round_trip_and_a_damaged_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("node.redb")).unwrap();
        assert_eq!(store.known_paths().unwrap(), KnownPaths::default());
        let known = KnownPaths {
            mtus: vec![("10.0.0.1".parse().unwrap(), 1452)],
            tokens: vec![(
                nomade_transport::paths::TokenIssuer::Address("10.0.0.1:7000".parse().unwrap()),
                vec![7; 40],
            )],
        };
        store.set_known_paths(&known).unwrap();
        assert_eq!(store.known_paths().unwrap(), known);
        store.set_meta(KNOWN_PATHS_KEY, &[0xc1, 0xff]).unwrap();
        assert!(matches!(
            store.known_paths(),
            Err(StoreError::Corrupt { what }) if what.contains("network paths")
        ));
    }

    #[test]
    fn peers_are_recorded_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("node.redb")).unwrap();
        let peer = PeerRecord {
            device_id: "abcd".into(),
            name: Some("laptop".into()),
            addresses: vec!["127.0.0.1:4000".into()],
            last_seen_ms: None,
            artifact_key: Some("11".repeat(32)),
        };
        store.put_peer(&peer).unwrap();
        assert_eq!(store.peers().unwrap(), vec![peer]);
        assert!(store.remove_peer("abcd").unwrap());
        assert!(!store.remove_peer("abcd").unwrap());
        assert!(store.peers().unwrap().is_empty());
    }

    /// Issue: a pairing stored the new peer with no address over the
    /// address the joiner had just stored. Updates merge, in one transaction.
    #[test]
    fn peer_updates_merge_and_never_drop_what_another_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("node.redb")).unwrap();
        store
            .update_peer("abcd", |p| p.remember_address("10.0.0.1:4433"))
            .unwrap();
        // Another writer that only knows the peer exists.
        store.update_peer("abcd", |_| {}).unwrap();
        let rec = store
            .update_peer("abcd", |p| p.name = Some("phone".into()))
            .unwrap();
        assert_eq!(rec.addresses, vec!["10.0.0.1:4433"]);
        assert_eq!(rec.name.as_deref(), Some("phone"));
        for i in 0..20 {
            store
                .update_peer("abcd", |p| p.remember_address(&format!("10.0.0.2:{i}")))
                .unwrap();
        }
        let rec = store
            .update_peer("abcd", |p| p.remember_address("10.0.0.2:5"))
            .unwrap();
        assert_eq!(rec.addresses.len(), MAX_PEER_ADDRESSES);
        assert_eq!(rec.addresses[0], "10.0.0.2:5");
        assert_eq!(rec.addresses[1], "10.0.0.2:19");
        assert_eq!(store.peers().unwrap(), vec![rec]);
    }

    /// A pusher starts where the peer's version vector covers everything
    /// stored before: never after an operation the peer lacks, and (with
    /// frontiers every 256 operations) not far before the first one.
    #[test]
    fn the_resume_point_skips_only_what_a_peer_has() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("node.redb")).unwrap();
        let vv = |n: u64| -> VersionVector {
            if n == 0 {
                VersionVector::new()
            } else {
                [("a".into(), n)].into()
            }
        };
        // 1,000 operations in commits of 10, each with its frontier.
        for batch in 0..100u64 {
            let ops: Vec<_> = (1..=10).map(|i| op(batch * 10 + i)).collect();
            store.append_ops(&ops, Some(&vv(batch * 10))).unwrap();
        }
        assert_eq!(store.resume_point(&vv(0)).unwrap(), 0);
        for have in [0u64, 5, 255, 256, 257, 600, 999, 1000] {
            let start = store.resume_point(&vv(have)).unwrap();
            assert!(
                start <= have,
                "{have}: skipped what the peer lacks ({start})"
            );
            assert!(have - start <= 256 + 10, "{have}: started at {start}");
        }
        // Another actor the peer lacks: back to the start.
        let other: VersionVector = [("a".into(), 1000), ("b".into(), 0)].into();
        assert!(store.resume_point(&other).unwrap() <= 1000);
        // Rows without a frontier (an older store) are never skipped to.
        let plain = Store::open(&dir.path().join("plain.redb")).unwrap();
        plain.append_ops(&[op(1), op(2)], None).unwrap();
        assert_eq!(plain.resume_point(&vv(2)).unwrap(), 0);
    }

    /// A record written before `last_seen_ms` existed still reads.
    #[test]
    fn a_peer_record_of_the_previous_format_reads() {
        #[derive(Serialize)]
        struct Old {
            device_id: String,
            name: Option<String>,
            addresses: Vec<String>,
        }
        let old = rmp_serde::to_vec_named(&Old {
            device_id: "abcd".into(),
            name: None,
            addresses: vec!["127.0.0.1:1".into()],
        })
        .unwrap();
        let rec = decode_peer("abcd", &old).unwrap();
        assert_eq!(rec.addresses, vec!["127.0.0.1:1"]);
        assert_eq!(rec.last_seen_ms, None);
    }

    // BAD_INPUTS #31: a truncated or corrupt store at start-up is a clear error.
    #[test]
    fn corrupt_database_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        std::fs::write(&path, b"this is not a database, just some bytes").unwrap();
        match Store::open(&path) {
            Err(StoreError::Corrupt { .. }) => {}
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    // BAD_INPUTS #31: a database cut short in the middle.
    #[test]
    fn truncated_database_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        {
            let store = Store::open(&path).unwrap();
            let many: Vec<_> = (1..200).map(op).collect();
            store.append_ops(&many, None).unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len / 3).unwrap();
        drop(f);
        // BAD_INPUTS #31. Either a clear error at open, or (if redb repairs
        // it) a store that reads back only what was stored, in order, or
        // says it cannot: never a panic, never an invented operation.
        let is_typed = |e: &StoreError| {
            matches!(
                e,
                StoreError::Corrupt { .. } | StoreError::Io(_) | StoreError::Database(_)
            )
        };
        match Store::open(&path) {
            Err(e) => assert!(is_typed(&e), "{e:?}"),
            Ok(store) => {
                let mut read = Vec::new();
                let scanned = store.scan_ops(0, |seq, o| {
                    read.push((seq, o));
                    ControlFlow::Continue(())
                });
                if let Err(e) = &scanned {
                    assert!(is_typed(e), "{e:?}");
                }
                for (i, (seq, o)) in read.iter().enumerate() {
                    assert_eq!(*seq, i as u64 + 1);
                    assert_eq!(*o, op(*seq));
                }
            }
        }
    }

    /// A failed write (a full disk) closes the database, and the next call
    /// reopens it: everything stored before is there, and writes work again.
    #[test]
    fn an_io_error_closes_the_database_and_the_next_call_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("node.redb")).unwrap();
        store.append_ops(&[op(1), op(2)], None).unwrap();
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let failed = store.with_db(|_| -> Result<(), StoreError> { Err(full.into()) });
        assert!(matches!(failed, Err(StoreError::Full(_))), "{failed:?}");
        assert!(store.slot.read().unwrap().db.is_none(), "still open");
        // The next call reopens it, and what was stored is there.
        assert_eq!(store.last_seq().unwrap(), 2);
        assert_eq!(store.slot.read().unwrap().generation, 1);
        // A corrupt-data error is not an I/O failure: the database stays open.
        let other = store.with_db(|_| -> Result<(), StoreError> {
            Err(StoreError::Corrupt { what: "x".into() })
        });
        assert!(other.is_err());
        assert!(store.slot.read().unwrap().db.is_some());
        store.append_ops(&[op(3)], None).unwrap();
        let all: Vec<u64> = collect(&store, 0).into_iter().map(|(s, _)| s).collect();
        assert_eq!(all, vec![1, 2, 3]);
        assert_eq!(store.slot.read().unwrap().generation, 1);
    }
}
