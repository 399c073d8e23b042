//! The storage engine: one RocksDB per node, shared by every region's peer.
//!
//! Column families (DESIGN.md): `raft` holds every region's log entries, `meta` the per-region
//! raft/apply/region state, `default` the user data. This room knows RocksDB and the key layout
//! of `keys`; it knows nothing of raft's message flow (that is `raftstore`).

mod entry_cache;
mod peer_storage;
mod snapshot;

pub use peer_storage::{PeerStorage, PersistedRegion};
pub use snapshot::{generate_snapshot, SnapshotFile};

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, WriteOptions,
};

use crate::keys;

/// Name of the column family holding user data.
pub const CF_DEFAULT: &str = "default";
/// Name of the column family holding raft log entries of every region.
pub const CF_RAFT: &str = "raft";
/// Name of the column family holding per-region raft, apply and region state.
pub const CF_META: &str = "meta";
const ALL_CFS: [&str; 3] = [CF_DEFAULT, CF_RAFT, CF_META];
/// Every column family, for status pages and metrics.
pub const CF_NAMES: [&str; 3] = ALL_CFS;

/// Errors from the engine. A failed write is fatal to the node (crash-stop, see raftstore).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("rocksdb: {0}")]
    RocksDb(#[from] rocksdb::Error),
    #[error("decoding {what}: {source}")]
    Decode {
        what: &'static str,
        source: prost::DecodeError,
    },
    #[error("decoding raft entry: {0}")]
    DecodeRaft(#[from] protobuf::ProtobufError),
    #[error("missing column family {0}")]
    MissingColumnFamily(&'static str),
    #[error("snapshot file {path}: {source}")]
    SnapshotIo {
        path: String,
        source: std::io::Error,
    },
    #[error("corrupt data: {0}")]
    Corruption(String),
    #[error("{0}")]
    IncompatibleFormat(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// One scan page of user pairs, and the data key the next page starts at (`None`: the range
/// was exhausted).
pub type UserPairsPage = (Vec<(Vec<u8>, Vec<u8>)>, Option<Vec<u8>>);

/// The on-disk format this build reads and writes: 1 = values carry a flag byte and an
/// optional expiry (`crate::value`); 2 = the raft log may hold batched write entries
/// (`RaftCmd.batch`), which a format-1 build would apply as empty commands. A format-1 dir is
/// read as is and restamped 2 (so older builds refuse it from then on).
pub const FORMAT_VERSION: u32 = 2;

/// What a scan page returns: see `Engine::scan_user_pairs`.
#[derive(Clone, Copy, Debug)]
pub struct ScanBounds<'a> {
    pub prefix: &'a [u8],
    pub limit: usize,
    pub max_examined: usize,
    pub now_ms: u64,
}

fn decode_stored<'a>(data_key: &[u8], stored: &'a [u8]) -> Result<crate::value::StoredValue<'a>> {
    crate::value::decode(stored)
        .ok_or_else(|| EngineError::Corruption(format!("stored value of data key {data_key:x?}")))
}

/// A handle to the node's RocksDB. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    db: Arc<rocksdb::DB>,
    stats: Arc<EngineStats>,
}

/// Counters the raftstore reports (fsyncs per acknowledged write is a key figure).
#[derive(Default)]
pub struct EngineStats {
    pub synced_writes: AtomicU64,
    pub unsynced_writes: AtomicU64,
}

/// How the engine is tuned. `Default` is what a node runs with unless told otherwise.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    /// Size of one user-data memtable. User data keys are hash-ordered, so every insert
    /// searches the whole skip list from its top: each doubling of the memtable adds a level
    /// and, past the CPU caches, a miss per level. Smaller memtables flush more often; 16 MiB
    /// measured 9–18% more writes/s than RocksDB's 64 MiB default (benches/README.md).
    pub data_memtable_bytes: usize,
    /// The WAL is kept under this size by flushing the column families that hold its oldest
    /// file: it bounds replay at restart and lets WAL files be recycled.
    pub max_wal_bytes: u64,
}

/// WAL files kept for reuse instead of deleted (see `Engine::open_with`).
const RECYCLED_WAL_FILES: usize = 4;

