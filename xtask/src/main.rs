//! `cargo xtask`: Nomade's build and test orchestration.
//!
//! ```text
//! cargo xtask test              # everything CI runs: fmt, clippy, layering, tests, docs, spec check, short fuzz
//! cargo xtask fuzz --secs N     # every fuzz target for N seconds each
//! cargo xtask bench [--quick]   # criterion benchmarks of every crate
//! cargo xtask chaos --seeds N --secs S   # the chaos suite, N seeds, S-second live phases (release)
//! cargo xtask sim --devices N --seeds K  # the deterministic mesh simulator (release; more options:
//!                                        # --topology mesh|line --edits E --faults --seed S --json PATH)
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

mod netns;

const FUZZ_TARGETS: &[&str] = &[
    "decode_frame",
    "decode_stream",
    "roundtrip",
    "apply_operations",
    "restore_snapshot",
    "peer_identity",
    "sequence_orders",
];

/// Which workspace crate may depend on which (DESIGN.md's table).
const ALLOWED_DEPS: &[(&str, &[&str])] = &[
    ("nomade-wire", &[]),
    ("nomade-crdt", &["nomade-wire"]),
    ("nomade-artifact", &["nomade-wire"]),
    ("nomade-transport", &["nomade-wire"]),
    (
        "nomade-node",
        &[
            "nomade-wire",
            "nomade-crdt",
            "nomade-artifact",
            "nomade-transport",
        ],
    ),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("fuzz") => fuzz(secs_arg(&args[1..], 60)?),
        Some("bench") => bench(args.iter().any(|a| a == "--quick")),
        Some("layering") => layering(),
        Some("spec") => spec_check(),
        Some("chaos") => chaos(&args[1..]),
        Some("sim") => sim(&args[1..]),
        Some("discovery") => discovery(),
        _ => {
            eprintln!(
                "usage: cargo xtask <test [--fuzz-secs N] [--no-netns] | fuzz [--secs N] | bench [--quick] | layering | spec | chaos [--seeds N] [--secs S] | sim [--devices N] [--seeds K] [...] | discovery>"
            );
            std::process::exit(2)
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn secs_arg(args: &[String], default: u64) -> Result<u64> {
    match args
        .iter()
        .position(|a| a == "--secs" || a == "--fuzz-secs")
    {
        Some(i) => args
            .get(i + 1)
            .context("--secs needs a number")?
            .parse()
            .context("--secs needs a whole number of seconds"),
        None => Ok(default),
    }
}

/// The chaos suite (nomade-node/tests/chaos.rs) in release mode: every
/// scenario with `--seeds N` seeds (default 1), live-editing phases of
/// `--secs S` seconds (default 1).
fn chaos(args: &[String]) -> Result<()> {
    let seeds: u64 = match args.iter().position(|a| a == "--seeds") {
        Some(i) => args
            .get(i + 1)
            .context("--seeds needs a number")?
            .parse()
            .context("--seeds needs a whole number")?,
        None => 1,
    };
    let secs = secs_arg(args, 1)?;
    run(
        "chaos",
        cargo()
            .args(["test", "-p", "nomade-node", "--features", "faults"])
            .args(["--test", "chaos", "--release"])
            .args(["--", "--nocapture"])
            .env("NOMADE_CHAOS_SEEDS", seeds.to_string())
            .env("NOMADE_CHAOS_SECS", secs.to_string()),
    )
}

/// The simulator (`nomade-node/examples/sim.rs`), built in release, with
/// the arguments given: failing seeds are printed and make it fail.
fn sim(args: &[String]) -> Result<()> {
    run("simulator", &mut sim_command(args))
}

fn sim_command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut c = cargo();
    c.args([
        "run",
        "--release",
        "-q",
        "-p",
        "nomade-node",
        "--example",
        "sim",
        "--",
    ])
    .args(args);
    c
}

fn run(step: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("\n=== {step}: {cmd:?}");
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("{step}: could not start"))?;
    eprintln!("=== {step}: {status} in {:.1?}", start.elapsed());
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.env(
        "CARGO_BUILD_JOBS",
        std::env::var("CARGO_BUILD_JOBS").unwrap_or_else(|_| "2".into()),
    );
    c
}

