//! Nomade's collaborative text against `yrs` (Yjs) and `automerge` on the real
//! editing traces of `nomade-crdt/tests/data/editing-traces`.
//!
//! For each trace and implementation, the remote updates are first prepared,
//! untimed, exactly as the trace's author (or its agents, each on the state of
//! the transaction's `parents`) produces them: one per patch (keystroke). Then
//! the time to apply all of them, in causal order (the trace's order), to a
//! fresh document is measured, and the document's text is checked against
//! the trace's `endContent`.
//!
//! Each (trace, implementation) runs in its own child process, so that its
//! heap is its own. A counting global allocator measures the heap the
//! receiving document retains after the replay (what it holds once every
//! update is applied and dropped), for every implementation alike.
//!
//! Run: `cargo run --release -- [--quick] [--runs N] [--out DIR]`.

#[path = "../../nomade-crdt/tests/common/traces.rs"]
mod traces;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, Change, ObjId, ObjType, ReadDoc, TextEncoding, ROOT};
use nomade_crdt::{Replica, ReplicaConfig};
use nomade_wire::SyncOperation;
use traces::{Patch, Trace};
use yrs::updates::decoder::Decode;
use yrs::{GetString, ReadTxn, Text, TextRef, Transact, Update};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static HEAP: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a
// counter is updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            HEAP.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HEAP.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            HEAP.fetch_sub(layout.size(), Ordering::Relaxed);
            HEAP.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes currently allocated on the heap.
fn heap_now() -> usize {
    HEAP.load(Ordering::Relaxed)
}

/// The traces: (name, file).
const TRACES: [(&str, &str); 6] = [
    ("automerge-paper", "automerge-paper.json.gz"),
    ("rustcode", "rustcode.json.gz"),
    ("sveltecomponent", "sveltecomponent.json.gz"),
    ("seph-blog1", "seph-blog1.json.gz"),
    ("friendsforever", "friendsforever.json.gz"),
    ("clownschool", "clownschool.json.gz"),
];

/// The implementations, in report order.
const IMPLS: [&str; 3] = ["nomade", "yrs", "automerge"];

/// Loads a trace from nomade-crdt's test data (`traces::load` resolves its
/// path against the crate it is compiled in, which is not nomade-crdt here).
fn load(file: &str) -> Trace {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../nomade-crdt/tests/data/editing-traces")
        .join(file);
    let gz = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("cannot open trace {}: {e}", path.display()));
    let mut json = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut json)
        .unwrap_or_else(|e| panic!("cannot gunzip trace {}: {e}", path.display()));
    serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("trace {} is not valid JSON: {e}", path.display()))
}

fn keystrokes(trace: &Trace) -> usize {
    trace.txns.iter().map(|t| t.patches.len()).sum()
}

/// One collaborating implementation: an author's (or agent's) document that
/// produces updates, and a receiving document that applies them.
trait Peer: Sized {
    /// An update as prepared and kept between runs.
    type Wire: Clone;
    /// An update in the form the receiver's apply call takes (prepared from
    /// `Wire` untimed, before each run).
    type Received;
    /// The receiving document.
    type Receiver;

    /// `n` agents' documents, and the updates a receiver needs before any
    /// agent's (setting up what the agents start from).
    /// `ascii`: every patch of the trace inserts ASCII only.
    fn agents(n: usize, ascii: bool) -> (Vec<Self>, Vec<Self::Wire>);
    /// Applies one patch locally; returns the updates it produced.
    fn local(&mut self, patch: &Patch) -> Vec<Self::Wire>;
    /// Applies another agent's update.
    fn remote(&mut self, update: &Self::Wire);
    /// The agent's current text.
    fn text(&mut self) -> String;

    /// Turns a prepared update into what the receiver applies (untimed).
    fn receivable(update: &Self::Wire) -> Self::Received;
    /// A fresh receiving document (timed).
    fn receiver() -> Self::Receiver;
    /// Applies one remote update (timed).
    fn receive(receiver: &mut Self::Receiver, update: Self::Received);
    /// The receiver's text (untimed).
    fn received_text(receiver: &mut Self::Receiver) -> String;

