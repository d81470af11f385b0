//! Property: any size round-trips through put/export and through a transfer.

use proptest::prelude::*;

use nomade_artifact::{ArtifactId, Receiver, Sender};

use crate::support::{drive, store};

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_size_round_trips(len in 0usize..300 * 1024, seed: u8, cut in proptest::option::of(0u32..5)) {
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(97) ^ seed).collect();
        let (a, b, o) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (holder, fetcher) = (store(a.path()), store(b.path()));
        let id = holder.put_bytes(&data, None, &[]).unwrap();
        prop_assert_eq!(id, ArtifactId::of(&data));

        let out = o.path().join("put-export");
        holder.export(&id, &out).unwrap();
        prop_assert_eq!(&std::fs::read(&out).unwrap(), &data);

        if let Some(cut) = cut {
            let mut s = Sender::new(holder.clone(), true);
            let mut r = Receiver::new(fetcher.clone(), id, 0).unwrap();
            let (se, re) = drive(&mut s, &mut r, Some(cut));
            prop_assert!(se.is_none() && re.is_none());
        }
        if !fetcher.has(&id) {
            let mut s = Sender::new(holder, true);
            let mut r = Receiver::new(fetcher.clone(), id, 0).unwrap();
            let (se, re) = drive(&mut s, &mut r, None);
            prop_assert!(se.is_none() && re.is_none(), "{:?} {:?}", se, re);
            prop_assert!(r.is_complete());
        }
        let out = o.path().join("transfer-export");
        fetcher.export(&id, &out).unwrap();
        prop_assert_eq!(&std::fs::read(&out).unwrap(), &data);
    }
}
