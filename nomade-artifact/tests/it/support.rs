//! Shared helpers.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use nomade_artifact::{ArtifactError, ArtifactStore, DeviceKey, Receiver, Sender};

pub fn store(dir: &Path) -> ArtifactStore {
    ArtifactStore::open(dir, DeviceKey::generate(), None).expect("open store")
}

/// Exchanges messages until neither side has anything to send, or `limit`
/// chunks reached the receiver. Returns the first error of each side.
pub fn drive(
    s: &mut Sender,
    r: &mut Receiver,
    limit: Option<u32>,
) -> (Option<ArtifactError>, Option<ArtifactError>) {
    let (mut se, mut re) = (None, None);
    let mut chunks = 0u32;
    loop {
        let mut moved = false;
        while let Some(m) = r.next_message().expect("receiver outbox") {
            moved = true;
            if let Err(e) = s.handle_message(m) {
                se.get_or_insert(e);
            }
        }
        loop {
            if limit.is_some_and(|l| chunks >= l) {
                return (se, re);
            }
            match s.next_message() {
                Ok(Some(m)) => {
                    moved = true;
                    if matches!(m, nomade_wire::Message::ArtifactChunk(_)) {
                        chunks += 1;
                    }
                    if let Err(e) = r.handle_message(m) {
                        re.get_or_insert(e);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    se.get_or_insert(e);
                }
            }
        }
        if !moved {
            return (se, re);
        }
    }
}

/// Writes `len` pseudo-random bytes (xorshift, from `seed`) to `path`.
pub fn write_random_file(path: &Path, len: u64, seed: u64) {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).expect("create"));
    let mut x = seed | 1;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for b in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        w.write_all(&block[..n]).expect("write");
        left -= n as u64;
    }
    w.flush().expect("flush");
}

/// Whether two files have identical contents (streamed).
pub fn same_contents(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (
        File::open(a).expect("open a"),
        File::open(b).expect("open b"),
    );
    if fa.metadata().expect("meta").len() != fb.metadata().expect("meta").len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).expect("read a");
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).expect("read b");
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}
