//! The hashes of a transfer being received, computed beside it.
//!
//! A fetcher hashes every byte it receives twice: SHA-256 over the whole
//! artifact (checked against the id at the end) and BLAKE3 per chunk (kept in
//! the header). Neither decides whether a chunk is stored: the AEAD tag of a
//! sealed chunk, or the `chunk_hash` checked on arrival for a plaintext one,
//! already did. So they run on a thread of their own, fed in order through a
//! bounded queue, and the receiving thread only opens and writes. Buffers go
//! back and forth, so a steady transfer allocates nothing.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use nomade_wire::Hash32;
use sha2::{Digest, Sha256};

use crate::chunk::{chunk_hash, CHUNK_SIZE};
use crate::error::{ArtifactError, Result};

/// Chunks handed to the thread at a time: one wake-up per batch rather than
/// per chunk (the thread hashes faster than chunks arrive, so it would
/// otherwise sleep and be woken for every one).
const BATCH: usize = 8;
/// Batches queued for hashing at most (with `BATCH`, 4 MiB of 64 KiB chunks).
const QUEUE: usize = 8;

/// Chunks' plaintexts, each with its BLAKE3 hash when already known.
type Batch = Vec<(Vec<u8>, Option<Hash32>)>;

/// What the thread ends with: the whole hash so far, and every chunk's hash.
type Hashes = (Sha256, Vec<Hash32>);

/// The hashing thread of one transfer.
pub(crate) struct Hashing {
    chunks: Option<SyncSender<Batch>>,
    /// Chunks not yet handed over.
    pending: Batch,
    spare: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<Hashes>>,
}

fn gone() -> ArtifactError {
    ArtifactError::Io(std::io::Error::other("the hashing thread stopped"))
}

impl Hashing {
    /// Starts hashing after `chunk_hashes.len()` chunks already fed to `whole`
    /// (a resumed transfer).
    pub(crate) fn start(whole: Sha256, chunk_hashes: Vec<Hash32>) -> Result<Hashing> {
        let (chunks, queue) = mpsc::sync_channel::<Batch>(QUEUE);
        let (give_back, spare) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("nomade-artifact-hash".into())
            .spawn(move || {
                let (mut whole, mut hashes) = (whole, chunk_hashes);
                for batch in queue {
                    for (chunk, known) in batch {
                        whole.update(&chunk);
                        hashes.push(known.unwrap_or_else(|| chunk_hash(&chunk)));
                        // The receiving side may be gone already; then the
                        // buffer is simply dropped.
                        let _ = give_back.send(chunk);
                    }
                }
                (whole, hashes)
            })?;
        Ok(Hashing {
            chunks: Some(chunks),
            pending: Vec::with_capacity(BATCH),
            spare,
            thread: Some(thread),
        })
    }

    /// A buffer of `len` bytes to put a chunk's plaintext in (a returned one
    /// when there is one: its contents are to be overwritten).
    pub(crate) fn buffer(&self, len: usize) -> Vec<u8> {
        let mut buf = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK_SIZE));
        buf.resize(len, 0);
        buf
    }

    /// Queues the next chunk's plaintext, with its BLAKE3 hash if already
    /// known. Blocks while the queue is full.
    pub(crate) fn push(&mut self, plain: Vec<u8>, known_hash: Option<Hash32>) -> Result<()> {
        if self.chunks.is_none() {
            return Err(gone());
        }
        self.pending.push((plain, known_hash));
        if self.pending.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands the pending chunks to the thread.
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
        let chunks = self.chunks.as_ref().ok_or_else(gone)?;
        chunks.send(batch).map_err(|_| gone())
    }

    /// Waits for every queued chunk; returns the SHA-256 of everything fed
    /// and the BLAKE3 hash of each chunk, in order. Nothing can be pushed
    /// after this.
    pub(crate) fn finish(&mut self) -> Result<([u8; 32], Vec<Hash32>)> {
        self.flush()?;
        self.chunks = None;
        let thread = self.thread.take().ok_or_else(gone)?;
        let (whole, hashes) = thread.join().map_err(|_| gone())?;
        Ok((whole.finalize().into(), hashes))
    }
}

impl Drop for Hashing {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has drained it.
        self.chunks = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_a_direct_computation_and_resume_from_a_state() {
        let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        let mut first = Sha256::new();
        first.update(&chunks[0]);
        let mut h = Hashing::start(first, vec![chunk_hash(&chunks[0])]).expect("start");
        for (i, c) in chunks.iter().enumerate().skip(1) {
            let mut b = h.buffer(c.len());
            b.copy_from_slice(c);
            // A known hash is taken as given.
            let known = (i == 2).then_some(Hash32::ZERO);
            h.push(b, known).expect("push");
        }
        let (whole, hashes) = h.finish().expect("finish");
        let all: Vec<u8> = chunks.concat();
        assert_eq!(whole, <[u8; 32]>::from(Sha256::digest(&all)));
        let mut expected: Vec<Hash32> = chunks.iter().map(|c| chunk_hash(c)).collect();
        expected[2] = Hash32::ZERO;
        assert_eq!(hashes, expected);
        assert!(h.push(vec![1], None).is_err());
    }

    #[test]
    fn buffers_come_back_sized_as_asked() {
        let mut h = Hashing::start(Sha256::new(), Vec::new()).expect("start");
        for _ in 0..BATCH {
            h.push(vec![7u8; 100], None).expect("push");
        }
        // Whether or not the first buffer came back yet, the length is right.
        assert_eq!(h.buffer(10).len(), 10);
        assert_eq!(h.buffer(CHUNK_SIZE).len(), CHUNK_SIZE);
        drop(h);
    }
}
