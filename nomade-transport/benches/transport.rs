//! Transport throughput on loopback.
//!
//! - `quic_bulk/baseline`: raw bytes over one quinn stream (64 MiB in 64 KiB
//!   writes): the ceiling every artifact figure is compared to.
//! - `sync_frames/baseline`: the same raw stream carrying the bytes of N
//!   encoded SYNC_OPERATION frames; `sync_frames/framed`: the same N frames
//!   through `FramedSend`/`FramedRecv` (decoding, checks, limits off).
//!   `framed_send_raw_recv` and `raw_send_framed_recv` split that cost between
//!   the sending and the receiving side.

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nomade_transport::{Config, Connection, DeviceIdentity, PairedSet, RateLimits, Transport};
use nomade_wire::{
    CrdtOperation, Edit, EntityType, Envelope, MessageId, StreamHeader, StreamRole, SyncOperation,
    Value,
};

const BULK: usize = 64 * 1024 * 1024;
const WRITE: usize = 64 * 1024;
const FRAMES: usize = 10_000;

fn pair(rt: &tokio::runtime::Runtime) -> (Transport, Transport, Connection, Connection) {
    rt.block_on(async {
        let cfg = Config {
            rate_limits: RateLimits::OFF,
            stream_receive_window: 8 * 1024 * 1024,
            receive_window: 16 * 1024 * 1024,
            ..Config::default()
        };
        let bind = || {
            Transport::bind(
                DeviceIdentity::generate().expect("id"),
                PairedSet::new(),
                "127.0.0.1:0".parse().expect("addr"),
                cfg.clone(),
            )
            .expect("bind")
        };
        let (a, b) = (bind(), bind());
        a.pair(b.device_id());
        b.pair(a.device_id());
        let ca = a
            .connect(b.local_addr().expect("addr"), None)
            .await
            .expect("connect");
        let cb = b.accept().await.expect("accept");
        (a, b, ca, cb)
    })
}

fn op(i: usize) -> Envelope {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Envelope::new(
        MessageId::from(id),
        1_700_000_000_000,
        SyncOperation {
            entity_id: "doc-1".into(),
            entity_type: EntityType::Document,
            operation: CrdtOperation {
                counter: i as u64 + 1,
                deps: Default::default(),
                edit: Edit::Set {
                    key: "title".into(),
                    value: Value::from(format!("v{i}")),
                },
            },
            timestamp: 1_700_000_000_000,
            actor_id: "k3x9".into(),
        },
    )
}

/// Raw bytes over one quinn stream (after the 2-byte stream header the
/// receiving transport needs to hand the stream over); returns the elapsed time.
async fn raw(ca: &Connection, cb: &Connection, payload: &[u8], chunk: usize) -> Duration {
    let start = Instant::now();
    let mut send = ca.quinn().open_uni().await.expect("open");
    let writer = async {
        send.write_all(&StreamHeader::new(StreamRole::Push).to_bytes())
            .await
            .expect("header");
        for c in payload.chunks(chunk) {
            send.write_all(c).await.expect("write");
        }
        send.finish().expect("finish");
    };
    let reader = async {
        let inc = cb.accept_stream().await.expect("accept");
        let mut recv = inc.recv.into_inner();
        let mut n = 0;
        while let Some(c) = recv.read_chunk(usize::MAX, true).await.expect("read") {
            n += c.bytes.len();
        }
        assert_eq!(n, payload.len());
    };
    tokio::join!(writer, reader);
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (_a, _b, ca, cb) = pair(&rt);

    let bulk = vec![0xabu8; BULK];
    let mut g = c.benchmark_group("quic_bulk");
    g.throughput(Throughput::Bytes(BULK as u64));
    g.sample_size(10);
    g.bench_function("baseline", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += raw(&ca, &cb, &bulk, WRITE).await;
                }
                total
            })
        })
    });
    g.finish();

    let frames: Vec<Envelope> = (0..FRAMES).map(op).collect();
    let mut bytes = bytes::BytesMut::new();
    for f in &frames {
        f.encode_into(&mut bytes).expect("encode");
    }
    let mut g = c.benchmark_group("sync_frames");
    g.throughput(Throughput::Elements(FRAMES as u64));
    g.sample_size(10);
    g.bench_function("baseline", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // The same bytes, written frame by frame as FramedSend does.
                    let sizes = bytes.len() / FRAMES;
                    total += raw(&ca, &cb, &bytes, sizes.max(1)).await;
                }
                total
            })
        })
    });
    g.bench_function("framed", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let (mut send, _r) = ca.open_bi(StreamRole::Sync).await.expect("open");
                    let writer = async {
                        for f in &frames {
                            send.send(f).await.expect("send");
                        }
                        send.finish().await.expect("finish");
                    };
                    let reader = async {
                        let mut inc = cb.accept_stream().await.expect("accept");
                        let mut n = 0;
                        while let Some(_env) = inc.recv.recv().await.expect("recv") {
                            n += 1;
                        }
                        assert_eq!(n, FRAMES);
                    };
                    tokio::join!(writer, reader);
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.bench_function("framed_send_raw_recv", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let mut send = ca.open_uni(StreamRole::Push).await.expect("open");
                    let writer = async {
                        for f in &frames {
                            send.send(f).await.expect("send");
                        }
                        send.finish().await.expect("finish");
                    };
                    let reader = async {
                        let inc = cb.accept_stream().await.expect("accept");
                        let mut recv = inc.recv.into_inner();
                        while let Some(_c) = recv.read_chunk(usize::MAX, true).await.expect("read")
                        {
                        }
                    };
                    tokio::join!(writer, reader);
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.bench_function("raw_send_framed_recv", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let mut send = ca.quinn().open_uni().await.expect("open");
                    let writer = async {
                        send.write_all(&StreamHeader::new(StreamRole::Push).to_bytes())
                            .await
                            .expect("h");
                        send.write_all(&bytes).await.expect("w");
                        send.finish().expect("finish");
                    };
                    let reader = async {
                        let mut inc = cb.accept_stream().await.expect("accept");
                        let mut n = 0;
                        while let Some(_env) = inc.recv.recv().await.expect("recv") {
                            n += 1;
                        }
                        assert_eq!(n, FRAMES);
                    };
                    tokio::join!(writer, reader);
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