/// `cargo` for the test layers: one build of each target, so no incremental
/// compilation cache (it would only cost disk on a fresh clone) unless the
/// caller asks for one with `CARGO_INCREMENTAL`.
fn test_cargo() -> Command {
    let mut c = cargo();
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        c.env("CARGO_INCREMENTAL", "0");
    }
    c
}

/// Prints how much disk the build directory's filesystem has left (a full
/// test run needs a few GiB; running out shows up as linker crashes).
fn report_disk(when: &str) {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let dir = if Path::new(&target).exists() {
        target.as_str()
    } else {
        "."
    };
    if let Ok(out) = Command::new("df")
        .args(["-h", "--output=avail,target", dir])
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(line) = text.lines().nth(1) {
            eprintln!("=== disk {when}: {} free", line.trim());
        }
    }
}

fn have(cmd: &str, arg: &str) -> bool {
    succeeds(Command::new(cmd).arg(arg))
}

/// Whether `cmd` runs and exits successfully (its output is discarded).
fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn test(args: &[String]) -> Result<()> {
    let fuzz_secs = secs_arg(args, 10)?;
    let start = Instant::now();
    report_disk("before the build");
    ensure_rustfmt_and_clippy()?;
    run("format", cargo().args(["fmt", "--all", "--", "--check"]))?;
    layering()?;
    run(
        "clippy",
        test_cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    if have("cargo-nextest", "--version") || have("cargo", "nextest") {
        run(
            "tests",
            test_cargo().args([
                "nextest",
                "run",
                "--workspace",
                "--all-features",
                "--no-fail-fast",
            ]),
        )?;
    } else {
        run(
            "tests",
            test_cargo().args(["test", "--workspace", "--all-features", "--no-fail-fast"]),
        )?;
    }
    run(
        "doc tests",
        test_cargo().args(["test", "--workspace", "--all-features", "--doc"]),
    )?;
    run(
        "docs",
        test_cargo()
            .args(["doc", "--workspace", "--all-features", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    spec_check()?;
    if args.iter().any(|a| a == "--no-netns") {
        eprintln!("\n=== local discovery between network namespaces: NOT RUN (--no-netns)");
    } else {
        discovery()?;
    }
    fuzz(fuzz_secs)?;
    report_disk("after all layers");
    eprintln!("\nall test layers passed in {:.0?}", start.elapsed());
    Ok(())
}

/// Local discovery between two network namespaces (`netns.rs`): the
/// `nomade` program built as the tests build it, then two of them paired
/// by id alone find each other over mDNS, sync, and find each other again
/// after one moves.
fn discovery() -> Result<()> {
    run(
        "build nomade",
        test_cargo().args([
            "build",
            "-p",
            "nomade-node",
            "--bin",
            "nomade",
            "--all-features",
        ]),
    )?;
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let bin = Path::new(&target).join("debug").join("nomade");
    eprintln!(
        "\n=== local discovery between network namespaces ({})",
        bin.display()
    );
    let start = Instant::now();
    netns::discovery(&bin)?;
    eprintln!("=== local discovery: ok in {:.1?}", start.elapsed());
    Ok(())
}

/// Checks, from `cargo metadata`, that workspace crates depend only downwards.
fn layering() -> Result<()> {
    eprintln!("\n=== layering: workspace dependencies point down");
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("cargo metadata")?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut bad = Vec::new();
    for pkg in meta["packages"].as_array().context("packages")? {
        let name = pkg["name"].as_str().unwrap_or_default();
        let Some((_, allowed)) = ALLOWED_DEPS.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        for dep in pkg["dependencies"].as_array().context("dependencies")? {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            let is_dev = dep["kind"].as_str() == Some("dev");
            if dep_name.starts_with("nomade-") && !allowed.contains(&dep_name) && !is_dev {
                bad.push(format!("{name} -> {dep_name}"));
            }
        }
        // No networking or async runtime below the transport.
        if matches!(name, "nomade-wire" | "nomade-crdt" | "nomade-artifact") {
            for dep in pkg["dependencies"].as_array().context("dependencies")? {
                let dep_name = dep["name"].as_str().unwrap_or_default();
                if matches!(dep_name, "tokio" | "quinn" | "rustls") && dep["kind"].is_null() {
                    bad.push(format!("{name} -> {dep_name} (no I/O layer may use it)"));
                }
            }
        }
    }
    if !bad.is_empty() {
        bail!("dependencies that point the wrong way: {}", bad.join(", "));
    }
    eprintln!("=== layering: ok");
    Ok(())
}

/// Checks docs/PROTOCOL.md against the test vectors (frames, and the state
/// hash) with an independent Python decoder (msgpack, blake3 and
/// cryptography from PyPI).
fn spec_check() -> Result<()> {
    let script = Path::new("nomade-wire/tests/interop/check_vectors.py");
    if !script.exists() {
        bail!("{} is missing", script.display());
    }
    let py = python_with_spec_libs()?;
    run(
        "spec check (independent Python decoder)",
        Command::new(&py)
            .arg(script)
            .arg("nomade-wire/tests/vectors.json"),
    )?;
    run(
        "spec check of the state hash (independent Python)",
        Command::new(&py)
            .arg(script)
            .arg("--state-hash")
            .arg("nomade-crdt/tests/state_hash_vectors.json"),
    )
}

/// A Python interpreter that can import msgpack, blake3 and cryptography: `$PYTHON` (or
/// `python3`) if it already can, otherwise a private virtual environment in
/// `target/spec-venv` with them installed there. A virtual environment works
/// where the system Python refuses `pip install` (Debian's "externally
/// managed" interpreter); on Debian, `python3-venv` is installed first (after
/// refreshing the package lists, empty on a fresh image) if the interpreter
/// lacks it. A virtual environment left without pip by an earlier failed
/// attempt is made again.
fn python_with_spec_libs() -> Result<PathBuf> {
    let system = std::env::var_os("PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let can_import =
        |py: &Path| succeeds(Command::new(py).args(["-c", "import msgpack, blake3, cryptography"]));
    if can_import(&system) {
        return Ok(system);
    }
    let venv = Path::new("target/spec-venv");
    let venv_py = venv.join("bin/python");
    let make_venv = || {
        run(
            "create target/spec-venv",
            Command::new(&system)
                .args(["-m", "venv", "--clear"])
                .arg(venv),
        )
    };
    let has_pip = succeeds(Command::new(&venv_py).args(["-m", "pip", "--version"]));
    if !has_pip && make_venv().is_err() {
        if !have("apt-get", "--version") {
            bail!(
                "{} cannot create a virtual environment; install its venv module",
                system.display()
            );
        }
        run(
            "refresh the package lists",
            Command::new("apt-get").arg("update"),
        )?;
        run(
            "install python3-venv",
            Command::new("apt-get").args(["install", "-y", "python3-venv"]),
        )?;
        make_venv()?;
    }
    if !can_import(&venv_py) {
        run(
            "install python msgpack + blake3 + cryptography (target/spec-venv)",
            Command::new(&venv_py).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "msgpack",
                "blake3",
                "cryptography",
            ]),
        )?;
    }
    Ok(venv_py)
}

/// rustfmt and clippy come with rustup's default profile but not its
/// minimal one: added when missing.
fn ensure_rustfmt_and_clippy() -> Result<()> {
    let works = |sub: &str| succeeds(cargo().args([sub, "--version"]));
    if works("fmt") && works("clippy") {
        return Ok(());
    }
    run(
        "install rustfmt and clippy",
        Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]),
    )
}

fn ensure_cargo_fuzz() -> Result<()> {
    // cargo-fuzz builds with sanitizers, which need a nightly toolchain.
    let nightly = succeeds(Command::new("cargo").args(["+nightly", "--version"]));
    if !nightly {
        run(
            "install the nightly toolchain (for cargo-fuzz)",
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
        )?;
    }
    if have("cargo-fuzz", "--version") {
        return Ok(());
    }
    run(
        "install cargo-fuzz",
        cargo().args(["install", "cargo-fuzz", "--locked"]),
    )
}

fn fuzz(secs: u64) -> Result<()> {
    ensure_cargo_fuzz()?;
    for target in FUZZ_TARGETS {
        let corpus = PathBuf::from("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        seed_corpus(&corpus, target)?;
        run(
            &format!("fuzz {target} for {secs}s"),
            Command::new("cargo")
                .current_dir("fuzz")
                .env("CARGO_BUILD_JOBS", "2")
                .args(["+nightly", "fuzz", "run", target])
                .arg(corpus.canonicalize()?)
                .args([
                    "--",
                    &format!("-max_total_time={secs}"),
                    "-rss_limit_mb=2048",
                ]),
        )?;
    }
    Ok(())
}

/// Seeds a fuzz corpus with every frame of the test vectors, and with the
/// files of `fuzz/seeds/<target>` (a device certificate, an id, a code...).
fn seed_corpus(dir: &Path, target: &str) -> Result<()> {
    let seeds = PathBuf::from("fuzz/seeds").join(target);
    if seeds.is_dir() {
        for entry in std::fs::read_dir(&seeds)? {
            let path = entry?.path();
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, dir.join(name))?;
            }
        }
    }
    let text = std::fs::read_to_string("nomade-wire/tests/vectors.json")?;
    let vectors: serde_json::Value = serde_json::from_str(&text)?;
    for (i, v) in vectors.as_array().context("vectors")?.iter().enumerate() {
        let hex = v["frame_hex"].as_str().context("frame_hex")?;
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|j| u8::from_str_radix(&hex[j..j + 2], 16))
            .collect::<Result<Vec<u8>, _>>()?;
        std::fs::write(dir.join(format!("vector-{i}")), bytes)?;
    }
    Ok(())
}

