//! The hot-region scheduler (TiKV PD's hot-region scheduler is the reference, simplified to
//! leader transfers): takes load off the store whose leaders carry the most of it.
//!
//! * Load: with every heartbeat a region's leader reports the bytes written and the keys read
//!   per second over its last interval. A store's load is the sum over the regions it leads —
//!   all of them: a region just under the thresholds still costs its leader, and counting it
//!   keeps a store full of nearly hot regions from looking idle. Writes and reads are two
//!   dimensions, never added up.
//! * Hot: a region is hot in a dimension once `min_reports` consecutive reports are at or
//!   above the dimension's threshold, so a one-off burst moves nothing.
//! * Transfer: when a hot region's leader store leads the most load of all up stores in a
//!   dimension the region is hot in, leadership goes to the region's least loaded voter on
//!   another up store whose load is lower than the source's by *more* than the region's own
//!   load. With a gap of exactly the region's load the two stores would just swap places (and
//!   the reverse transfer would qualify next); with a larger one both end strictly cooler
//!   than the source was, so the transfer cannot come back. Writes are tried before reads:
//!   a write's leader also carries its replication.
//!
//! Pure like the other schedulers: the caller passes per-store loads with the transfers in
//! flight done, and keeps the limit and the per-region cooldown.

use std::collections::BTreeMap;

use ringkv_proto::metapb::{Peer, Region};
use ringkv_proto::placementpb::RegionStats;

use crate::checker::{voters, ClusterView, Decision, StoreHealth};
use crate::operator::{is_joint, Step};
use crate::units::show_bytes;

/// What a region costs its leader, or the sum a store's leaders cost it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub written_bytes_per_sec: u64,
    pub read_keys_per_sec: u64,
}

impl Load {
    pub fn of(stats: &RegionStats) -> Load {
        Load {
            written_bytes_per_sec: stats.written_bytes_per_sec,
            read_keys_per_sec: stats.read_keys_per_sec,
        }
    }

    pub fn add(&mut self, other: Load) {
        self.written_bytes_per_sec = self
            .written_bytes_per_sec
            .saturating_add(other.written_bytes_per_sec);
        self.read_keys_per_sec = self
            .read_keys_per_sec
            .saturating_add(other.read_keys_per_sec);
    }

    pub fn subtract(&mut self, other: Load) {
        self.written_bytes_per_sec = self
            .written_bytes_per_sec
            .saturating_sub(other.written_bytes_per_sec);
        self.read_keys_per_sec = self
            .read_keys_per_sec
            .saturating_sub(other.read_keys_per_sec);
    }

    pub fn is_zero(self) -> bool {
        self == Load::default()
    }

    fn get(self, dimension: Dimension) -> u64 {
        match dimension {
            Dimension::Write => self.written_bytes_per_sec,
            Dimension::Read => self.read_keys_per_sec,
        }
    }
}

/// A kind of load, scheduled on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    /// Bytes written per second.
    Write,
    /// Keys read per second.
    Read,
}

impl Dimension {
    /// In the order they are tried.
    const ALL: [Dimension; 2] = [Dimension::Write, Dimension::Read];

    fn show(self, value: u64) -> String {
        match self {
            Dimension::Write => format!("{}/s written", show_bytes(value)),
            Dimension::Read => format!("{value} keys/s read"),
        }
    }
}

/// When a region counts as hot (see `PlacementConfig`).
#[derive(Clone, Copy, Debug)]
pub struct HotThresholds {
    /// 0 turns write scheduling off.
    pub written_bytes_per_sec: u64,
    /// 0 turns read scheduling off.
    pub read_keys_per_sec: u64,
    /// Consecutive reports at or above a threshold (0 counts as 1).
    pub min_reports: u32,
}

impl HotThresholds {
    fn threshold(&self, dimension: Dimension) -> u64 {
        match dimension {
            Dimension::Write => self.written_bytes_per_sec,
            Dimension::Read => self.read_keys_per_sec,
        }
    }
}

/// A region's consecutive reports at or above each threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotStreak {
    write: u32,
    read: u32,
}