    /// Whether to also measure [`Peer::receive_all`] (one bulk call).
    const HAS_BATCH: bool = false;
    /// The whole history as a device that holds it would send it to one
    /// catching up (prepared once, untimed).
    type Batch;
    /// Prepares [`Peer::Batch`] from every update.
    fn batch(updates: &[Self::Wire]) -> Self::Batch;
    /// The batch in the form the bulk call takes (untimed, before each run).
    fn batch_received(batch: &Self::Batch) -> Vec<Self::Received>;
    /// Applies all updates in one call (timed), where the implementation has
    /// a bulk path.
    fn receive_all(receiver: &mut Self::Receiver, updates: Vec<Self::Received>) {
        for u in updates {
            Self::receive(receiver, u);
        }
    }
}

/// Nomade: one `SyncOperation` stream per `Replica`.
struct Nomade(Replica);

/// What a Nomade receiver applies: one operation, or a whole state.
enum NomadeUpdate {
    /// A remote operation.
    Op(SyncOperation),
    /// A snapshot (`SYNC_SNAPSHOT`'s data), adopted whole.
    State(Vec<u8>),
}

impl Peer for Nomade {
    type Wire = SyncOperation;
    type Received = NomadeUpdate;
    type Receiver = Replica;

    fn agents(n: usize, _ascii: bool) -> (Vec<Self>, Vec<SyncOperation>) {
        let agents = (0..n)
            .map(|a| Nomade(Replica::new(format!("agent-{a}"))))
            .collect();
        (agents, Vec::new())
    }
    fn local(&mut self, patch: &Patch) -> Vec<SyncOperation> {
        traces::splice(&mut self.0, patch)
    }
    fn remote(&mut self, update: &SyncOperation) {
        self.0
            .apply_remote(update.clone())
            .expect("nomade: an agent rejected another agent's operation");
    }
    fn text(&mut self) -> String {
        self.0.text("paper", "text").unwrap_or_default()
    }
    fn receivable(update: &SyncOperation) -> NomadeUpdate {
        NomadeUpdate::Op(update.clone())
    }
    fn receiver() -> Replica {
        Replica::new("reader")
    }
    fn receive(receiver: &mut Replica, update: NomadeUpdate) {
        match update {
            NomadeUpdate::Op(op) => {
                receiver
                    .apply_remote(op)
                    .expect("nomade: the receiver rejected an operation");
                // What a node does: the applied operations go to its
                // store, not the replica (it takes them once per commit,
                // not per operation: here they are dropped in place).
                receiver.discard_applied();
            }
            NomadeUpdate::State(bytes) => {
                *receiver = Replica::from_snapshot("reader", &bytes, ReplicaConfig::default())
                    .expect("nomade: the snapshot restores");
            }
        }
    }
    fn received_text(receiver: &mut Replica) -> String {
        receiver.text("paper", "text").unwrap_or_default()
    }
    const HAS_BATCH: bool = true;
    /// The fastest path for a device catching up, as for yrs: the whole
    /// state in one message (the snapshot a holder sends a device that
    /// lacks history, `SYNC_SNAPSHOT`), adopted by `Replica::from_snapshot`.
    type Batch = Vec<u8>;
    fn batch(updates: &[SyncOperation]) -> Vec<u8> {
        let mut holder = Replica::new("holder");
        for op in updates {
            holder
                .apply_remote(op.clone())
                .expect("nomade: the holder applies the history");
        }
        holder.snapshot().expect("nomade: the holder's snapshot")
    }
    fn batch_received(batch: &Vec<u8>) -> Vec<NomadeUpdate> {
        vec![NomadeUpdate::State(batch.clone())]
    }
}

/// yrs: one v1 update per transaction, captured with `observe_update_v1`.
struct Yrs {
    doc: yrs::Doc,
    text: TextRef,
    /// Updates emitted by the document's transactions since last drained.
    emitted: Rc<RefCell<Vec<Vec<u8>>>>,
    /// The whole trace is ASCII: code points are bytes.
    ascii: bool,
}

impl Yrs {
    /// Converts a code-point range to the doc's offsets (UTF-8 bytes, yrs's
    /// default `OffsetKind`).
    fn byte_range(&self, position: usize, len: usize) -> (u32, u32) {
        let s = self.text.get_string(&self.doc.transact());
        let byte = |cp: usize| s.char_indices().nth(cp).map_or(s.len(), |(i, _)| i);
        let (start, end) = (byte(position), byte(position + len));
        let to_u32 = |x: usize| u32::try_from(x).expect("yrs offsets are u32");
        (to_u32(start), to_u32(end - start))
    }
}