/// The default size of a user-data memtable (see [`EngineOptions::data_memtable_bytes`]).
pub const DEFAULT_DATA_MEMTABLE_BYTES: usize = 16 << 20;
/// The default bound on the WAL (see [`EngineOptions::max_wal_bytes`]).
pub const DEFAULT_MAX_WAL_BYTES: u64 = 64 << 20;

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            data_memtable_bytes: DEFAULT_DATA_MEMTABLE_BYTES,
            max_wal_bytes: DEFAULT_MAX_WAL_BYTES,
        }
    }
}

/// A column family's options. Raft-log keys (`region_id ++ index`) arrive in order per
/// region and per-region state keys are rewritten every round: a memtable insert hint keyed
/// by that prefix makes those inserts start where the last one of the region ended, instead
/// of searching the skip list from the top (TiKV does the same for its raft CF). User data
/// keys (hash-ordered) cannot use a hint; their memtable is kept small instead.
fn cf_options(name: &str, tuning: &EngineOptions) -> Result<Options> {
    let mut base = Options::default();
    base.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let hint_prefix = match name {
        CF_RAFT => 8,
        CF_META => 9,
        _ => {
            base.set_write_buffer_size(tuning.data_memtable_bytes);
            return Ok(base);
        }
    };
    Ok(base.get_options_from_string(format!(
        "compression=kLZ4Compression;\
         memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.{hint_prefix}"
    ))?)
}

impl Engine {
    /// Opens (creating if needed) the RocksDB at `path` with ringkv's column families,
    /// tuned by default.
    pub fn open(path: &Path) -> Result<Engine> {
        Engine::open_with(path, &EngineOptions::default())
    }

