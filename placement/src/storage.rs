//! Placement's durable state: one protobuf file, replaced atomically (write a temp file, fsync
//! it, rename it over the old one, fsync the directory), so a crash at any point leaves either
//! the old state or the new one, never a torn mix.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use prost::Message as _;
use ringkv_proto::placementpb::PersistedState;

use crate::error::{PlacementError, Result};

const STATE_FILE: &str = "placement-state.pb";
const TEMP_FILE: &str = "placement-state.pb.tmp";

pub struct Storage {
    dir: PathBuf,
}

impl Storage {
    /// Opens (creating) the data dir.
    pub fn open(dir: &Path) -> Result<Storage> {
        fs::create_dir_all(dir).map_err(|e| PlacementError::io(dir, e))?;
        Ok(Storage {
            dir: dir.to_path_buf(),
        })
    }

    /// The last saved state, or `None` for a new data dir.
    pub fn load(&self) -> Result<Option<PersistedState>> {
        let path = self.dir.join(STATE_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PlacementError::io(&path, e)),
        };
        PersistedState::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| PlacementError::Corrupt(format!("{}: {e}", path.display())))
    }

    /// Replaces the saved state with `state`, durably.
    pub fn save(&self, state: &PersistedState) -> Result<()> {
        let temp = self.dir.join(TEMP_FILE);
        let path = self.dir.join(STATE_FILE);
        let mut file = File::create(&temp).map_err(|e| PlacementError::io(&temp, e))?;
        file.write_all(&state.encode_to_vec())
            .and_then(|()| file.sync_all())
            .map_err(|e| PlacementError::io(&temp, e))?;
        fs::rename(&temp, &path).map_err(|e| PlacementError::io(&path, e))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| PlacementError::io(&self.dir, e))
    }
}