impl HotStreak {
    /// The streak after one more report with `load`.
    pub fn after(self, load: Load, thresholds: &HotThresholds) -> HotStreak {
        let next = |streak: u32, dimension: Dimension| {
            let threshold = thresholds.threshold(dimension);
            if threshold > 0 && load.get(dimension) >= threshold {
                streak.saturating_add(1)
            } else {
                0
            }
        };
        HotStreak {
            write: next(self.write, Dimension::Write),
            read: next(self.read, Dimension::Read),
        }
    }

    /// The dimensions the region is hot in, in the order they are tried.
    pub fn hot_in(self, thresholds: &HotThresholds) -> Vec<Dimension> {
        let needed = thresholds.min_reports.max(1);
        Dimension::ALL
            .into_iter()
            .filter(|&dimension| match dimension {
                Dimension::Write => self.write >= needed,
                Dimension::Read => self.read >= needed,
            })
            .collect()
    }
}

/// The leader transfer that takes `region`'s load (`region_load`) off the hottest store, for
/// a region hot in `hot_in` and reported by `leader`; `loads` are per store, the sums over
/// the regions each leads with the transfers in flight done (absent = no load).
pub fn hot_region_transfer(
    cluster: &ClusterView,
    loads: &BTreeMap<u64, Load>,
    region: &Region,
    leader: &Peer,
    region_load: Load,
    hot_in: &[Dimension],
) -> Option<Decision> {
    if is_joint(region) {
        return None;
    }
    hot_in
        .iter()
        .find_map(|&dimension| transfer_in(cluster, loads, region, leader, region_load, dimension))
}

