//! Disk safety with real node processes: a node whose data dir's file system runs low (a
//! small tmpfs filled by a ballast file) makes the cluster refuse writes with a clean
//! `507 disk_full` — no crash, no corruption, reads still served — and writes resume once the
//! space is freed.
//!
//! Needs permission to mount a tmpfs (root, as on the CI machine); elsewhere the test says so
//! and does nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run_serially, wait_until, Cluster, ClusterOptions, Failure, Model, WAIT_TIMEOUT};

const TMPFS_SIZE: &str = "256m";
const RESERVE_BYTES: u64 = 48 * 1024 * 1024;

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_SIZE}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn available(&self) -> u64 {
        let fs = rustix::fs::statvfs(self.path()).expect("statvfs of the tmpfs");
        fs.f_bavail * fs.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Writes a file taking all but `leave` bytes of the file system's free space.
fn fill(path: &Path, available: u64, leave: u64) -> PathBuf {
    let ballast = path.join("ballast");
    let size = available.saturating_sub(leave);
    let file = std::fs::File::create(&ballast).expect("create ballast");
    // tmpfs has no holes for written data: write it for real, in chunks.
    use std::io::Write;
    let mut out = std::io::BufWriter::new(file);
    let chunk = vec![0xa5u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..n]).expect("write ballast");
        left -= n as u64;
    }
    out.flush().expect("flush ballast");
    ballast
}

#[test]
fn a_nearly_full_disk_refuses_writes_cleanly_and_recovers_when_space_is_freed() {
    let tmpfs = match Tmpfs::mount() {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here ({why}); run as root to check disk safety"
            );
            return;
        }
    };
    run_serially(async {
        let cluster = Cluster::start(
            3,
            ClusterOptions {
                initial_regions: Some(8),
                node_args: vec!["--reserve-space-bytes".into(), RESERVE_BYTES.to_string()],
                node_data_dirs: BTreeMap::from([(1, tmpfs.path().join("node-1"))]),
                ..ClusterOptions::default()
            },
        )
        .await;
        cluster.wait_ready().await;
        let mut model = Model::default();
        for n in 0..40 {
            let key = format!("before-{n}");
            cluster.must_put(1 + n % 3, &key, key.as_bytes()).await;
            model.put(&key, key.as_bytes());
        }

        // Idle regions hibernate: no raft message of theirs will tell a leader about node 1's
        // disk. Its store heartbeats must.
        wait_until("every region to hibernate", WAIT_TIMEOUT, async || {
            for node in cluster.node_ids() {
                let status = cluster.status(node).await.map_err(|e| e.to_string())?;
                if !status.regions.iter().all(|r| r.hibernating) {
                    return Err(format!("node {node} has awake regions"));
                }
            }
            Ok(())
        })
        .await;
        let status = cluster.status(2).await.expect("status of node 2");

        // Node 1's file system drops below its reserve: every region has a replica there,
        // so every write is refused — through any node — with 507 disk_full.
        let ballast = fill(tmpfs.path(), tmpfs.available(), RESERVE_BYTES / 2);
        for node in [2, 3] {
            let what =
                format!("node {node} to hear from store 1's heartbeats that it is low on disk");
            wait_until(&what, WAIT_TIMEOUT, async || {
                let json = cluster.status_json(node).await.map_err(|e| e.to_string())?;
                let low = json["low_disk_stores"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                low.contains(&serde_json::json!(1))
                    .then_some(())
                    .ok_or(format!("low_disk_stores {low:?}"))
            })
            .await;
        }
        // The FIRST write to a hibernating region led by node 2 or 3 is refused: nothing of
        // it lands on node 1's nearly full disk.
        let keys = common::keys_covering_regions(&status.regions, "while-low", 1);
        let mut checked = 0;
        for region in status.regions.iter().filter(|r| r.leader_store_id != 1) {
            let leader = region.leader_store_id as usize;
            let key = &keys[&region.id][0];
            match cluster.put(leader, key, b"x").await {
                Err(error) if error.status() == Some(507) => checked += 1,
                other => panic!(
                    "a write to region {} led by node {leader}: {other:?}",
                    region.id
                ),
            }
        }
        eprintln!("{checked} hibernating regions led by nodes 2/3 refused their first write");
        for node in cluster.node_ids() {
            let what = format!("a write through node {node} to be refused for lack of disk");
            wait_until(&what, WAIT_TIMEOUT, async || {
                match cluster.put(node, &format!("during-{node}"), b"x").await {
                    Ok(()) => Err("the write was accepted".to_owned()),
                    Err(error) => match &error.failure {
                        Failure::Status(reply) if reply.status == 507 => {
                            let (code, message) = reply.error()?;
                            assert_eq!(code, "disk_full", "{message}");
                            assert!(message.contains("disk"), "{message}");
                            Ok(())
                        }
                        _ => Err(error.to_string()),
                    },
                }
            })
            .await;
        }
        // No crash, and reads are still served (linearizable and local).
        for node in cluster.node_ids() {
            assert!(cluster.client(node).is_healthy().await, "node {node} is up");
            cluster.assert_reads(node, &model).await;
        }
        assert!(
            cluster.log(1).contains("disk almost full"),
            "node 1 logs why it refuses writes"
        );

        // Space freed: writes are accepted again and nothing was lost.
        std::fs::remove_file(&ballast).expect("remove ballast");
        wait_until("writes to be accepted again", WAIT_TIMEOUT, async || {
            cluster
                .put(2, "after", b"1")
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        model.put("after", b"1");
        for n in 0..20 {
            let key = format!("after-{n}");
            cluster.must_put(1 + n % 3, &key, key.as_bytes()).await;
            model.put(&key, key.as_bytes());
        }
        for node in cluster.node_ids() {
            cluster.assert_reads(node, &model).await;
            cluster.wait_stale_reads(node, &model).await;
        }
    });
    drop(tmpfs);
}
