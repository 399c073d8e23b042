//! Region snapshots as files: generated from a consistent RocksDB view, streamed by the
//! transport in chunks, applied by the receiving peer.
//!
//! File layout: a sequence of records, each `u32 big-endian length ++ SnapshotChunk`. The
//! `SnapshotMeta` inside the raft snapshot's `data` names the file and carries its size and
//! xxh3-64 checksum, so a receiver can verify what arrived before touching its data.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message as _;
use raft::eraftpb::Snapshot;
use xxhash_rust::xxh3::Xxh3;

use super::peer_storage::conf_state_from_raft;
use super::{Engine, EngineError, Result, WriteBatch, CF_DEFAULT, CF_META};
use crate::keys;
use crate::proto::kvpb::KvPair;
use crate::proto::raft_serverpb::{RaftApplyState, RegionLocalState, SnapshotChunk, SnapshotMeta};

/// Records are cut at about this many bytes of keys and values.
const CHUNK_TARGET_BYTES: usize = 1 << 20;
/// A record longer than this is corruption, not data.
const MAX_RECORD_BYTES: usize = 256 << 20;

/// A snapshot file and the raft snapshot that describes it.
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    pub meta: SnapshotMeta,
    pub snapshot: Snapshot,
    pub path: PathBuf,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::SnapshotIo {
        path: path.display().to_string(),
        source,
    }
}

/// Rejects names that could escape the snapshot directory.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '\\']) && !name.contains("..")
}

impl SnapshotFile {
    /// The file a raft snapshot refers to, in `snap_dir`.
    pub fn from_snapshot(snapshot: &Snapshot, snap_dir: &Path) -> Result<SnapshotFile> {
        let meta =
            SnapshotMeta::decode(snapshot.get_data()).map_err(|source| EngineError::Decode {
                what: "SnapshotMeta",
                source,
            })?;
        if !valid_file_name(&meta.file_name) {
            return Err(EngineError::Corruption(format!(
                "snapshot file name {:?}",
                meta.file_name
            )));
        }
        Ok(SnapshotFile {
            path: snap_dir.join(&meta.file_name),
            meta,
            snapshot: snapshot.clone(),
        })
    }

    pub fn index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    pub fn remove(&self) {
        if let Err(err) = std::fs::remove_file(&self.path) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), %err, "cannot remove snapshot file");
            }
        }
    }

    /// Verifies the file against its meta and stages its pairs into `batch`.
    /// Returns the number of pairs.
    pub fn load_into(&self, engine: &Engine, batch: &mut WriteBatch) -> Result<u64> {
        let path = &self.path;
        let bytes = std::fs::read(path).map_err(io_error(path))?;
        if bytes.len() as u64 != self.meta.size_bytes {
            return Err(EngineError::Corruption(format!(
                "snapshot {}: {} bytes, expected {}",
                path.display(),
                bytes.len(),
                self.meta.size_bytes
            )));
        }
        if xxhash_rust::xxh3::xxh3_64(&bytes) != self.meta.checksum {
            return Err(EngineError::Corruption(format!(
                "snapshot {}: checksum mismatch",
                path.display()
            )));
        }
        let region = self.meta.region.clone().unwrap_or_default();
        let mut reader = BufReader::new(bytes.as_slice());
        let mut count = 0u64;
        while let Some(chunk) = read_record(&mut reader, path)? {
            for pair in chunk.pairs {
                let hash = keys::key_hash(&pair.key);
                if !crate::region::region_contains(&region, hash) {
                    return Err(EngineError::Corruption(format!(
                        "snapshot {}: key outside region {}",
                        path.display(),
                        region.id
                    )));
                }
                batch.put(engine, CF_DEFAULT, &keys::data_key(&pair.key), &pair.value)?;
                count += 1;
            }
        }
        if count != self.meta.kv_count {
            return Err(EngineError::Corruption(format!(
                "snapshot {}: {count} pairs, expected {}",
                path.display(),
                self.meta.kv_count
            )));
        }
        Ok(count)
    }
}

fn read_record(reader: &mut impl Read, path: &Path) -> Result<Option<SnapshotChunk>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(io_error(path)(err)),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_RECORD_BYTES {
        return Err(EngineError::Corruption(format!(
            "snapshot {}: record of {len} bytes",
            path.display()
        )));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).map_err(io_error(path))?;
    SnapshotChunk::decode(body.as_slice())
        .map(Some)
        .map_err(|source| EngineError::Decode {
            what: "SnapshotChunk",
            source,
        })
}

/// Writes records to a file while hashing exactly the bytes written.
struct RecordWriter {
    out: BufWriter<File>,
    hasher: Xxh3,
    size_bytes: u64,
}

