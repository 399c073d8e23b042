//! `kvctl`: ringkv's admin CLI. Talks to the placement service (by default at the address
//! `ringkv placement` listens on out of the box).
//!
//! ```text
//! kvctl stores                 every store: state, addresses, regions, leaders, disk
//! kvctl regions                every region in ring order: range, epoch, peers, leader
//! kvctl region ID              one region
//! kvctl operators              operators placement is carrying out (add/promote/remove peer,
//!                              transfer leader, split, move), with their age and reason
//! kvctl split REGION [--at HASH]                      split where the data halves, or at HASH
//! kvctl transfer-leader REGION --to STORE
//! kvctl move-region REGION --from STORE --to STORE    learner on STORE, snapshot, promote, remove
//! kvctl remove-store STORE                            drain a store, then tombstone it
//! ```
//! The last four return once placement accepted the request; with `--wait` they follow it to
//! the end (printing progress), failing after `--timeout-secs`.
//!
//! Data commands go through the routing client (`ringkv::client`), straight to each key's
//! region leader:
//! ```text
//! kvctl get KEY [--stale]                      the value (exit 1, "not found", if absent)
//! kvctl put KEY VALUE [--ttl-secs N]
//! kvctl delete KEY
//! kvctl cas KEY (--expect V | --expect-absent) (--new V | --delete)
//! kvctl scan [--prefix P] [--limit N] [--cursor HEX] [--all]
//! ```
//! with `--timeout-secs` (default 10) and TLS (`--ca-cert`, `--client-cert`, `--client-key`).
//! Human tables by default; `--json` for scripts. Failures exit non-zero with a message.

#[path = "kvctl/data.rs"]
mod data;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringkv::proto::metapb::PeerRole;
use ringkv::proto::placementpb::placement_client::PlacementClient;
use ringkv::proto::placementpb::{
    get_region_request, GetAllStoresRequest, GetClusterInfoRequest, GetOperatorsRequest,
    GetRegionRequest, GetStoreRequest, MoveRegionRequest, RegionWithLeader, RemoveStoreRequest,
    RequestHeader, ScanRegionsRequest, SplitRegionRequest, StoreInfo, StoreState,
    TransferLeaderRequest,
};
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};

