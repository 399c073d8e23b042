//! Micro-benchmarks of the hot pieces: key encoding, a group-committed raft log append (one
//! synced WriteBatch carrying entries of many regions), transport frame encode/decode of a
//! batch of raft messages, and an apply batch (user values plus applied indexes).
//!
//! `cargo bench --bench engine`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use protobuf::Message as _;
use raft::eraftpb::Entry;
use ringkv::engine::{Engine, CF_DEFAULT, CF_META, CF_RAFT};
use ringkv::keys;
use ringkv::proto::metapb::Peer;
use ringkv::proto::raft_serverpb::{RaftApplyState, RaftMessage, RaftMessageBatch};
use ringkv::transport::frame;

fn key_encoding(c: &mut Criterion) {
    let key = b"user:000000012345";
    let mut group = c.benchmark_group("keys");
    group.throughput(Throughput::Elements(1));
    group.bench_function("data_key_16b", |b| {
        b.iter(|| keys::data_key(std::hint::black_box(key)))
    });
    group.bench_function("key_hash_16b", |b| {
        b.iter(|| keys::key_hash(std::hint::black_box(key)))
    });
    group.finish();
}

fn log_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(dir.path()).expect("open engine");
    let value = vec![7u8; 256];
    let mut group = c.benchmark_group("raft_log_append");
    for regions in [1u64, 16, 64] {
        let entries_per_batch = 64u64;
        group.throughput(Throughput::Elements(entries_per_batch));
        let mut index = 0u64;
        group.bench_function(format!("synced_batch_64_entries_{regions}_regions"), |b| {
            b.iter_batched(
                || {
                    let mut batch = engine.batch();
                    for i in 0..entries_per_batch {
                        index += 1;
                        let entry = Entry {
                            index,
                            term: 1,
                            data: value.clone().into(),
                            ..Default::default()
                        };
                        let bytes = entry.write_to_bytes().expect("encode");
                        let key = keys::raft_log_key(i % regions + 1, index);
                        batch.put(&engine, CF_RAFT, &key, &bytes).expect("stage");
                    }
                    batch
                },
                |batch| engine.write(batch, true).expect("write"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// One frame of 256 raft messages (each carrying a ~300-byte append), as a sender writes it
/// and a receiver reads it.
fn frame_codec(c: &mut Criterion) {
    let messages = (0..256u64)
        .map(|i| RaftMessage {
            region_id: i % 64 + 1,
            from_peer: Some(Peer {
                id: 1,
                store_id: 1,
                ..Default::default()
            }),
            to_peer: Some(Peer {
                id: 2,
                store_id: 2,
                ..Default::default()
            }),
            message: vec![9u8; 300].into(),
            ..Default::default()
        })
        .collect();
    let batch = RaftMessageBatch { messages };
    let encoded = frame::encode_frame(&batch).expect("encode").freeze();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Elements(256));
    group.bench_function("encode_256_messages", |b| {
        b.iter(|| frame::encode_frame(std::hint::black_box(&batch)).expect("encode"))
    });
    group.bench_function("decode_256_messages", |b| {
        b.iter(|| {
            let mut reader = &encoded[..];
            runtime
                .block_on(frame::read_frame::<RaftMessageBatch, _>(&mut reader))
                .expect("decode")
                .expect("a frame")
        })
    });
    group.finish();
}

/// An apply batch as a poller round builds it: 64 user values (stored form) spread over
/// `regions` regions plus each region's applied index, written unsynced.
fn apply_batch(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(dir.path()).expect("open engine");
    let value = ringkv::value::encode(&[7u8; 256], 0);
    let mut group = c.benchmark_group("apply_batch");
    for regions in [1u64, 16, 64] {
        group.throughput(Throughput::Elements(64));
        let mut n = 0u64;
        group.bench_function(format!("64_puts_{regions}_regions"), |b| {
            b.iter_batched(
                || {
                    let mut batch = engine.batch();
                    for i in 0..64u64 {
                        n += 1;
                        let key = keys::data_key(format!("user:{n:012}").as_bytes());
                        batch.put(&engine, CF_DEFAULT, &key, &value).expect("stage");
                        if i < regions {
                            let state = RaftApplyState {
                                applied_index: n,
                                applied_term: 1,
                                ..Default::default()
                            };
                            let key = keys::apply_state_key(i + 1);
                            batch
                                .put_msg(&engine, CF_META, &key, &state)
                                .expect("stage");
                        }
                    }
                    batch
                },
                |batch| engine.write(batch, false).expect("write"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, key_encoding, log_append, frame_codec, apply_batch);
criterion_main!(benches);