fn transfer_in(
    cluster: &ClusterView,
    loads: &BTreeMap<u64, Load>,
    region: &Region,
    leader: &Peer,
    region_load: Load,
    dimension: Dimension,
) -> Option<Decision> {
    let load_of = |store_id: u64| loads.get(&store_id).map_or(0, |load| load.get(dimension));
    let source = load_of(leader.store_id);
    let hottest = cluster
        .stores
        .iter()
        .filter(|&(_, &health)| health == StoreHealth::Up)
        .map(|(&store_id, _)| load_of(store_id))
        .max()
        .unwrap_or(0);
    if source < hottest {
        return None;
    }
    let own = region_load.get(dimension);
    let target = voters(region)
        .into_iter()
        .filter(|p| {
            p.store_id != leader.store_id
                && cluster.health(p.store_id) == StoreHealth::Up
                && source.saturating_sub(load_of(p.store_id)) > own
        })
        .min_by_key(|p| (load_of(p.store_id), p.id))?;
    Some(Decision::Step {
        step: Step::TransferLeader(*target),
        reason: format!(
            "hot region ({}): store {} leads {}, the most of the up stores; store {} leads {}",
            dimension.show(own),
            leader.store_id,
            dimension.show(source),
            target.store_id,
            dimension.show(load_of(target.store_id))
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use ringkv_proto::metapb::{Peer, Region};
    use ringkv_proto::placementpb::RegionStats;

    use crate::state::{PlacementConfig, RegionReport};
    use crate::test_cluster::{
        balance_config, carry_out, expect_nothing, expect_transfer, on_store, report_of, secs,
        TestCluster,
    };

    const MIB: u64 = 1 << 20;

    /// Balancing on, but only the hot-region scheduler: the leader and region balancers
    /// would act on the lopsided leader counts these tests build.
    fn hot_config() -> PlacementConfig {
        PlacementConfig {
            leader_schedule_limit: 0,
            region_schedule_limit: 0,
            ..balance_config()
        }
    }

    /// Three stores up at `t0 + 1s` and `region_count` regions with voters on all three,
    /// led from the first.
    fn hot_cluster(
        region_count: usize,
        config: PlacementConfig,
    ) -> (TestCluster, Instant, Vec<(Region, Peer)>) {
        let mut cluster = TestCluster::with_regions(3, region_count, config);
        let at = cluster.t0 + secs(1);
        let stores = cluster.stores.clone();
        cluster.heartbeat_stores(&stores, at);
        let regions = cluster
            .regions
            .clone()
            .iter()
            .map(|region| cluster.spread(region, &stores, stores[0]))
            .collect();
        (cluster, at, regions)
    }

    fn writing(region: &Region, leader: Peer, written_bytes_per_sec: u64) -> RegionReport {
        RegionReport {
            stats: RegionStats {
                written_bytes_per_sec,
                ..RegionStats::default()
            },
            ..report_of(region, leader)
        }
    }

    /// `times` reports of `region` writing `bytes` per second; the answer to the last.
    fn report_writes(
        cluster: &mut TestCluster,
        (region, leader): &(Region, Peer),
        bytes: u64,
        times: usize,
        at: Instant,
    ) -> ringkv_proto::placementpb::RegionHeartbeatResponse {
        let mut answer = Default::default();
        for _ in 0..times {
            answer = cluster.send(writing(region, *leader, bytes), at);
        }
        answer
    }

    #[test]
    fn hot_write_region_on_the_hottest_store_goes_to_the_least_loaded_voter() {
        let (mut cluster, at, mut regions) = hot_cluster(4, hot_config());
        let s = cluster.stores.clone();
        // The third store leads a region of its own, writing below the threshold.
        let (region, _) = regions[3].clone();
        regions[3] = (region.clone(), on_store(&region, s[2]));
        report_writes(&mut cluster, &regions[3], MIB / 2, 3, at);
        // The first store leads three regions writing 2 MiB/s each.
        for region in &regions[1..3] {
            expect_nothing(
                &report_writes(&mut cluster, region, 2 * MIB, 2, at),
                "two reports are not enough to be hot",
            );
        }
        let answer = report_writes(&mut cluster, &regions[0], 2 * MIB, 3, at);
        let target = expect_transfer(&answer);
        assert_eq!(
            target.store_id, s[1],
            "the voter on the store leading no load, not the one leading 0.5 MiB/s"
        );
        let listed = cluster.state.operators(at);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].kind, "transfer-leader");
        assert!(listed[0].detail.contains("(hot-region)"), "{listed:?}");
        assert!(listed[0].detail.contains("2.0 MiB/s written"), "{listed:?}");

        // Carried out: the first store leads 4 MiB/s, the second 2, the third 0.5. The next
        // hot region goes to the third store: to the second it would only even out.
        regions[0] = carry_out(&regions[0].0, regions[0].1, &answer);
        report_writes(&mut cluster, &regions[0], 2 * MIB, 1, at + secs(1));
        assert!(cluster.state.operators(at + secs(1)).is_empty());
        let answer = report_writes(&mut cluster, &regions[1], 2 * MIB, 1, at + secs(1));
        assert_eq!(expect_transfer(&answer).store_id, s[2]);
    }

    #[test]
    fn hot_read_region_moves_like_a_hot_write_region() {
        let (mut cluster, at, regions) = hot_cluster(2, hot_config());
        let reading = |(region, leader): &(Region, Peer)| RegionReport {
            stats: RegionStats {
                read_keys_per_sec: 1500,
                ..RegionStats::default()
            },
            ..report_of(region, *leader)
        };
        for _ in 0..3 {
            cluster.send(reading(&regions[1]), at);
        }
        let answers: Vec<_> = (0..3)
            .map(|_| cluster.send(reading(&regions[0]), at))
            .collect();
        expect_nothing(&answers[1], "not hot before the third report");
        expect_transfer(&answers[2]);
        let detail = &cluster.state.operators(at)[0].detail;
        assert!(detail.contains("1500 keys/s read"), "{detail}");
    }

    #[test]
    fn region_is_hot_only_after_min_reports_in_a_row() {
        let (mut cluster, at, regions) = hot_cluster(2, hot_config());
        report_writes(&mut cluster, &regions[1], MIB / 2, 1, at);
        expect_nothing(
            &report_writes(&mut cluster, &regions[0], 2 * MIB, 2, at),
            "two hot reports",
        );
        expect_nothing(
            &report_writes(&mut cluster, &regions[0], MIB - 1, 1, at),
            "just under the threshold: the streak starts over",
        );
        expect_nothing(
            &report_writes(&mut cluster, &regions[0], 2 * MIB, 2, at),
            "two hot reports again",
        );
        expect_transfer(&report_writes(&mut cluster, &regions[0], MIB, 1, at));
    }

    #[test]
    fn region_is_not_hot_scheduled_again_within_the_cooldown() {
        let (mut cluster, at, mut regions) = hot_cluster(3, hot_config());
        let s = cluster.stores.clone();
        report_writes(&mut cluster, &regions[1], MIB / 2, 1, at);
        let answer = report_writes(&mut cluster, &regions[0], 2 * MIB, 3, at);
        regions[0] = carry_out(&regions[0].0, regions[0].1, &answer);
        let new_home = regions[0].1.store_id;
        let third = *s[1..].iter().find(|&&id| id != new_home).expect("a store");

        // The new leader's store also takes a cold region's leadership: it is now the
        // hottest (2.9 MiB/s against 0.5 and 0), and the region would move on to the third.
        let (region, _) = regions[2].clone();
        regions[2] = (region.clone(), on_store(&region, new_home));
        report_writes(&mut cluster, &regions[2], MIB * 9 / 10, 1, at + secs(1));
        for n in 1..30 {
            let when = at + secs(2 * n);
            cluster.heartbeat_stores(&s, when);
            expect_nothing(
                &report_writes(&mut cluster, &regions[0], 2 * MIB, 1, when),
                "moved less than hot-region-cooldown ago",
            );
        }
        let cooled = at + secs(61);
        cluster.heartbeat_stores(&s, cooled);
        let answer = report_writes(&mut cluster, &regions[0], 2 * MIB, 1, cooled);
        assert_eq!(expect_transfer(&answer).store_id, third);
    }

    #[test]
    fn hot_region_transfers_keep_to_hot_region_schedule_limit() {
        let config = PlacementConfig {
            hot_region_schedule_limit: 1,
            ..hot_config()
        };
        let (mut cluster, at, mut regions) = hot_cluster(3, config);
        report_writes(&mut cluster, &regions[2], 2 * MIB, 1, at);
        report_writes(&mut cluster, &regions[1], 2 * MIB, 2, at);
        let first = report_writes(&mut cluster, &regions[0], 2 * MIB, 3, at);
        expect_transfer(&first);
        // The first store still leads 4 MiB/s and a voter's store none: worth a transfer,
        // but the one slot is taken...
        expect_nothing(
            &report_writes(&mut cluster, &regions[1], 2 * MIB, 1, at),
            "one hot-region transfer in flight at most",
        );
        // ... until the first transfer is done.
        regions[0] = carry_out(&regions[0].0, regions[0].1, &first);
        report_writes(&mut cluster, &regions[0], 2 * MIB, 1, at + secs(1));
        expect_transfer(&report_writes(
            &mut cluster,
            &regions[1],
            2 * MIB,
            1,
            at + secs(1),
        ));
    }

    #[test]
    fn no_transfer_that_would_only_swap_the_hottest_store() {
        let (mut cluster, at, regions) = hot_cluster(2, hot_config());
        // The first store's only load is the hot region: moving it would just make another
        // store the one leading 2 MiB/s.
        for _ in 0..5 {
            expect_nothing(
                &report_writes(&mut cluster, &regions[0], 2 * MIB, 1, at),
                "a transfer would swap the hottest store",
            );
        }
        // A little more load on the first store, and the transfer leaves both cooler.
        report_writes(&mut cluster, &regions[1], 1024, 1, at);
        expect_transfer(&report_writes(&mut cluster, &regions[0], 2 * MIB, 1, at));
    }

    #[test]
    fn balance_leader_leaves_hot_regions_alone() {
        let config = PlacementConfig {
            leader_schedule_limit: 4,
            ..hot_config()
        };
        let (mut cluster, at, regions) = hot_cluster(3, config);
        // The first store leads all three regions, so balance-leader wants one elsewhere;
        // the hot one only swaps the hottest store, so it stays.
        expect_nothing(
            &report_writes(&mut cluster, &regions[0], 2 * MIB, 3, at),
            "a hot region is the hot-region scheduler's to move",
        );
        expect_transfer(&report_writes(&mut cluster, &regions[1], 0, 1, at));
    }

    #[test]
    fn hot_region_scheduling_is_off_when_balance_is() {
        let config = PlacementConfig {
            balance: false,
            ..hot_config()
        };
        let (mut cluster, at, regions) = hot_cluster(3, config);
        for _ in 0..5 {
            for region in &regions {
                expect_nothing(
                    &report_writes(&mut cluster, region, 2 * MIB, 1, at),
                    "balance is off",
                );
            }
        }
    }
}