impl Peer for Yrs {
    type Wire = Vec<u8>;
    type Received = Update;
    type Receiver = (yrs::Doc, TextRef);

    fn agents(n: usize, ascii: bool) -> (Vec<Self>, Vec<Vec<u8>>) {
        let agents = (0..n)
            .map(|a| {
                let doc = yrs::Doc::with_client_id(a as u64 + 1);
                let text = doc.get_or_insert_text("text");
                let emitted: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
                let sink = emitted.clone();
                doc.observe_update_v1("bench", move |_, e| {
                    sink.borrow_mut().push(e.update.clone());
                })
                .expect("no transaction is open");
                Yrs {
                    doc,
                    text,
                    emitted,
                    ascii,
                }
            })
            .collect();
        (agents, Vec::new())
    }
    fn local(&mut self, patch: &Patch) -> Vec<Vec<u8>> {
        let (pos, del) = if self.ascii {
            (patch.0 as u32, patch.1 as u32)
        } else {
            self.byte_range(patch.0, patch.1)
        };
        {
            let mut txn = self.doc.transact_mut();
            if del > 0 {
                self.text.remove_range(&mut txn, pos, del);
            }
            if !patch.2.is_empty() {
                self.text.insert(&mut txn, pos, &patch.2);
            }
        } // commit: the observer receives this transaction's update
        std::mem::take(&mut *self.emitted.borrow_mut())
    }
    fn remote(&mut self, update: &Vec<u8>) {
        let update = Update::decode_v1(update).expect("yrs: undecodable update");
        self.doc
            .transact_mut()
            .apply_update(update)
            .expect("yrs: an agent rejected another agent's update");
        // The observer also reports applied remote updates: not ours to send.
        self.emitted.borrow_mut().clear();
    }
    fn text(&mut self) -> String {
        self.text.get_string(&self.doc.transact())
    }
    fn receivable(update: &Vec<u8>) -> Update {
        Update::decode_v1(update).expect("yrs: undecodable update")
    }
    fn receiver() -> (yrs::Doc, TextRef) {
        let doc = yrs::Doc::with_client_id(1_000_000);
        let text = doc.get_or_insert_text("text");
        (doc, text)
    }
    fn receive(receiver: &mut (yrs::Doc, TextRef), update: Update) {
        receiver
            .0
            .transact_mut()
            .apply_update(update)
            .expect("yrs: the receiver rejected an update");
    }
    fn received_text(receiver: &mut (yrs::Doc, TextRef)) -> String {
        receiver.1.get_string(&receiver.0.transact())
    }
    const HAS_BATCH: bool = true;
    /// yrs's fastest path for a device catching up: the whole document as
    /// one update, as a Yjs peer answers a new one (`encode_state_as_update`
    /// of a document holding everything; `merge_updates_v1` of the 260,000
    /// updates did not finish in ten minutes).
    type Batch = Vec<u8>;
    fn batch(updates: &[Vec<u8>]) -> Vec<u8> {
        let (doc, _text) = Self::receiver();
        {
            let mut txn = doc.transact_mut();
            for u in updates {
                let update = Update::decode_v1(u).expect("yrs: undecodable update");
                txn.apply_update(update).expect("yrs: an update applies");
            }
        }
        let whole = doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        whole
    }
    fn batch_received(batch: &Vec<u8>) -> Vec<Update> {
        vec![Update::decode_v1(batch).expect("yrs: the whole state decodes")]
    }
}

/// automerge: one change per patch (a committed `AutoCommit` transaction).
struct Automerge {
    doc: AutoCommit,
    text: ObjId,
}

fn automerge_text_obj(doc: &AutoCommit) -> ObjId {
    match doc.get(ROOT, "text") {
        Ok(Some((_, id))) => id,
        other => panic!("automerge: no text object at the root: {other:?}"),
    }
}

impl Peer for Automerge {
    type Wire = Change;
    type Received = Change;
    type Receiver = AutoCommit;

