//! Store throughput: `baseline` is SHA-256 + ChaCha20-Poly1305 sealing of
//! 64 MiB in memory (the crypto floor), `put` is `ArtifactStore::put_file` of a
//! 64 MiB file (two streaming passes, chunk hashes, sealing, writes, fsync).
//! Compare the two MB/s figures from the same run.

use std::hint::black_box;
use std::time::Duration;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nomade_artifact::{ArtifactStore, DeviceKey, CHUNK_SIZE};
use sha2::{Digest, Sha256};

const SIZE: usize = 64 * 1024 * 1024;

fn artifact_store(c: &mut Criterion) {
    let data: Vec<u8> = (0..SIZE).map(|i| (i as u8).wrapping_mul(113)).collect();
    let mut g = c.benchmark_group("artifact_store");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_secs(1));

    g.bench_function("baseline", |b| {
        let cipher = ChaCha20Poly1305::new(&Key::from([7u8; 32]));
        let mut buf = Vec::with_capacity(CHUNK_SIZE);
        b.iter(|| {
            let mut whole = Sha256::new();
            for (i, chunk) in data.chunks(CHUNK_SIZE).enumerate() {
                whole.update(chunk);
                black_box(Sha256::digest(chunk));
                buf.clear();
                buf.extend_from_slice(chunk);
                let mut nonce = [0u8; 12];
                nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let tag = cipher
                    .encrypt_inout_detached(&Nonce::from(nonce), b"aad", buf.as_mut_slice().into())
                    .expect("seal");
                black_box(tag);
            }
            black_box(whole.finalize())
        })
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &data).expect("write");
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::open(store_dir.path(), DeviceKey::generate(), None).expect("store");
    g.bench_function("put", |b| {
        b.iter(|| {
            let id = store.put_file(&src, None, &[]).expect("put");
            // Remove so the next iteration stores again (no dedupe shortcut).
            store.remove(&id).expect("remove");
            black_box(id)
        })
    });
    g.finish();
}

criterion_group!(benches, artifact_store);
criterion_main!(benches);