    /// Opens (creating if needed) the RocksDB at `path` with ringkv's column families.
    pub fn open_with(path: &Path, tuning: &EngineOptions) -> Result<Engine> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // A synced append that grows the WAL file must also write its inode (the new size);
        // a recycled WAL is overwritten in place and syncs its data alone: one device write
        // per fsync instead of two. Recycled records carry their log number, so recovery
        // (point-in-time, RocksDB's default) stops at the first stale one.
        options.set_recycle_log_file_num(RECYCLED_WAL_FILES);
        // WAL files retire (and can be recycled) only once every column family they hold
        // was flushed; the raft and meta memtables rarely fill, so under RocksDB's default
        // bound (~1.1 GiB here) the WAL only grew (270 MB after 30 s of writes), and a
        // restart replayed all of it.
        options.set_max_total_wal_size(tuning.max_wal_bytes);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut cfs = Vec::with_capacity(ALL_CFS.len());
        for name in ALL_CFS {
            cfs.push(ColumnFamilyDescriptor::new(name, cf_options(name, tuning)?));
        }
        let db = rocksdb::DB::open_cf_descriptors(&options, path, cfs)?;
        let engine = Engine {
            db: Arc::new(db),
            stats: Arc::default(),
        };
        engine.check_format_version(path)?;
        Ok(engine)
    }

    /// Refuses a data dir written in another on-disk format (values read wrongly could be
    /// taken for expired and deleted, or crash every replica at apply); stamps a new one.
    fn check_format_version(&self, path: &Path) -> Result<()> {
        let meta = self.cf(CF_META)?;
        let mut options = WriteOptions::default();
        options.set_sync(true);
        match self.db.get_cf(&meta, keys::FORMAT_VERSION_KEY)? {
            Some(stored) if stored.as_slice() == FORMAT_VERSION.to_be_bytes() => Ok(()),
            Some(stored) if stored.as_slice() == 1u32.to_be_bytes() => {
                self.db
                    .put_cf_opt(&meta, keys::FORMAT_VERSION_KEY, FORMAT_VERSION.to_be_bytes(), &options)?;
                tracing::info!(dir = %path.display(), "on-disk format 1 upgraded to {FORMAT_VERSION}");
                Ok(())
            }
            Some(stored) => Err(EngineError::IncompatibleFormat(format!(
                "data dir {} has on-disk format {stored:?}; this build reads format {FORMAT_VERSION}",
                path.display()
            ))),
            None => {
                let empty = self
                    .db
                    .iterator_cf(&meta, IteratorMode::Start)
                    .next()
                    .is_none();
                if !empty {
                    return Err(EngineError::IncompatibleFormat(format!(
                        "data dir {} was written by a ringkv build before on-disk format 1 \
                         (values gained a TTL header); recreate it (no release used the old format)",
                        path.display()
                    )));
                }
                self.db
                    .put_cf_opt(&meta, keys::FORMAT_VERSION_KEY, FORMAT_VERSION.to_be_bytes(), &options)?;
                Ok(())
            }
        }
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    fn cf(&self, name: &'static str) -> Result<Arc<rocksdb::BoundColumnFamily<'_>>> {
        self.db
            .cf_handle(name)
            .ok_or(EngineError::MissingColumnFamily(name))
    }

    /// Writes `batch` atomically; `sync` makes it durable (fsync of the WAL) before returning.
    /// Every write shares one WAL, so a synced write also makes all earlier writes durable.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        if batch.inner.is_empty() {
            return Ok(());
        }
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        fail::fail_point!("engine_write", |_| Err(EngineError::Corruption(
            "injected write failure".into()
        )));
        self.db.write_opt(batch.inner, &options)?;
        let counter = if sync {
            &self.stats.synced_writes
        } else {
            &self.stats.unsynced_writes
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Makes every write so far durable (fsync of the WAL): what `write(batch, true)` does
    /// for its batch, for writes made earlier without `sync`.
    pub fn sync_wal(&self) -> Result<()> {
        fail::fail_point!("engine_write", |_| Err(EngineError::Corruption(
            "injected sync failure".into()
        )));
        self.db.flush_wal(true)?;
        self.stats.synced_writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Reads a raw value.
    pub fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(&self.cf(cf)?, key)?)
    }

    /// Reads and decodes a protobuf value.
    pub fn get_msg<M: prost::Message + Default>(
        &self,
        cf: &'static str,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<M>> {
        match self.db.get_pinned_cf(&self.cf(cf)?, key)? {
            None => Ok(None),
            Some(bytes) => M::decode(bytes.as_ref())
                .map(Some)
                .map_err(|source| EngineError::Decode { what, source }),
        }
    }

    /// The value of a user key as of `now_ms` (unix ms): absent if missing or expired.
    pub fn get_user_value(&self, user_key: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_stored_value(user_key)?
            .filter(|(_, expire_at_ms)| *expire_at_ms == 0 || *expire_at_ms > now_ms)
            .map(|(value, _)| value))
    }

    /// The stored value of a user key with its expiry (unix ms, 0 = never), expired or not.
    pub fn get_stored_value(&self, user_key: &[u8]) -> Result<Option<(Vec<u8>, u64)>> {
        let key = keys::data_key(user_key);
        let Some(stored) = self.db.get_pinned_cf(&self.cf(CF_DEFAULT)?, &key)? else {
            return Ok(None);
        };
        let decoded = decode_stored(&key, &stored)?;
        Ok(Some((decoded.value.to_vec(), decoded.expire_at_ms)))
    }

    /// Live (unexpired at `now_ms`) user pairs with data keys in `[start, end)`, in order,
    /// whose user key starts with `prefix`: at most `limit` pairs, after examining at most
    /// `max_examined` stored keys. Also answers where the next page starts: the data key
    /// after the last one examined, or `None` when the range was exhausted.
    pub fn scan_user_pairs(
        &self,
        start: &[u8],
        end: &[u8],
        scan: &ScanBounds<'_>,
    ) -> Result<UserPairsPage> {
        let mut pairs = Vec::new();
        let mut examined = 0usize;
        let mut resume = None;
        self.scan(CF_DEFAULT, start, end, |key, stored| {
            if pairs.len() >= scan.limit || examined >= scan.max_examined {
                resume = Some(key.to_vec());
                return Ok(false);
            }
            examined += 1;
            let user_key = keys::user_key_of(key)
                .ok_or_else(|| EngineError::Corruption(format!("data key {key:x?}")))?;
            if !user_key.starts_with(scan.prefix) {
                return Ok(true);
            }
            let decoded = decode_stored(key, stored)?;
            if !decoded.is_expired(scan.now_ms) {
                pairs.push((user_key.to_vec(), decoded.value.to_vec()));
            }
            Ok(true)
        })?;
        Ok((pairs, resume))
    }

    /// User keys in the hash range `[start_hash, end_hash)` whose values expired by
    /// `now_ms`, at most `limit` of them (what the background reclaim deletes through raft).
    pub fn expired_user_keys(
        &self,
        start_hash: u64,
        end_hash: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let (start, end) = (
            keys::data_range_start(start_hash),
            keys::data_range_end(end_hash),
        );
        let mut expired = Vec::new();
        self.scan(CF_DEFAULT, &start, &end, |key, stored| {
            // Plain values (flag byte 0) cannot expire: skip without decoding further.
            if stored.first() == Some(&0) {
                return Ok(true);
            }
            if decode_stored(key, stored)?.is_expired(now_ms) {
                if let Some(user_key) = keys::user_key_of(key) {
                    expired.push(user_key.to_vec());
                }
            }
            Ok(expired.len() < limit)
        })?;
        Ok(expired)
    }

    /// Visits `[start, end)` of a column family in order; `visit` returns false to stop.
    /// Size (key + value bytes) and key count of the user data in the hash range
    /// `[start_hash, end_hash)` (`end_hash` 0 = end of the ring), and, when `want_middle`, the
    /// hash of the first key past half of that size — where a split halves the data. One pass
    /// to size it, one more to find the middle.
    pub fn region_data_stats(
        &self,
        start_hash: u64,
        end_hash: u64,
        want_middle: bool,
    ) -> Result<RegionDataStats> {
        let (start, end) = (
            keys::data_range_start(start_hash),
            keys::data_range_end(end_hash),
        );
        let mut stats = RegionDataStats::default();
        self.scan(CF_DEFAULT, &start, &end, |key, value| {
            stats.size_bytes += (key.len() + value.len()) as u64;
            stats.keys += 1;
            Ok(true)
        })?;
        if !want_middle || stats.keys < 2 {
            return Ok(stats);
        }
        let half = stats.size_bytes / 2;
        let mut seen = 0u64;
        self.scan(CF_DEFAULT, &start, &end, |key, value| {
            seen += (key.len() + value.len()) as u64;
            if seen < half {
                return Ok(true);
            }
            stats.middle_hash = keys::hash_of_data_key(key);
            Ok(false)
        })?;
        Ok(stats)
    }

    pub fn scan(
        &self,
        cf: &'static str,
        start: &[u8],
        end: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(end.to_vec());
        let handle = self.cf(cf)?;
        let iter = self.db.iterator_cf_opt(
            &handle,
            read_options,
            IteratorMode::From(start, Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            if !visit(&key, &value)? {
                break;
            }
        }
        Ok(())
    }

    /// A consistent point-in-time view, for snapshot generation.
    pub fn snapshot(&self) -> rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB> {
        self.db.snapshot()
    }

    /// The underlying column family handle for reads through a RocksDB snapshot.
    pub fn cf_handle(&self, name: &'static str) -> Result<Arc<rocksdb::BoundColumnFamily<'_>>> {
        self.cf(name)
    }

    /// Starts a batch bound to this engine's column families.
    pub fn batch(&self) -> WriteBatch {
        WriteBatch {
            inner: rocksdb::WriteBatch::default(),
        }
    }

    /// Bytes the engine occupies: SST files plus memtables, over every column family.
    pub fn used_bytes(&self) -> u64 {
        ALL_CFS
            .iter()
            .map(|cf| {
                self.property_u64(cf, "rocksdb.total-sst-files-size")
                    .unwrap_or(0)
                    + self
                        .property_u64(cf, "rocksdb.cur-size-all-mem-tables")
                        .unwrap_or(0)
            })
            .sum()
    }

    /// RocksDB's own integer property (e.g. `rocksdb.estimate-num-keys`) for status pages.
    pub fn property_u64(&self, cf: &'static str, name: &str) -> Option<u64> {
        let handle = self.cf(cf).ok()?;
        self.db.property_int_value_cf(&handle, name).ok().flatten()
    }
}

/// An atomic batch of writes to any column families.
pub struct WriteBatch {
    inner: rocksdb::WriteBatch,
}

impl WriteBatch {
    pub fn put(
        &mut self,
        engine: &Engine,
        cf: &'static str,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        self.inner.put_cf(&engine.cf(cf)?, key, value);
        Ok(())
    }

    pub fn put_msg(
        &mut self,
        engine: &Engine,
        cf: &'static str,
        key: &[u8],
        msg: &impl prost::Message,
    ) -> Result<()> {
        self.put(engine, cf, key, &msg.encode_to_vec())
    }

    pub fn delete(&mut self, engine: &Engine, cf: &'static str, key: &[u8]) -> Result<()> {
        self.inner.delete_cf(&engine.cf(cf)?, key);
        Ok(())
    }

    pub fn delete_range(
        &mut self,
        engine: &Engine,
        cf: &'static str,
        start: &[u8],
        end: &[u8],
    ) -> Result<()> {
        self.inner.delete_range_cf(&engine.cf(cf)?, start, end);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn size_bytes(&self) -> usize {
        self.inner.size_in_bytes()
    }
}

/// What [`Engine::region_data_stats`] measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionDataStats {
    pub size_bytes: u64,
    pub keys: u64,
    /// The hash where the data halves (None for fewer than two keys or when not asked).
    pub middle_hash: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options RocksDB persisted in `section` of its newest OPTIONS file (`DBOptions`,
    /// `CFOptions "default"`, ...), as `key=value` lines.
    fn persisted_options(dir: &Path, section: &str) -> Vec<String> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("db dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|name| name.starts_with("OPTIONS-"))
            .collect();
        files.sort();
        let newest = files.last().expect("an OPTIONS file");
        let text = std::fs::read_to_string(dir.join(newest)).expect("OPTIONS file");
        let header = format!("[{section}]");
        text.lines()
            .skip_while(|line| line.trim() != header)
            .skip(1)
            .take_while(|line| !line.trim_start().starts_with('['))
            .map(|line| line.trim().replace(' ', ""))
            .collect()
    }

    #[test]
    fn the_engine_is_tuned_as_configured() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| EngineError::Corruption(e.to_string()))?;
        let tuning = EngineOptions {
            data_memtable_bytes: 3 << 20,
            max_wal_bytes: 5 << 20,
        };
        drop(Engine::open_with(dir.path(), &tuning)?);
        let db = persisted_options(dir.path(), "DBOptions");
        assert!(
            db.contains(&format!("max_total_wal_size={}", 5 << 20)),
            "{db:?}"
        );
        assert!(
            db.contains(&format!("recycle_log_file_num={RECYCLED_WAL_FILES}")),
            "{db:?}"
        );
        let data = persisted_options(dir.path(), "CFOptions \"default\"");
        assert!(
            data.contains(&format!("write_buffer_size={}", 3 << 20)),
            "{data:?}"
        );
        let raft = persisted_options(dir.path(), "CFOptions \"raft\"");
        assert!(
            raft.contains(&format!("write_buffer_size={}", 64 << 20)),
            "{raft:?}"
        );
        assert!(
            raft.iter().any(
                |l| l.starts_with("memtable_insert_with_hint_prefix_extractor=")
                    && l.contains("rocksdb.FixedPrefix.8")
            ),
            "{raft:?}"
        );
        drop(Engine::open(dir.path())?);
        let db = persisted_options(dir.path(), "DBOptions");
        assert!(
            db.contains(&format!("max_total_wal_size={DEFAULT_MAX_WAL_BYTES}")),
            "{db:?}"
        );
        let data = persisted_options(dir.path(), "CFOptions \"default\"");
        assert!(
            data.contains(&format!("write_buffer_size={DEFAULT_DATA_MEMTABLE_BYTES}")),
            "{data:?}"
        );
        Ok(())
    }

    #[test]
    fn data_dirs_of_another_format_are_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| EngineError::Corruption(e.to_string()))?;
        let engine = Engine::open(dir.path())?;
        let meta = engine.cf(CF_META)?;
        engine.db.put_cf(&meta, b"\x01region", b"state")?;
        drop(meta);
        drop(engine);
        let engine = Engine::open(dir.path())?; // stamped at creation: reopens
        let meta = engine.cf(CF_META)?;
        engine.db.delete_cf(&meta, keys::FORMAT_VERSION_KEY)?;
        drop(meta);
        drop(engine);
        let unversioned = Engine::open(dir.path()).err().map(|e| e.to_string());
        assert!(
            unversioned
                .as_deref()
                .is_some_and(|e| e.contains("before on-disk format 1")),
            "{unversioned:?}"
        );
        let dir = tempfile::tempdir().map_err(|e| EngineError::Corruption(e.to_string()))?;
        let engine = Engine::open(dir.path())?;
        let meta = engine.cf(CF_META)?;
        engine
            .db
            .put_cf(&meta, keys::FORMAT_VERSION_KEY, 1u32.to_be_bytes())?;
        drop(meta);
        drop(engine);
        // Format 1 is readable: upgraded in place.
        let engine = Engine::open(dir.path())?;
        let meta = engine.cf(CF_META)?;
        let stamped = engine.db.get_cf(&meta, keys::FORMAT_VERSION_KEY)?;
        assert_eq!(stamped, Some(FORMAT_VERSION.to_be_bytes().to_vec()));
        engine
            .db
            .put_cf(&meta, keys::FORMAT_VERSION_KEY, 3u32.to_be_bytes())?;
        drop(meta);
        drop(engine);
        assert!(matches!(
            Engine::open(dir.path()),
            Err(EngineError::IncompatibleFormat(_))
        ));
        Ok(())
    }

    /// Writes `rounds` synced batches (a user value and a raft-log-like key each), values
    /// tagged with `tag`.
    fn write_rounds(engine: &Engine, rounds: std::ops::Range<u64>, tag: u8) -> Result<()> {
        for i in rounds {
            let mut batch = engine.batch();
            let value = vec![tag; 16 << 10];
            let key = format!("key-{}", i % 97);
            batch.put(
                engine,
                CF_DEFAULT,
                &keys::data_key(key.as_bytes()),
                &crate::value::encode(&value, 0),
            )?;
            batch.put(engine, CF_RAFT, &keys::raft_log_key(1, i), &value)?;
            engine.write(batch, true)?;
        }
        Ok(())
    }

    fn reused_wal_files(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("LOG"))
            .map(|log| log.matches("from recycle list").count())
            .unwrap_or(0)
    }

    #[test]
    fn a_reopened_engine_replays_recycled_wal_files_to_their_last_write() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| EngineError::Corruption(e.to_string()))?;
        let tuning = EngineOptions {
            data_memtable_bytes: 1 << 20,
            max_wal_bytes: 1 << 20,
        };
        // Enough WAL turnover that retired WAL files are reused (flushes run in the
        // background: keep writing until the LOG says a WAL was reused, with a bound).
        let mut engine = Engine::open_with(dir.path(), &tuning)?;
        let mut written = 0;
        while reused_wal_files(dir.path()) < 2 {
            assert!(
                written < 2_000,
                "no WAL file was recycled after {written} writes"
            );
            write_rounds(&engine, written..written + 100, 1)?;
            written += 100;
        }
        // A recycled file holds stale records past the new ones: reopening (WAL replay,
        // nothing flushed at close) must stop at the last write, then writing must go on.
        for tag in [2, 3] {
            write_rounds(&engine, written..written + 150, tag)?;
            written += 150;
            drop(engine);
            let reopened = Engine::open_with(dir.path(), &tuning)?;
            for i in written - 97..written {
                let key = format!("key-{}", i % 97);
                let value = reopened.get_user_value(key.as_bytes(), 0)?;
                assert_eq!(value, Some(vec![tag; 16 << 10]), "{key} after reopening");
            }
            let last = reopened.get(CF_RAFT, &keys::raft_log_key(1, written - 1))?;
            assert_eq!(last, Some(vec![tag; 16 << 10]));
            assert_eq!(
                reopened.get(CF_RAFT, &keys::raft_log_key(1, written))?,
                None
            );
            engine = reopened;
        }
        Ok(())
    }

    #[test]
    fn batch_writes_are_atomic_and_readable() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| EngineError::Corruption(e.to_string()))?;
        let engine = Engine::open(dir.path())?;
        let mut batch = engine.batch();
        batch.put(
            &engine,
            CF_DEFAULT,
            &keys::data_key(b"k"),
            &crate::value::encode(b"v", 0),
        )?;
        batch.put(&engine, CF_META, b"m", b"1")?;
        engine.write(batch, true)?;
        assert_eq!(engine.get_user_value(b"k", 0)?, Some(b"v".to_vec()));
        assert_eq!(engine.get(CF_META, b"m")?, Some(b"1".to_vec()));
        assert_eq!(engine.stats().synced_writes.load(Ordering::Relaxed), 1);
        Ok(())
    }
}
