//! Runs the deterministic simulator (`nomade_node::sim`) over many seeds.
//!
//! ```text
//! cargo run --release -p nomade-node --example sim -- \
//!     [--devices N] [--seeds K | --seed S] [--topology mesh|line] \
//!     [--edits E] [--loss P] [--partition] [--crash] [--faults] [--partial] [--no-compress] [--json PATH]
//! ```
//!
//! `--faults` is `--loss 0.1 --partition --crash`; `--partial` makes device 0
//! hold part of the documents (`SimConfig::partial`). Prints one line per seed
//! and, at the end, the seeds that failed (each replayed with `--seed S`);
//! exits with status 1 if any did. `--json` writes the figures of the last
//! seed.

use std::process::ExitCode;

use nomade_node::sim::{run, SimConfig, SimReport, Topology};

/// Says what is wrong with the arguments, and how to call, and exits.
fn usage(problem: &str) -> ! {
    eprintln!("{problem}");
    eprintln!(
        "usage: sim [--devices N] [--seeds K | --seed S] [--topology mesh|line] [--edits E] [--loss P] [--partition] [--crash] [--faults] [--partial] [--no-compress] [--json PATH]"
    );
    std::process::exit(2)
}

fn main() -> ExitCode {
    let mut config = SimConfig::default();
    let mut seeds = 1..2u64;
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--devices" => {
                config.devices = value("--devices")
                    .parse()
                    .unwrap_or_else(|_| usage("expected a number"))
            }
            "--seeds" => {
                seeds = 1..1 + value("--seeds")
                    .parse::<u64>()
                    .unwrap_or_else(|_| usage("expected a number"))
            }
            "--seed" => {
                let s: u64 = value("--seed")
                    .parse()
                    .unwrap_or_else(|_| usage("expected a number"));
                seeds = s..s + 1;
            }
            "--edits" => {
                config.edits_per_device = value("--edits")
                    .parse()
                    .unwrap_or_else(|_| usage("expected a number"))
            }
            "--loss" => {
                config.loss = value("--loss")
                    .parse()
                    .unwrap_or_else(|_| usage("expected a probability"))
            }
            "--topology" => {
                config.topology = match value("--topology").as_str() {
                    "mesh" => Topology::FullMesh,
                    "line" => Topology::Line,
                    other => usage(&format!("no topology {other}: mesh or line")),
                }
            }
            "--partition" => config.partition = true,
            "--no-compress" => config.compress = false,
            "--crash" => config.crash = true,
            "--partial" => config.partial = true,
            "--faults" => {
                config.loss = 0.1;
                config.partition = true;
                config.crash = true;
            }
            "--json" => json = Some(value("--json")),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let mut failed = Vec::new();
    let mut last: Option<SimReport> = None;
    for seed in seeds {
        config.seed = seed;
        let dir = tempfile::tempdir().expect("a temporary directory");
        match run(&config, dir.path()) {
            Ok(r) => {
                println!(
                    "seed {seed}: {} devices ({:?}), {} ops: sent {:.2}x the minimum, {:.0} bytes per delivered op, converged after {:.0} ms (simulated), {} connections",
                    config.devices,
                    config.topology,
                    r.ops_made,
                    r.traffic_ratio(),
                    r.bytes_per_delivered_op(),
                    r.converged_after.as_secs_f64() * 1e3,
                    r.connections,
                );
                let by_type: Vec<String> = r
                    .bytes_by_type
                    .iter()
                    .map(|(name, bytes)| {
                        format!("{name} {:.0}", *bytes as f64 / r.ops_minimum.max(1) as f64)
                    })
                    .collect();
                println!(
                    "  bytes per delivered op by message type: {}",
                    by_type.join(", ")
                );
                last = Some(r);
            }
            Err(e) => {
                println!("FAILED {e}");
                failed.push(seed);
            }
        }
    }
    if let (Some(path), Some(r)) = (json, &last) {
        let by_type: Vec<String> = r
            .bytes_by_type
            .iter()
            .map(|(name, bytes)| format!("\"{name}\": {bytes}"))
            .collect();
        let text = format!(
            "{{\"devices\": {}, \"topology\": \"{:?}\", \"ops_made\": {}, \"traffic_ratio\": {:.4}, \"bytes_per_delivered_op\": {:.1}, \"bytes_by_type\": {{{}}}, \"converged_ms\": {:.1}}}\n",
            config.devices,
            config.topology,
            r.ops_made,
            r.traffic_ratio(),
            r.bytes_per_delivered_op(),
            by_type.join(", "),
            r.converged_after.as_secs_f64() * 1e3
        );
        std::fs::write(&path, text).expect("write the figures");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failing seeds (replay each with --seed S): {failed:?}");
        ExitCode::FAILURE
    }
}