impl RecordWriter {
    fn write_chunk(&mut self, chunk: &SnapshotChunk, path: &Path) -> Result<()> {
        let body = chunk.encode_to_vec();
        let len = (body.len() as u32).to_be_bytes();
        for part in [&len[..], &body[..]] {
            self.out.write_all(part).map_err(io_error(path))?;
            self.hasher.update(part);
            self.size_bytes += part.len() as u64;
        }
        Ok(())
    }
}

/// Generates a snapshot of `region_id` from one consistent RocksDB view: the applied index
/// and the data are read from the same point in time, because the apply path writes both in
/// one batch.
pub fn generate_snapshot(
    engine: &Engine,
    store_id: u64,
    region_id: u64,
    snap_dir: &Path,
) -> Result<SnapshotFile> {
    let view = engine.snapshot();
    let meta_cf = engine.cf_handle(CF_META)?;
    let decode = |key: &[u8], what: &'static str| -> Result<Vec<u8>> {
        view.get_cf(&meta_cf, key)?
            .ok_or_else(|| EngineError::Corruption(format!("region {region_id}: no {what}")))
    };
    let apply_state = RaftApplyState::decode(
        decode(&keys::apply_state_key(region_id), "apply state")?.as_slice(),
    )
    .map_err(|source| EngineError::Decode {
        what: "RaftApplyState",
        source,
    })?;
    let region_state = RegionLocalState::decode(
        decode(&keys::region_state_key(region_id), "region state")?.as_slice(),
    )
    .map_err(|source| EngineError::Decode {
        what: "RegionLocalState",
        source,
    })?;
    let region = region_state.region.clone().unwrap_or_default();

    std::fs::create_dir_all(snap_dir).map_err(io_error(snap_dir))?;
    let file_name = format!(
        "gen-{store_id}-{region_id}-{}-{}.snap",
        apply_state.applied_term, apply_state.applied_index
    );
    let path = snap_dir.join(&file_name);
    let tmp_path = snap_dir.join(format!("{file_name}.tmp"));
    let file = File::create(&tmp_path).map_err(io_error(&tmp_path))?;
    let mut writer = RecordWriter {
        out: BufWriter::new(file),
        hasher: Xxh3::new(),
        size_bytes: 0,
    };

    let data_cf = engine.cf_handle(CF_DEFAULT)?;
    let mut read_options = rocksdb::ReadOptions::default();
    read_options.set_iterate_upper_bound(keys::data_range_end(region.end_hash));
    let start = keys::data_range_start(region.start_hash);
    let iter = view.iterator_cf_opt(
        &data_cf,
        read_options,
        rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
    );
    let mut chunk = SnapshotChunk::default();
    let mut chunk_bytes = 0usize;
    let mut kv_count = 0u64;
    for item in iter {
        let (key, value) = item?;
        let user_key = keys::user_key_of(&key)
            .ok_or_else(|| EngineError::Corruption("non-data key in data range".into()))?;
        chunk_bytes += user_key.len() + value.len();
        chunk.pairs.push(KvPair {
            key: user_key.to_vec().into(),
            value: value.to_vec().into(),
        });
        kv_count += 1;
        if chunk_bytes >= CHUNK_TARGET_BYTES {
            writer.write_chunk(&chunk, &tmp_path)?;
            chunk.pairs.clear();
            chunk_bytes = 0;
        }
    }
    if !chunk.pairs.is_empty() {
        writer.write_chunk(&chunk, &tmp_path)?;
    }
    let file = writer
        .out
        .into_inner()
        .map_err(|e| io_error(&tmp_path)(e.into_error()))?;
    file.sync_all().map_err(io_error(&tmp_path))?;
    std::fs::rename(&tmp_path, &path).map_err(io_error(&path))?;
    fail::fail_point!("snapshot_after_generate");

    let meta = SnapshotMeta {
        region: Some(region),
        file_name,
        size_bytes: writer.size_bytes,
        checksum: writer.hasher.digest(),
        kv_count,
    };
    let mut snapshot = Snapshot::default();
    snapshot.set_data(meta.encode_to_vec().into());
    let metadata = snapshot.mut_metadata();
    metadata.index = apply_state.applied_index;
    metadata.term = apply_state.applied_term;
    let conf_state = region_state.conf_state.clone().unwrap_or_default();
    metadata.set_conf_state(super::peer_storage::conf_state_to_raft(&conf_state));
    debug_assert_eq!(conf_state_from_raft(metadata.get_conf_state()), conf_state);
    Ok(SnapshotFile {
        meta,
        snapshot,
        path,
    })
}