    fn agents(n: usize, _ascii: bool) -> (Vec<Self>, Vec<Change>) {
        // The text object must be created once and shared: created by
        // separate agents, the objects would conflict.
        let mut base = AutoCommit::new_with_encoding(TextEncoding::UnicodeCodePoint)
            .with_actor(ActorId::from(b"setup".as_slice()));
        base.put_object(ROOT, "text", ObjType::Text)
            .expect("automerge: creating the text object");
        let setup = base
            .get_last_local_change()
            .expect("automerge: the setup change");
        let agents = (0..n)
            .map(|a| {
                let mut doc = base.fork();
                doc.set_actor(ActorId::from(format!("agent-{a}").into_bytes()));
                let text = automerge_text_obj(&doc);
                Automerge { doc, text }
            })
            .collect();
        (agents, vec![setup])
    }
    fn local(&mut self, patch: &Patch) -> Vec<Change> {
        let del = isize::try_from(patch.1).expect("delete length fits isize");
        self.doc
            .splice_text(&self.text, patch.0, del, &patch.2)
            .expect("automerge: trace patch out of range");
        match self.doc.commit() {
            Some(hash) => vec![self
                .doc
                .get_change_by_hash(&hash)
                .expect("automerge: the change just committed")],
            None => Vec::new(),
        }
    }
    fn remote(&mut self, update: &Change) {
        self.doc
            .apply_changes(std::iter::once(update.clone()))
            .expect("automerge: an agent rejected another agent's change");
    }
    fn text(&mut self) -> String {
        self.doc.text(&self.text).expect("automerge: text")
    }
    fn receivable(update: &Change) -> Change {
        update.clone()
    }
    fn receiver() -> AutoCommit {
        AutoCommit::new_with_encoding(TextEncoding::UnicodeCodePoint)
            .with_actor(ActorId::from(b"reader".as_slice()))
    }
    fn receive(receiver: &mut AutoCommit, update: Change) {
        receiver
            .apply_changes(std::iter::once(update))
            .expect("automerge: the receiver rejected a change");
    }
    const HAS_BATCH: bool = true;
    type Batch = Vec<Change>;
    fn batch(updates: &[Change]) -> Vec<Change> {
        updates.to_vec()
    }
    fn batch_received(batch: &Vec<Change>) -> Vec<Change> {
        batch.clone()
    }
    fn receive_all(receiver: &mut AutoCommit, updates: Vec<Change>) {
        receiver
            .apply_changes(updates)
            .expect("automerge: the receiver rejected a batch of changes");
    }
    fn received_text(receiver: &mut AutoCommit) -> String {
        let text = automerge_text_obj(receiver);
        receiver.text(&text).expect("automerge: text")
    }
}

/// Replays the trace through `P`'s agents (one author for a sequential
/// trace) and returns every update in the trace's (causal) order.
///
/// As `traces::replay_concurrent` does for Nomade: before each transaction,
/// its agent receives exactly the other agents' updates that the
/// transaction's `parents` include.
/// Also returns, for each patch in trace order, how many updates precede the
/// end of it (so that a prefix of patches maps to a prefix of updates).
fn prepare<P: Peer>(trace: &Trace) -> (Vec<P::Wire>, Vec<usize>, Duration) {
    assert!(
        trace.start_content.is_empty(),
        "traces with a startContent are not supported"
    );
    let n = trace.num_agents.max(1);
    let ascii = trace.start_content.is_ascii()
        && trace
            .txns
            .iter()
            .all(|t| t.patches.iter().all(|p| p.2.is_ascii()));
    let (mut agents, mut all) = P::agents(n, ascii);
    // The time the authors spend on their own keystrokes (local edits
    // that produce the updates), the other agents' updates excluded.
    let mut typing = Duration::ZERO;
    let mut ends = Vec::with_capacity(keystrokes(trace));
    // Each agent's own updates, and how many it had after each of its transactions.
    let mut own: Vec<Vec<P::Wire>> = vec![Vec::new(); n];
    let mut txn_end: Vec<Vec<usize>> = vec![Vec::new(); n];
    // applied[a][b]: how many of agent b's updates agent a has applied.
    let mut applied = vec![vec![0usize; n]; n];
    // For each transaction, how many transactions of each agent its state includes.
    let mut after: Vec<Vec<usize>> = Vec::with_capacity(trace.txns.len());
    for (i, txn) in trace.txns.iter().enumerate() {
        let a = txn.agent;
        assert!(a < n, "transaction {i}: agent {a} out of range");
        let mut need = vec![0usize; n];
        if trace.num_agents == 0 {
            // Sequential trace: each transaction follows the previous one.
            need[0] = txn_end[0].len();
        }
        for &p in &txn.parents {
            assert!(p < i, "transaction {i}: parent {p} is not earlier");
            for (b, k) in after[p].iter().enumerate() {
                need[b] = need[b].max(*k);
            }
        }
        for b in (0..n).filter(|&b| b != a) {
            let target = if need[b] == 0 {
                0
            } else {
                txn_end[b][need[b] - 1]
            };
            assert!(
                applied[a][b] <= target,
                "transaction {i}: agent {a} is ahead of its parents"
            );
            for u in &own[b][applied[a][b]..target] {
                agents[a].remote(u);
            }
            applied[a][b] = target;
        }
        assert_eq!(
            txn_end[a].len(),
            need[a],
            "transaction {i}: an agent's transactions are totally ordered"
        );
        for p in &txn.patches {
            let start = Instant::now();
            let updates = agents[a].local(p);
            typing += start.elapsed();
            all.extend(updates.iter().cloned());
            ends.push(all.len());
            own[a].extend(updates);
        }
        txn_end[a].push(own[a].len());
        need[a] += 1;
        after.push(need);
    }
    if trace.num_agents == 0 {
        let text = agents[0].text();
        assert!(
            text == trace.end_content,
            "{}: the author's text after the trace is not endContent ({} vs {} chars)",
            std::any::type_name::<P>(),
            text.chars().count(),
            trace.end_content.chars().count()
        );
    }
    (all, ends, typing)
}