fn bench(quick: bool) -> Result<()> {
    let mut c = cargo();
    // Only the bench targets: a library's own test harness, run in bench
    // mode, would reject criterion's options.
    c.args([
        "bench",
        "--workspace",
        "--features",
        "nomade-node/faults",
        "--bench",
        "*",
        "--",
    ]);
    if quick {
        c.args(["--warm-up-time", "1", "--measurement-time", "2"]);
    }
    run("benchmarks", &mut c)?;
    // Nomade's text beside yrs and automerge: a crate of its own (its own
    // workspace and lock file), so that the test build never compiles them.
    let mut peers = cargo();
    peers.args([
        "run",
        "--release",
        "--manifest-path",
        "bench-peers/Cargo.toml",
        "--target-dir",
        "target/peers",
        "--",
        "--out",
        "target/bench",
    ]);
    if quick {
        peers.arg("--quick");
    }
    run("text replay beside yrs and automerge", &mut peers)?;
    // What history costs a node: disk, memory and time to open, measured
    // against an empty node in the same run.
    let mut history = cargo();
    history.args([
        "run",
        "--release",
        "-p",
        "nomade-node",
        "--example",
        "history",
        "--",
        "--json",
        "target/bench/history.json",
    ]);
    run("history on disk and at start-up", &mut history)?;
    // Sequences at scale: random insertions into texts of up to 10M
    // characters, appends to a conversation of 1M messages.
    let mut scale = cargo();
    scale.args([
        "run",
        "--release",
        "-p",
        "nomade-crdt",
        "--example",
        "scale",
        "--",
        "--json",
        "target/bench/scale.json",
    ]);
    run("sequences at scale", &mut scale)?;
    // Meshes in the simulator: traffic against the minimum, bytes per
    // delivered operation, time to converge.
    for (name, args) in SIM_BENCHES {
        let json = format!("target/bench/sim-{name}.json");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--json", &json]);
        run(&format!("simulated {name}"), &mut sim_command(&all))?;
    }
    report_ratios()
}

