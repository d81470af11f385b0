//! A ~200 MiB artifact through put, an interrupted transfer, a resume and export.

use nomade_artifact::{ArtifactId, Receiver, Sender, CHUNK_SIZE};

use crate::support::{drive, same_contents, store, write_random_file};

#[test]
fn two_hundred_mib_with_interruption_round_trips() {
    let src_dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (holder, fetcher) = (store(a.path()), store(b.path()));
    let size = 200 * 1024 * 1024 + 12_345;
    let src = src_dir.path().join("big.bin");
    write_random_file(&src, size, 0x5eed);

    let id = holder
        .put_file(
            &src,
            Some("application/octet-stream"),
            &[fetcher.public_key()],
        )
        .expect("put");
    let count = size.div_ceil(CHUNK_SIZE as u64) as u32;
    assert_eq!(holder.metadata(&id).expect("meta").chunk_count, count);

    // First attempt: cut after 1,000 chunks.
    {
        let mut s = Sender::new(holder.clone(), true);
        let mut r = Receiver::new(fetcher.clone(), id, 10).expect("receiver");
        let (se, re) = drive(&mut s, &mut r, Some(1_000));
        assert!(se.is_none() && re.is_none(), "{se:?} {re:?}");
        assert_eq!(r.progress().chunks_done, 1_000);
    }
    // Resume on a fresh pair of machines.
    let mut s = Sender::new(holder.clone(), true);
    let mut r = Receiver::new(fetcher.clone(), id, 10).expect("receiver");
    assert_eq!(r.request().resume_from, Some(1_000));
    let (se, re) = drive(&mut s, &mut r, None);
    assert!(se.is_none() && re.is_none(), "{se:?} {re:?}");
    assert!(r.is_complete() && s.is_finished());
    assert_eq!(r.progress().bytes_done, size);
    assert_eq!(r.progress().bytes_at_start, 1_000 * CHUNK_SIZE as u64);

    let out = src_dir.path().join("exported.bin");
    fetcher.export(&id, &out).expect("export");
    assert!(same_contents(&src, &out));
    assert_eq!(ArtifactId::from_hex(&id.to_hex()), Some(id));
}
