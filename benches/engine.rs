//! Micro-benchmarks of the storage hot path: key encoding and a group-committed raft log
//! append (one synced WriteBatch carrying entries of many regions).
//!
//! `cargo bench --bench engine`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use protobuf::Message as _;
use raft::eraftpb::Entry;
use ringkv::engine::{Engine, CF_RAFT};
use ringkv::keys;

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

criterion_group!(benches, key_encoding, log_append);
criterion_main!(benches);