/// Cuts a sequential trace to its first `limit` patches and sets its
/// `endContent` to the text they produce.
fn truncate(trace: &mut Trace, limit: usize) {
    assert!(
        trace.num_agents == 0,
        "only sequential traces can be cut (a concurrent one has no reference text for a prefix)"
    );
    let mut left = limit;
    trace.txns.retain_mut(|t| {
        t.patches.truncate(left);
        left -= t.patches.len();
        !t.patches.is_empty()
    });
    let mut text: Vec<char> = trace.start_content.chars().collect();
    for p in trace.txns.iter().flat_map(|t| &t.patches) {
        text.splice(p.0..p.0 + p.1, p.2.chars());
    }
    trace.end_content = text.into_iter().collect();
}

/// Applies `updates` to a fresh receiver `runs` times (stopping after the
/// first run if it took over [`REPEAT_UNDER`]), checks the text against
/// `expected` and returns the best time, and the heap the receiver retains
/// after the first run (the updates consumed and dropped).
fn measure<P: Peer>(
    what: &str,
    updates: &[P::Wire],
    expected: &str,
    runs: usize,
    batch: bool,
) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut retained = 0;
    // The batch is prepared once; preparing it builds and frees a whole
    // document, which leaves the allocator sorting freed chunks during the
    // next run (40-150 ms here), so that run is a warm-up, not measured.
    let prepared = batch.then(|| P::batch(updates));
    let warmups = usize::from(batch);
    for run in 0..runs + warmups {
        if run > warmups && best > REPEAT_UNDER {
            break;
        }
        let heap_before = heap_now();
        let received: Vec<P::Received> = match &prepared {
            Some(b) => P::batch_received(b),
            None => updates.iter().map(P::receivable).collect(),
        };
        let start = Instant::now();
        let mut receiver = P::receiver();
        if batch {
            P::receive_all(&mut receiver, received);
        } else {
            for u in received {
                P::receive(&mut receiver, u);
            }
        }
        let elapsed = start.elapsed();
        if run >= warmups {
            best = best.min(elapsed);
        }
        if run == warmups {
            retained = heap_now().saturating_sub(heap_before);
        }
        let text = P::received_text(&mut receiver);
        if text != expected {
            let at = text.chars().zip(expected.chars()).position(|(x, y)| x != y);
            panic!(
                "{what}: the receiver's text is not the expected text \
                 ({} vs {} chars, first difference at char {at:?})",
                text.chars().count(),
                expected.chars().count()
            );
        }
        drop(receiver);
    }
    (best, retained)
}

/// A run whose first repetition takes longer than this is not repeated.
const REPEAT_UNDER: Duration = Duration::from_secs(30);

/// Per-update automerge on the sequential trace applies only this many
/// first patches: each `apply_changes` call costs time proportional to the
/// document, so the whole trace (259,778 patches) would take hours.
const AUTOMERGE_SEQUENTIAL_CAP: usize = 20_000;

