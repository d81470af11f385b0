//! Envelope encode+decode throughput beside a same-run baseline of plain
//! rmp-serde + blake3 on the same message.
//!
//! Run with `cargo xtask bench` (which also prints the ratios) or
//! `cargo bench -p nomade-wire --bench codec`.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nomade_wire::{samples, Decoder, Envelope, Message, MessageId};
use std::hint::black_box;

/// The baseline: what any MessagePack + BLAKE3 codec must do at least
/// (serialize, hash, deserialize, verify), without our framing or checks.
fn baseline_round_trip<T>(msg: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let payload = rmp_serde::to_vec_named(msg).expect("serialize");
    let sum = blake3::hash(&payload);
    let back: T = rmp_serde::from_slice(&payload).expect("deserialize");
    assert_eq!(blake3::hash(&payload), sum);
    back
}

fn nomade_round_trip(env: &Envelope, buf: &mut BytesMut, decoder: &mut Decoder) -> Envelope {
    env.encode_into(buf).expect("encode");
    decoder.decode(buf).expect("decode").expect("a whole frame")
}

fn bench_message<T>(c: &mut Criterion, name: &str, msg: T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + Clone + Into<Message>,
{
    let env = Envelope::new(
        MessageId::from([3; 16]),
        samples::SAMPLE_TIMESTAMP,
        msg.clone(),
    );
    let frame_len = env.to_bytes().expect("encode").len() as u64;
    let mut group = c.benchmark_group(format!("codec/{name}"));
    group.throughput(Throughput::Bytes(frame_len));
    let mut buf = BytesMut::with_capacity(frame_len as usize * 2);
    let mut decoder = Decoder::new();
    group.bench_function("nomade", |b| {
        b.iter(|| black_box(nomade_round_trip(black_box(&env), &mut buf, &mut decoder)))
    });
    group.bench_function("baseline", |b| {
        b.iter(|| black_box(baseline_round_trip(black_box(&msg))))
    });
    group.finish();
}

/// An `ARTIFACT_CHUNK` encoded in pieces, its data not copied (what a QUIC
/// stream sends), beside the same frame encoded into one buffer.
fn bench_chunk_in_pieces(c: &mut Criterion) {
    let env = Envelope::new(
        MessageId::from([3; 16]),
        samples::SAMPLE_TIMESTAMP,
        samples::full_chunk(),
    );
    let mut group = c.benchmark_group("codec/artifact_chunk_64k_encode");
    group.throughput(Throughput::Bytes(
        env.to_bytes().expect("encode").len() as u64
    ));
    group.bench_function("nomade", |b| {
        b.iter(|| black_box(black_box(&env).encode_shared().expect("encode")))
    });
    let mut buf = BytesMut::new();
    group.bench_function("baseline", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&env).encode_into(&mut buf).expect("encode");
            black_box(&buf);
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let hello = samples::all()
        .into_iter()
        .find_map(|s| match s.envelope.message {
            Message::Hello(h) => Some(h),
            _ => None,
        })
        .expect("a HELLO sample");
    bench_message(c, "hello", hello);
    bench_message(c, "sync_operation", samples::small_sync_operation());
    bench_message(c, "artifact_chunk_64k", samples::full_chunk());
    bench_chunk_in_pieces(c);
}

criterion_group!(benches, codec);
criterion_main!(benches);
