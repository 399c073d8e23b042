//! `kvbench`: one load, run against ringkv (its HTTP API, or its routing gRPC client) or etcd
//! v3 (its JSON gateway), so they can be compared on the same machine with the same tool.
//!
//! ```text
//! kvbench --target ringkv --endpoints http://127.0.0.1:12380,http://127.0.0.1:22380 \
//!         --workload write --concurrency 64 --duration-secs 20
//! kvbench --target ringkv-grpc --endpoints 127.0.0.1:2379 --workload a   # placement's address
//! kvbench --target etcd --endpoints http://127.0.0.1:23791 --workload read --json
//! ```
//!
//! Workloads: `write` (puts), `read` (linearizable gets), YCSB `a` (50% reads), `b` (95%),
//! `c` (100%). Keys are `--key-size` bytes, values `--value-size`, chosen uniformly or by a
//! zipfian law over `--keys` keys; read workloads load every key first. Closed loop by default
//! (`--concurrency` clients, each waiting for its answer); `--rate` makes it an open loop at
//! that many requests per second, and latency is then measured from when each request was
//! due, not when it was sent (no coordinated omission). Reports throughput and
//! p50/p99/p99.9 latency per operation, as a table or `--json`.
//!
//! Layout: `target` (the `--target` choice and the client workers drive), `http` (ringkv's
//! HTTP API and etcd's gateway), `grpc` (ringkv's routing client); this file is the load.

mod grpc;
mod http;
mod target;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rand_distr::{Distribution as _, Zipf};
use serde_json::json;

use target::{Client, Target};

/// mimalloc, as the ringkv server uses: a load generator should spend its share of the machine
/// on the load, not on glibc's allocator (~10% of it, profiled), whichever target it drives.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    Write,
    Read,
    /// YCSB A: 50% reads, 50% writes.
    A,
    /// YCSB B: 95% reads.
    B,
    /// YCSB C: reads only.
    C,
}

impl Workload {
    fn read_percent(self) -> u32 {
        match self {
            Workload::Write => 0,
            Workload::A => 50,
            Workload::B => 95,
            Workload::Read | Workload::C => 100,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KeyDistribution {
    Uniform,
    Zipfian,
}

#[derive(Parser, Clone, Debug)]
#[command(name = "kvbench", about = "Load generator for ringkv and etcd")]
struct Args {
    #[arg(long, value_enum, default_value = "ringkv")]
    target: Target,
    /// Comma-separated. ringkv, etcd: base URLs (required); client i uses endpoint i mod n.
    /// ringkv-grpc: placement's gRPC addresses (default 127.0.0.1:2379); the routing client
    /// finds the nodes from there.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long, value_enum, default_value = "write")]
    workload: Workload,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 20)]
    duration_secs: u64,
    /// Requests per second over all clients (open loop); 0 = closed loop, as fast as answers come.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, value_enum, default_value = "uniform")]
    distribution: KeyDistribution,
    /// Zipf exponent for --distribution zipfian.
    #[arg(long, default_value_t = 0.99)]
    zipf_exponent: f64,
    /// Skip loading the keys before a read workload.
    #[arg(long)]
    no_preload: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Seed for key choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads of the load generator's async runtime (default: one per CPU). It shares the
    /// machine with the servers it measures; fewer threads disturb them less, but one may
    /// not keep up with many HTTP connections.
    #[arg(long)]
    threads: Option<usize>,
}

/// Latencies are recorded in microseconds up to this bound.
const MAX_LATENCY_US: u64 = 60_000_000;

/// The name of key number `index`, `size` bytes long (`k000…0index`).
fn key_name(index: u64, size: usize) -> String {
    let digits = format!("{index}");
    let pad = size.saturating_sub(digits.len() + 1);
    format!("k{}{digits}", "0".repeat(pad))
}

#[derive(Clone)]
struct Tally {
    reads: Histogram<u64>,
    writes: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        let histogram =
            || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds");
        Tally {
            reads: histogram(),
            writes: histogram(),
            errors: 0,
            first_error: None,
        }
    }