/// Child process: prepares, then measures; prints one line per mode:
/// `mode best_secs updates keystrokes_applied capped retained_heap_bytes`.
fn child<P: Peer>(trace_name: &str, implementation: &str, runs: usize) {
    let file = TRACES
        .iter()
        .find(|(n, _)| *n == trace_name)
        .unwrap_or_else(|| panic!("unknown trace {trace_name}"))
        .1;
    let trace = load(file);
    let keys = keystrokes(&trace);
    let prep_start = Instant::now();
    let (updates, ends, typing) = prepare::<P>(&trace);
    eprintln!(
        "  {trace_name}/{implementation}: prepared {} updates in {:.1} s, {:.3} s of it typing",
        updates.len(),
        prep_start.elapsed().as_secs_f64(),
        typing.as_secs_f64()
    );
    // Local typing: what the authors' devices paid per keystroke.
    println!(
        "{implementation}-local {} {} {keys} false 0",
        typing.as_secs_f64(),
        updates.len()
    );
    let cap = (implementation == "automerge" && trace.num_agents == 0)
        .then_some(AUTOMERGE_SEQUENTIAL_CAP)
        .filter(|&c| c < keys);
    let mut modes = vec![(implementation.to_string(), false, cap)];
    if P::HAS_BATCH {
        modes.push((format!("{implementation}-batch"), true, None));
    }
    for (mode, batch, cap) in modes {
        let what = format!("{trace_name}/{mode}");
        let (applied, expected, n) = match cap {
            Some(c) => {
                let mut prefix = load(file);
                truncate(&mut prefix, c);
                (&updates[..ends[c - 1]], prefix.end_content, c)
            }
            None => (&updates[..], trace.end_content.clone(), keys),
        };
        let (best, retained) = measure::<P>(&what, applied, &expected, runs, batch);
        eprintln!(
            "  {what}: {:.3} s for {n} keystrokes{}, {retained} bytes of heap retained",
            best.as_secs_f64(),
            if cap.is_some() { " (capped)" } else { "" }
        );
        println!(
            "{mode} {} {} {n} {} {retained}",
            best.as_secs_f64(),
            applied.len(),
            cap.is_some()
        );
    }
}

/// One measured (trace, mode).
struct Measured {
    mode: String,
    secs: f64,
    updates: usize,
    keystrokes: usize,
    capped: bool,
    /// Heap the receiving document retains after the replay.
    retained: usize,
}

impl Measured {
    fn ns_per_keystroke(&self) -> f64 {
        self.secs * 1e9 / self.keystrokes as f64
    }

    fn heap_per_keystroke(&self) -> f64 {
        self.retained as f64 / self.keystrokes as f64
    }
}

fn run_child(trace: &str, implementation: &str, runs: usize) -> Vec<Measured> {
    let exe = std::env::current_exe().expect("own executable path");
    let out = Command::new(exe)
        .args(["--child", trace, implementation, &runs.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("spawning the child process");
    assert!(
        out.status.success(),
        "{trace}/{implementation} failed: {}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 6, "unexpected child output {line:?}");
            Measured {
                mode: f[0].to_string(),
                secs: f[1].parse().expect("child seconds"),
                updates: f[2].parse().expect("child update count"),
                keystrokes: f[3].parse().expect("child keystroke count"),
                capped: f[4] == "true",
                retained: f[5].parse().expect("child heap bytes"),
            }
        })
        .collect()
}

struct Args {
    runs: usize,
    out: PathBuf,
    child: Option<(String, String)>,
}

fn parse_args() -> Args {
    let mut args = Args {
        runs: 3,
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench"),
        child: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.runs = 1,
            "--runs" => {
                args.runs = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--runs takes a positive number")
            }
            "--out" => args.out = PathBuf::from(it.next().expect("--out takes a directory")),
            "--child" => {
                const USAGE: &str = "--child TRACE IMPL RUNS";
                let trace = it.next().expect(USAGE);
                let implementation = it.next().expect(USAGE);
                args.runs = it.next().and_then(|n| n.parse().ok()).expect(USAGE);
                args.child = Some((trace, implementation));
            }
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown argument {other:?}; use [--quick] [--runs N] [--out DIR]"),
        }
    }
    args
}