/// How long kvctl waits for placement before giving up.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(name = "kvctl", version, about = "Administer a ringkv cluster")]
struct Cli {
    /// Placement service address (host:port).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:2379",
        env = "RINGKV_PLACEMENT"
    )]
    placement: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Data(data::DataCommand),
    /// List every store with its state, addresses, region and leader counts and disk use.
    Stores,
    /// List every region in ring order with its range, epoch, peers and leader.
    Regions,
    /// Show one region.
    Region {
        /// The region id.
        id: u64,
    },
    /// List the operators placement is carrying out, with their age and reason.
    Operators,
    /// Split a region in two: where its data halves, or at a given ring position.
    Split {
        region: u64,
        /// Ring position (decimal or 0x-hex) strictly inside the region's range.
        #[arg(long, value_parser = parse_hash)]
        at: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Make the region's voter on STORE its leader.
    TransferLeader {
        region: u64,
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Move the region's replica from one store to another (add a learner there, catch it up
    /// by snapshot, promote it, remove the old replica).
    MoveRegion {
        region: u64,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Decommission a store: move every replica off it, then mark it tombstone (the node can
    /// then be stopped without loss).
    RemoveStore {
        store: u64,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(clap::Args, Clone, Copy)]
struct WaitArgs {
    /// Follow the operation to its end, printing progress.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up (non-zero exit) after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

fn parse_hash(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not a ring position (decimal or 0x-hex): {e}"))
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("cannot reach placement at {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error("{0}")]
    Refused(String),
    #[error("gave up after {secs} s: {what}")]
    TimedOut { secs: u64, what: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("compare failed: {0}")]
    CompareFailed(String),
}

async fn connect(addr: &str) -> Result<(PlacementClient<Channel>, u64), CliError> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let unreachable = |message: String| CliError::Unreachable {
        addr: addr.to_owned(),
        message,
    };
    let channel = Endpoint::from_shared(url)
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .connect()
        .await
        .map_err(|e| unreachable(with_sources(&e)))?;
    let mut client = PlacementClient::new(channel);
    let info = client
        .get_cluster_info(GetClusterInfoRequest {})
        .await
        .map_err(|s| unreachable(s.message().to_owned()))?
        .into_inner();
    Ok((client, info.cluster_id))
}

/// An error and its causes, `outer: inner: innermost`.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn refused(status: tonic::Status) -> CliError {
    CliError::Refused(status.message().to_owned())
}

fn state_name(state: i32) -> &'static str {
    match StoreState::try_from(state) {
        Ok(StoreState::Up) => "up",
        Ok(StoreState::Down) => "down",
        Ok(StoreState::Tombstone) => "tombstone",
        Ok(StoreState::Offline) => "offline",
        Err(_) => "unknown",
    }
}

/// `1.5 GiB`-style sizes for tables.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Prints rows as a left-aligned table under `header`.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn store_json(info: &StoreInfo) -> Value {
    let store = info.store.clone().unwrap_or_default();
    let stats = info.stats.unwrap_or_default();
    json!({
        "id": store.id,
        "state": state_name(info.state),
        "raft_addr": store.raft_addr,
        "http_addr": store.http_addr,
        "region_count": stats.region_count,
        "leader_count": stats.leader_count,
        "used_bytes": stats.used_bytes,
        "available_bytes": stats.available_bytes,
        "capacity_bytes": stats.capacity_bytes,
        "last_heartbeat_ms_ago": info.last_heartbeat_ms_ago,
    })
}

fn region_json(entry: &RegionWithLeader) -> Value {
    let region = entry.region.clone().unwrap_or_default();
    let epoch = region.epoch.unwrap_or_default();
    json!({
        "id": region.id,
        "start_hash": region.start_hash,
        "end_hash": region.end_hash,
        "version": epoch.version,
        "conf_ver": epoch.conf_ver,
        "peers": region.peers.iter().map(|p| json!({
            "id": p.id,
            "store_id": p.store_id,
            "role": role_name(p.role),
        })).collect::<Vec<_>>(),
        "leader_store_id": entry.leader.map_or(0, |l| l.store_id),
    })
}

fn role_name(role: i32) -> &'static str {
    match PeerRole::try_from(role) {
        Ok(PeerRole::Voter) => "voter",
        Ok(PeerRole::Learner) => "learner",
        Ok(PeerRole::IncomingVoter) => "incoming-voter",
        Ok(PeerRole::DemotingVoter) => "demoting-voter",
        Err(_) => "unknown",
    }
}

fn region_row(entry: &RegionWithLeader) -> Vec<String> {
    let region = entry.region.clone().unwrap_or_default();
    let epoch = region.epoch.unwrap_or_default();
    let peers: Vec<String> = region
        .peers
        .iter()
        .map(|p| match role_name(p.role) {
            "voter" => format!("{}@{}", p.id, p.store_id),
            role => format!("{}@{} {role}", p.id, p.store_id),
        })
        .collect();
    vec![
        region.id.to_string(),
        format!("{:#018x}", region.start_hash),
        if region.end_hash == 0 {
            "end".to_owned()
        } else {
            format!("{:#018x}", region.end_hash)
        },
        format!("{}/{}", epoch.version, epoch.conf_ver),
        peers.join(","),
        entry
            .leader
            .map_or("-".to_owned(), |l| l.store_id.to_string()),
    ]
}

const REGION_HEADER: [&str; 6] = [
    "ID",
    "START",
    "END",
    "VER/CONF",
    "PEERS (id@store)",
    "LEADER",
];

async fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Data(command) = cli.command {
        return data::run(command, &cli.placement, cli.json).await;
    }
    let (mut client, cluster_id) = connect(&cli.placement).await?;
    let header = Some(RequestHeader { cluster_id });
    match cli.command {
        Command::Data(_) => unreachable!("data commands returned above"),
        Command::Stores => {
            let stores = client
                .get_all_stores(GetAllStoresRequest { header })
                .await
                .map_err(refused)?
                .into_inner()
                .stores;
            if cli.json {
                let list: Vec<Value> = stores.iter().map(store_json).collect();
                println!("{}", json!({ "cluster_id": cluster_id, "stores": list }));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = stores
                .iter()
                .map(|info| {
                    let store = info.store.clone().unwrap_or_default();
                    let stats = info.stats.unwrap_or_default();
                    vec![
                        store.id.to_string(),
                        state_name(info.state).to_owned(),
                        store.raft_addr,
                        store.http_addr,
                        stats.region_count.to_string(),
                        stats.leader_count.to_string(),
                        human_bytes(stats.used_bytes),
                        human_bytes(stats.available_bytes),
                        human_bytes(stats.capacity_bytes),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "STATE",
                    "RAFT",
                    "HTTP",
                    "REGIONS",
                    "LEADERS",
                    "USED",
                    "AVAILABLE",
                    "CAPACITY",
                ],
                &rows,
            );
        }
        Command::Regions => {
            let regions = all_regions(&mut client, header).await?;
            if cli.json {
                let list: Vec<Value> = regions.iter().map(region_json).collect();
                println!("{}", json!({ "cluster_id": cluster_id, "regions": list }));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = regions.iter().map(region_row).collect();
            print_table(&REGION_HEADER, &rows);
        }
        Command::Region { id } => {
            let region = client
                .get_region(GetRegionRequest {
                    header,
                    by: Some(get_region_request::By::RegionId(id)),
                })
                .await
                .map_err(refused)?
                .into_inner()
                .region
                .ok_or_else(|| CliError::Refused(format!("placement returned no region {id}")))?;
            if cli.json {
                println!("{}", region_json(&region));
            } else {
                print_table(&REGION_HEADER, &[region_row(&region)]);
            }
        }
        Command::Operators => {
            let operators = client
                .get_operators(GetOperatorsRequest { header })
                .await
                .map_err(refused)?
                .into_inner()
                .operators;
            if cli.json {
                let list: Vec<Value> = operators
                    .iter()
                    .map(|op| {
                        json!({
                            "region_id": op.region_id,
                            "kind": op.kind,
                            "detail": op.detail,
                            "age_ms": op.age_ms,
                        })
                    })
                    .collect();
                println!("{}", json!({ "cluster_id": cluster_id, "operators": list }));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = operators
                .iter()
                .map(|op| {
                    vec![
                        op.region_id.to_string(),
                        op.kind.clone(),
                        format!("{:.1}s", op.age_ms as f64 / 1000.0),
                        op.detail.clone(),
                    ]
                })
                .collect();
            print_table(&["REGION", "KIND", "AGE", "DETAIL"], &rows);
        }
        Command::Split { region, at, wait } => {
            let before = get_region(&mut client, header, region).await?;
            let version = region_version(&before);
            client
                .split_region(SplitRegionRequest {
                    header,
                    region_id: region,
                    split_hash: at.unwrap_or(0),
                })
                .await
                .map_err(refused)?;
            accepted(cli.json, &format!("split of region {region}"), wait);
            if wait.wait {
                // Done once placement shows both halves: the region with its new version,
                // and the new region (reported by its own leader) where the range now ends.
                let both = follow(wait, "the split", async || {
                    let now = get_region(&mut client, header, region).await?;
                    if region_version(&now) <= version {
                        // Placement gives a split up when the region changes before it runs
                        // (e.g. a membership change): no operator left and no new version.
                        let in_flight = client
                            .get_operators(GetOperatorsRequest { header })
                            .await
                            .map_err(refused)?
                            .into_inner()
                            .operators
                            .iter()
                            .any(|op| op.region_id == region);
                        let again = get_region(&mut client, header, region).await?;
                        if !in_flight && region_version(&again) <= version {
                            return Err(CliError::Refused(format!(
                                "the split of region {region} was cancelled by placement (the \
                                 region changed before it ran); run it again"
                            )));
                        }
                        return Ok(None);
                    }
                    let end = now.region.as_ref().map_or(0, |r| r.end_hash);
                    let sibling = client
                        .get_region(GetRegionRequest {
                            header,
                            by: Some(get_region_request::By::Hash(end)),
                        })
                        .await
                        .ok()
                        .and_then(|r| r.into_inner().region)
                        .filter(|r| r.region.as_ref().is_some_and(|r| r.id != region));
                    Ok(sibling.map(|sibling| vec![now, sibling]))
                })
                .await?;
                print_regions(cli.json, cluster_id, &both);
            }
        }
        Command::TransferLeader { region, to, wait } => {
            client
                .transfer_leader(TransferLeaderRequest {
                    header,
                    region_id: region,
                    to_store_id: to,
                })
                .await
                .map_err(refused)?;
            accepted(
                cli.json,
                &format!("leader transfer of region {region} to store {to}"),
                wait,
            );
            if wait.wait {
                let after = follow(wait, "the leader transfer", async || {
                    let now = get_region(&mut client, header, region).await?;
                    Ok((now.leader.map(|l| l.store_id) == Some(to)).then_some(now))
                })
                .await?;
                print_regions(cli.json, cluster_id, &[after]);
            }
        }
        Command::MoveRegion {
            region,
            from,
            to,
            wait,
        } => {
            client
                .move_region(MoveRegionRequest {
                    header,
                    region_id: region,
                    from_store_id: from,
                    to_store_id: to,
                })
                .await
                .map_err(refused)?;
            accepted(
                cli.json,
                &format!("move of region {region} from store {from} to store {to}"),
                wait,
            );
            if wait.wait {
                let mut last_shown = String::new();
                let after = follow(wait, "the move", async || {
                    let now = get_region(&mut client, header, region).await?;
                    let peers = now.region.clone().unwrap_or_default().peers;
                    // Peers, and what placement says about the step (e.g. the learner's
                    // snapshot: "1.2 MiB of 3.4 MiB").
                    let detail = client
                        .get_operators(GetOperatorsRequest { header })
                        .await
                        .map(|r| r.into_inner().operators)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|op| op.region_id == region)
                        .map(|op| format!("{}: {}", op.kind, op.detail))
                        .collect::<Vec<_>>()
                        .join("; ");
                    let shown = format!("peers {} {detail}", region_row(&now)[4]);
                    if shown != last_shown && !cli.json {
                        eprintln!("  region {region}: {shown}");
                        last_shown = shown;
                    }
                    let on_to = peers
                        .iter()
                        .any(|p| p.store_id == to && p.role == PeerRole::Voter as i32);
                    let on_from = peers.iter().any(|p| p.store_id == from);
                    Ok((on_to && !on_from).then_some(now))
                })
                .await?;
                print_regions(cli.json, cluster_id, &[after]);
            }
        }
        Command::RemoveStore { store, wait } => {
            client
                .remove_store(RemoveStoreRequest {
                    header,
                    store_id: store,
                })
                .await
                .map_err(refused)?;
            accepted(cli.json, &format!("removal of store {store}"), wait);
            if wait.wait {
                let mut last_count = u64::MAX;
                follow(wait, "the store's drain", async || {
                    let info = client
                        .get_store(GetStoreRequest {
                            header,
                            store_id: store,
                        })
                        .await
                        .map_err(refused)?
                        .into_inner()
                        .store
                        .unwrap_or_default();
                    let regions = all_regions(&mut client, header).await?;
                    let left = regions
                        .iter()
                        .filter_map(|r| r.region.as_ref())
                        .filter(|r| r.peers.iter().any(|p| p.store_id == store))
                        .count() as u64;
                    if left != last_count && !cli.json {
                        eprintln!(
                            "  store {store}: {left} replica(s) left, state {}",
                            state_name(info.state)
                        );
                        last_count = left;
                    }
                    Ok((info.state == StoreState::Tombstone as i32).then_some(()))
                })
                .await?;
                if cli.json {
                    println!("{}", json!({ "store_id": store, "state": "tombstone" }));
                } else {
                    println!("store {store} is drained and tombstoned; its node can be stopped");
                }
            }
        }
    }
    Ok(())
}

fn region_version(region: &RegionWithLeader) -> u64 {
    region
        .region
        .as_ref()
        .and_then(|r| r.epoch)
        .map_or(0, |e| e.version)
}

/// Every region, in ring order.
async fn all_regions(
    client: &mut PlacementClient<Channel>,
    header: Option<RequestHeader>,
) -> Result<Vec<RegionWithLeader>, CliError> {
    Ok(client
        .scan_regions(ScanRegionsRequest {
            header,
            start_hash: 0,
            limit: 0,
        })
        .await
        .map_err(refused)?
        .into_inner()
        .regions)
}

async fn get_region(
    client: &mut PlacementClient<Channel>,
    header: Option<RequestHeader>,
    region_id: u64,
) -> Result<RegionWithLeader, CliError> {
    client
        .get_region(GetRegionRequest {
            header,
            by: Some(get_region_request::By::RegionId(region_id)),
        })
        .await
        .map_err(refused)?
        .into_inner()
        .region
        .ok_or_else(|| CliError::Refused(format!("placement returned no region {region_id}")))
}

fn accepted(json: bool, what: &str, wait: WaitArgs) {
    if json && wait.wait {
        return; // the final JSON follows
    }
    if json {
        println!("{}", json!({ "accepted": what }));
    } else if wait.wait {
        eprintln!("{what}: accepted, waiting...");
    } else {
        println!("{what}: accepted (follow it with kvctl operators, or pass --wait)");
    }
}

fn print_regions(json: bool, cluster_id: u64, regions: &[RegionWithLeader]) {
    if json {
        let list: Vec<Value> = regions.iter().map(region_json).collect();
        println!("{}", json!({ "cluster_id": cluster_id, "regions": list }));
    } else {
        let rows: Vec<Vec<String>> = regions.iter().map(region_row).collect();
        print_table(&REGION_HEADER, &rows);
    }
}

/// Polls `check` until it yields a value or `wait.timeout_secs` pass.
async fn follow<T>(
    wait: WaitArgs,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<Option<T>, CliError>,
) -> Result<T, CliError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.timeout_secs);
    loop {
        if let Some(done) = check().await? {
            return Ok(done);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::TimedOut {
                secs: wait.timeout_secs,
                what: format!("{what} did not finish"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kvctl: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kvctl: {error}");
            ExitCode::FAILURE
        }
    }
}