    fn merge(&mut self, other: &Tally) {
        let _ = self.reads.add(&other.reads);
        let _ = self.writes.add(&other.writes);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

fn key_sampler(args: &Args) -> Box<dyn Fn(&mut StdRng) -> u64 + Send + Sync> {
    let keys = args.keys.max(1);
    match args.distribution {
        KeyDistribution::Uniform => Box::new(move |rng: &mut StdRng| rng.random_range(0..keys)),
        KeyDistribution::Zipfian => {
            let zipf = Zipf::new(keys as f64, args.zipf_exponent).expect("valid zipf parameters");
            // Zipf yields 1..=keys, most often 1; scatter the hot keys over the key space
            // (a multiplicative hash) so they do not all sit in one region.
            Box::new(move |rng: &mut StdRng| {
                let rank = zipf.sample(rng) as u64 - 1;
                rank.wrapping_mul(0x9E37_79B9_7F4A_7C15) % keys
            })
        }
    }
}

/// Writes every key once, with `concurrency` clients.
async fn preload(args: &Args, client: Arc<Client>) -> Result<(), String> {
    let mut tasks = tokio::task::JoinSet::new();
    let workers = args.concurrency.max(1) as u64;
    for worker in 0..workers {
        let client = client.clone();
        let args = args.clone();
        tasks.spawn(async move {
            let value = vec![b'v'; args.value_size];
            let mut index = worker;
            while index < args.keys {
                let key = key_name(index, args.key_size);
                client.put(worker as usize, &key, &value).await?;
                index += workers;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.map_err(|e| e.to_string())??;
    }
    Ok(())
}

async fn run_worker(
    worker: usize,
    args: Args,
    client: Arc<Client>,
    sampler: Arc<dyn Fn(&mut StdRng) -> u64 + Send + Sync>,
    start: Instant,
) -> Tally {
    let mut tally = Tally::new();
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(worker as u64 * 7919));
    let end = start + Duration::from_secs(args.duration_secs);
    let interval = (args.rate > 0)
        .then(|| Duration::from_secs_f64(args.concurrency as f64 / args.rate as f64));
    let mut value = vec![0u8; args.value_size];
    let mut sent = 0u64;
    loop {
        // When this request is due: now (closed loop) or on the worker's schedule (open loop).
        let due = match interval {
            Some(interval) => {
                // Stagger workers so they do not fire together.
                let offset = interval.mul_f64(worker as f64 / args.concurrency as f64);
                start + offset + interval * sent as u32
            }
            None => Instant::now(),
        };
        if due >= end {
            break;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        sent += 1;
        let key = key_name(sampler(&mut rng), args.key_size);
        let read = rng.random_range(0..100) < args.workload.read_percent();
        let result = if read {
            client.get(worker, &key).await
        } else {
            rng.fill(&mut value[..]);
            client.put(worker, &key, &value).await
        };
        let latency_us = (due.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
        match result {
            Ok(()) => {
                let histogram = if read {
                    &mut tally.reads
                } else {
                    &mut tally.writes
                };
                let _ = histogram.record(latency_us);
            }
            Err(error) => {
                tally.errors += 1;
                if tally.first_error.is_none() {
                    tally.first_error = Some(error);
                }
            }
        }
    }
    tally
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn summary(name: &str, histogram: &Histogram<u64>, secs: f64) -> serde_json::Value {
    json!({
        "op": name,
        "count": histogram.len(),
        "throughput_per_sec": histogram.len() as f64 / secs,
        "p50_ms": ms(histogram.value_at_quantile(0.50)),
        "p99_ms": ms(histogram.value_at_quantile(0.99)),
        "p999_ms": ms(histogram.value_at_quantile(0.999)),
        "max_ms": ms(histogram.max()),
    })
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = builder.enable_all().build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(error) => {
            eprintln!("kvbench: cannot start the async runtime: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(mut args: Args) -> std::process::ExitCode {
    if args.endpoints.is_empty() {
        let Some(endpoints) = args.target.default_endpoints() else {
            eprintln!("kvbench: --target {} needs --endpoints", args.target.name());
            return std::process::ExitCode::FAILURE;
        };
        args.endpoints = endpoints;
    }
    if args.concurrency == 0 || args.duration_secs == 0 {
        eprintln!("kvbench: give a concurrency and a duration above zero");
        return std::process::ExitCode::FAILURE;
    }
    let client = match Client::connect(args.target, &args.endpoints, args.concurrency).await {
        Ok(client) => Arc::new(client),
        Err(error) => {
            eprintln!("kvbench: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if args.workload.read_percent() > 0 && !args.no_preload {
        if let Err(error) = preload(&args, client.clone()).await {
            eprintln!("kvbench: loading the keys failed: {error}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let sampler: Arc<dyn Fn(&mut StdRng) -> u64 + Send + Sync> = Arc::from(key_sampler(&args));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency {
        tasks.spawn(run_worker(
            worker,
            args.clone(),
            client.clone(),
            sampler.clone(),
            start,
        ));
    }
    let mut total = Tally::new();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(tally) => total.merge(&tally),
            Err(error) => {
                eprintln!("kvbench: a worker failed: {error}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mut all = total.reads.clone();
    let _ = all.add(&total.writes);
    let ops: Vec<serde_json::Value> = [("read", &total.reads), ("write", &total.writes)]
        .into_iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| summary(name, h, secs))
        .chain(std::iter::once(summary("all", &all, secs)))
        .collect();
    let report = json!({
        "target": args.target.name(),
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "keys": args.keys,
        "key_size": args.key_size,
        "value_size": args.value_size,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "distribution": format!("{:?}", args.distribution).to_lowercase(),
        "duration_secs": secs,
        "errors": total.errors,
        "first_error": total.first_error,
        "ops": ops,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{:?} {:?}: {} clients, {} keys, {}B values, {:.1}s, {} errors",
            args.target,
            args.workload,
            args.concurrency,
            args.keys,
            args.value_size,
            secs,
            total.errors
        );
        println!(
            "{:<6} {:>10} {:>12} {:>9} {:>9} {:>9}",
            "op", "count", "ops/s", "p50 ms", "p99 ms", "p99.9 ms"
        );
        for op in &ops {
            println!(
                "{:<6} {:>10} {:>12.0} {:>9.2} {:>9.2} {:>9.2}",
                op["op"].as_str().unwrap_or("?"),
                op["count"],
                op["throughput_per_sec"].as_f64().unwrap_or(0.0),
                op["p50_ms"].as_f64().unwrap_or(0.0),
                op["p99_ms"].as_f64().unwrap_or(0.0),
                op["p999_ms"].as_f64().unwrap_or(0.0),
            );
        }
        if let Some(error) = &total.first_error {
            println!("first error: {error}");
        }
    }
    if total.errors > 0 && all.is_empty() {
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