fn main() {
    let args = parse_args();
    if let Some((trace, implementation)) = &args.child {
        match implementation.as_str() {
            "nomade" => child::<Nomade>(trace, "nomade", args.runs),
            "yrs" => child::<Yrs>(trace, "yrs", args.runs),
            "automerge" => child::<Automerge>(trace, "automerge", args.runs),
            other => panic!("unknown implementation {other}"),
        }
        return;
    }
    println!(
        "bench-peers: best of {} run(s); yrs {}, automerge {}",
        args.runs, YRS_VERSION, AUTOMERGE_VERSION
    );
    let mut report = Vec::new();
    let mut table = Vec::new();
    for (name, file) in TRACES {
        let keys = keystrokes(&load(file));
        let results: Vec<Measured> = IMPLS
            .iter()
            .flat_map(|implementation| run_child(name, implementation, args.runs))
            .collect();
        let ns_of = |mode: &str| {
            results
                .iter()
                .find(|m| m.mode == mode)
                .map(Measured::ns_per_keystroke)
        };
        let nomade = ns_of("nomade").expect("nomade measured");
        // Peers as the brief defines them: one remote update at a time.
        let fastest_peer = ["yrs", "automerge"]
            .iter()
            .filter_map(|m| ns_of(m))
            .fold(f64::INFINITY, f64::min);
        let ratio = nomade / fastest_peer;
        // Each mode against yrs in the same mode: "yrs", "yrs-batch", "yrs-local".
        let yrs_same_mode = |mode: &str| {
            let suffix = mode.split_once('-').map_or("", |(_, s)| s);
            let yrs = if suffix.is_empty() {
                "yrs".to_string()
            } else {
                format!("yrs-{suffix}")
            };
            ns_of(&yrs)
        };
        let nomade_vs_yrs =
            |mode: &str| -> Option<f64> { Some(ns_of(mode)? / yrs_same_mode(mode)?) };
        for m in &results {
            table.push(format!(
                "{name:<16} {:<16} {:>8}{} {:>8} {:>12.0} {:>10.1} {:>8.2} {:>10.1}",
                m.mode,
                m.keystrokes,
                if m.capped { "*" } else { " " },
                m.updates,
                m.ns_per_keystroke(),
                m.secs * 1e3,
                yrs_same_mode(&m.mode).map_or(f64::NAN, |y| m.ns_per_keystroke() / y),
                m.heap_per_keystroke(),
            ));
        }
        report.push(serde_json::json!({
            "trace": name,
            "keystrokes": keys,
            "results": results.iter().map(|m| serde_json::json!({
                "impl": m.mode,
                "ns_per_keystroke": m.ns_per_keystroke(),
                "total_ms": m.secs * 1e3,
                "updates": m.updates,
                "keystrokes_applied": m.keystrokes,
                "capped": m.capped,
                "retained_heap_bytes": m.retained,
                "heap_bytes_per_keystroke": m.heap_per_keystroke(),
            })).collect::<Vec<_>>(),
            "nomade_ratio_to_fastest_peer": ratio,
            "nomade_batch_ratio_to_yrs_batch": nomade_vs_yrs("nomade-batch"),
            "nomade_local_ratio_to_yrs_local": nomade_vs_yrs("nomade-local"),
        }));
    }
    println!(
        "\n{:<16} {:<16} {:>9} {:>8} {:>12} {:>10} {:>8} {:>10}",
        "trace", "impl", "keys", "updates", "ns/keystroke", "total ms", "vs yrs", "heap B/key"
    );
    for row in &table {
        println!("{row}");
    }
    println!(
        "vs yrs: ns/keystroke / yrs's in the same mode (yrs is the fastest peer in each)\n\
         heap B/key: heap the receiving document retains after the replay, per keystroke\n\
         *: only the first {AUTOMERGE_SEQUENTIAL_CAP} keystrokes (see README)\n\
         -batch: the whole history applied in one call (nomade: the history joined into runs, \
         as a holder stores it; yrs: every update merged into one; automerge: one apply_changes)\n\
         -local: the authors' own typing, per keystroke (local edits producing the updates)"
    );
    let json = serde_json::json!({
        "runs": args.runs,
        "yrs_version": YRS_VERSION,
        "automerge_version": AUTOMERGE_VERSION,
        "traces": report,
    });
    std::fs::create_dir_all(&args.out)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", args.out.display()));
    let path = args.out.join("peers.json");
    let text = serde_json::to_string_pretty(&json).expect("JSON of numbers and strings");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    println!("written {}", path.display());
}

/// The versions this crate pins in its Cargo.toml.
const YRS_VERSION: &str = "0.28.1";
const AUTOMERGE_VERSION: &str = "0.12.0";