/// The simulated meshes `cargo xtask bench` measures: a name, and the
/// simulator's arguments.
const SIM_BENCHES: &[(&str, &[&str])] = &[
    ("mesh-2", &["--devices", "2"]),
    ("mesh-8", &["--devices", "8"]),
    ("mesh-32", &["--devices", "32", "--edits", "20"]),
    ("mesh-100", &["--devices", "100", "--edits", "10"]),
    ("line-8", &["--devices", "8", "--topology", "line"]),
];

/// Reads criterion's estimates and reports, for every benchmark group that
/// has a `baseline` member, each member's speed relative to it (same run).
fn report_ratios() -> Result<()> {
    let root = Path::new("target/criterion");
    let mut rows = Vec::new();
    let mut groups = Vec::new();
    collect_groups(root, &mut groups)?;
    groups.sort();
    for group in groups {
        let mean = |member: &str| -> Option<f64> {
            let text =
                std::fs::read_to_string(group.join(member).join("new/estimates.json")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            v["mean"]["point_estimate"].as_f64()
        };
        let Some(base) = mean("baseline") else {
            continue;
        };
        let name = group
            .strip_prefix(root)
            .unwrap_or(&group)
            .display()
            .to_string();
        for entry in std::fs::read_dir(&group)? {
            let member = entry?.file_name().to_string_lossy().to_string();
            if member == "baseline" || member == "report" {
                continue;
            }
            if let Some(t) = mean(&member) {
                rows.push(serde_json::json!({
                    "group": name, "member": member,
                    "mean_ns": t, "baseline_ns": base, "speed_vs_baseline": base / t,
                }));
            }
        }
    }
    std::fs::create_dir_all("target/bench")?;
    // The end-to-end, CRDT and peer bench binaries write their own figures; gather them.
    let mut report = serde_json::json!({ "criterion": rows });
    for name in ["e2e", "crdt", "peers", "history", "scale"] {
        if let Ok(text) = std::fs::read_to_string(format!("target/bench/{name}.json")) {
            report[name] = serde_json::from_str(&text)?;
        }
    }
    for (name, _) in SIM_BENCHES {
        if let Ok(text) = std::fs::read_to_string(format!("target/bench/sim-{name}.json")) {
            report["sim"][name] = serde_json::from_str(&text)?;
        }
    }
    std::fs::write(
        "target/bench/report.json",
        serde_json::to_string_pretty(&report)?,
    )?;
    eprintln!(
        "\n{:<40} {:<12} {:>12} {:>12} {:>8}",
        "group", "member", "mean", "baseline", "ratio"
    );
    for r in &rows {
        eprintln!(
            "{:<40} {:<12} {:>10.0}ns {:>10.0}ns {:>8.2}",
            r["group"].as_str().unwrap_or_default(),
            r["member"].as_str().unwrap_or_default(),
            r["mean_ns"].as_f64().unwrap_or_default(),
            r["baseline_ns"].as_f64().unwrap_or_default(),
            r["speed_vs_baseline"].as_f64().unwrap_or_default(),
        );
    }
    eprintln!("(ratio = baseline time / member time: above 1 is faster than the baseline)");
    eprintln!("report written to target/bench/report.json");
    Ok(())
}

fn collect_groups(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    if dir.join("baseline").is_dir() {
        out.push(dir.to_path_buf());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_groups(&path, out)?;
        }
    }
    Ok(())
}
