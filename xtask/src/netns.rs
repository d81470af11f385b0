//! Local discovery between two network namespaces joined by a veth pair:
//! two `nomade serve` processes, paired by id only (no address typed), find
//! each other over mDNS and sync; both move to other addresses, and find
//! each other there again. Needs root and iproute2 (`ip`); the namespaces, the
//! veth pair and the processes are removed whatever happens.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Names unique to this run (an interface name has at most 15 bytes).
struct Names {
    ns: [String; 2],
    veth: [String; 2],
}

impl Names {
    fn new() -> Names {
        let tag = std::process::id() % 100_000;
        Names {
            ns: [format!("nomade-a-{tag}"), format!("nomade-b-{tag}")],
            veth: [format!("nmda{tag}"), format!("nmdb{tag}")],
        }
    }
}

/// Removes the namespaces (their veth ends go with them) and stops the
/// nodes when dropped.
struct Lab {
    names: Names,
    nodes: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.names.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `cmd` (`what`, for messages); its standard output when it succeeds.
fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| what.to_string())?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<()> {
    output(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    )
    .map(drop)
}

/// Runs `nomade --dir DIR ARGS` in the root namespace (the control socket
/// is a file: it reaches a node in any namespace) and returns its output.
fn nomade(bin: &Path, dir: &Path, args: &[&str]) -> Result<String> {
    output(
        Command::new(bin).arg("--dir").arg(dir).args(args),
        &format!("nomade {}", args.join(" ")),
    )
}

fn status(bin: &Path, dir: &Path) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&nomade(
        bin,
        dir,
        &["status", "--json"],
    )?)?)
}

/// Waits up to `secs` for `cond`.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out after {secs} s waiting for {what}")
}

/// Starts `nomade serve` for `dir` inside `ns`, and waits until it takes
/// commands (until then a command would open the directory itself, and
/// the node could not).
fn serve(bin: &Path, ns: &str, dir: &Path, log: &Path) -> Result<Child> {
    let socket = dir.join("control.sock");
    let _ = std::fs::remove_file(&socket);
    let log = std::fs::File::create(log)?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin)
        .arg("--dir")
        .arg(dir)
        .args(["serve", "--listen", "0.0.0.0:4433"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("start nomade serve")?;
    wait_for(20, "nomade serve to take commands", || socket.exists())?;
    Ok(child)
}

/// Whether `dir`'s node has a session with `peer`.
fn connected(bin: &Path, dir: &Path, peer: &str) -> bool {
    status(bin, dir)
        .map(|st| {
            st["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["device_id"].as_str() == Some(peer) && p["session"].is_object())
        })
        .unwrap_or(false)
}

/// The addresses `dir` stores for `peer`.
fn addresses(bin: &Path, dir: &Path, peer: &str) -> Vec<String> {
    status(bin, dir)
        .ok()
        .and_then(|st| {
            st["peers"].as_array().and_then(|ps| {
                ps.iter()
                    .find(|p| p["device_id"].as_str() == Some(peer))
                    .map(|p| {
                        p["addresses"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|a| a.as_str().map(String::from))
                            .collect()
                    })
            })
        })
        .unwrap_or_default()
}

/// The discovery test (see the module docs).
pub fn discovery(bin: &Path) -> Result<()> {
    if !Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
    {
        bail!("local discovery between network namespaces needs root (run as root, or skip with cargo xtask test --no-netns)");
    }
    if !super::have("ip", "-V") {
        // A fresh Debian machine may not have it.
        super::run(
            "install iproute2 (the ip command)",
            Command::new("apt-get").args(["install", "-y", "-q", "iproute2"]),
        )
        .context("local discovery between network namespaces needs iproute2")?;
    }
    let tmp = std::env::temp_dir().join(format!("nomade-discovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let dirs: [PathBuf; 2] = [tmp.join("a"), tmp.join("b")];
    let mut lab = Lab {
        names: Names::new(),
        nodes: Vec::new(),
    };
    let (ns, veth) = (lab.names.ns.clone(), lab.names.veth.clone());
    for n in &ns {
        ip(&["netns", "add", n])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
    }
    ip(&[
        "link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1],
    ])?;
    for (i, n) in ns.iter().enumerate() {
        ip(&["link", "set", &veth[i], "netns", n])?;
        let addr = format!("10.213.0.{}/24", i + 1);
        ip(&["-n", n, "addr", "add", &addr, "dev", &veth[i]])?;
        ip(&["-n", n, "link", "set", &veth[i], "up"])?;
    }
    // Each device's id, and each paired with the other by id alone.
    let ids: Vec<String> = dirs
        .iter()
        .map(|d| {
            status(bin, d).and_then(|st| {
                st["device_id"]
                    .as_str()
                    .map(String::from)
                    .context("status has no device_id")
            })
        })
        .collect::<Result<_>>()?;
    nomade(bin, &dirs[0], &["peers", "add", &ids[1]])?;
    nomade(bin, &dirs[1], &["peers", "add", &ids[0]])?;
    for i in 0..2 {
        let log = tmp.join(format!("{i}.log"));
        lab.nodes.push(serve(bin, &ns[i], &dirs[i], &log)?);
    }
    let started = Instant::now();
    wait_for(30, "the two devices to find each other and connect", || {
        connected(bin, &dirs[0], &ids[1])
    })
    .with_context(|| logs(&tmp))?;
    eprintln!(
        "=== discovery: connected after {:.1?}, addresses known to a: {:?}",
        started.elapsed(),
        addresses(bin, &dirs[0], &ids[1])
    );
    nomade(bin, &dirs[0], &["doc", "set", "trip", "title", "Lisbon"])?;
    wait_for(20, "an edit to sync", || {
        nomade(bin, &dirs[1], &["doc", "get", "trip", "title"])
            .map(|v| v.contains("Lisbon"))
            .unwrap_or(false)
    })
    .with_context(|| logs(&tmp))?;

    let discovered = |dirs: &[PathBuf; 2]| -> u64 {
        dirs.iter()
            .filter_map(|d| status(bin, d).ok())
            .map(|st| st["metrics"]["peers_discovered"].as_u64().unwrap_or(0))
            .sum()
    };
    if discovered(&dirs) == 0 {
        bail!("the devices connected, yet neither found the other by discovery");
    }

    // Both move to other addresses (stopped, renumbered, started again):
    // neither knows where the other is now, only discovery finds it.
    for child in &mut lab.nodes {
        let _ = child.kill();
        let _ = child.wait();
    }
    lab.nodes.clear();
    for (i, n) in ns.iter().enumerate() {
        ip(&["-n", n, "addr", "flush", "dev", &veth[i]])?;
        let addr = format!("10.213.0.{}/24", i + 11);
        ip(&["-n", n, "addr", "add", &addr, "dev", &veth[i]])?;
    }
    for i in 0..2 {
        let log = tmp.join(format!("{i}-moved.log"));
        lab.nodes.push(serve(bin, &ns[i], &dirs[i], &log)?);
    }
    let moved = Instant::now();
    wait_for(
        40,
        "the two devices to find each other at their new addresses",
        || connected(bin, &dirs[0], &ids[1]),
    )
    .with_context(|| logs(&tmp))?;
    let found = addresses(bin, &dirs[0], &ids[1]);
    if found.first().map(String::as_str) != Some("10.213.0.12:4433") {
        bail!("a does not hold b's new address first: {found:?}");
    }
    if discovered(&dirs) == 0 {
        bail!("the devices connected again, yet neither found the other by discovery");
    }
    nomade(bin, &dirs[0], &["doc", "set", "trip", "nights", "4"])?;
    wait_for(20, "an edit to sync after the move", || {
        nomade(bin, &dirs[1], &["doc", "get", "trip", "nights"])
            .map(|v| v.contains('4'))
            .unwrap_or(false)
    })
    .with_context(|| logs(&tmp))?;
    eprintln!(
        "=== discovery: found each other again {:.1?} after both moved; addresses a holds for b: {found:?}",
        moved.elapsed()
    );
    drop(lab);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// The nodes' logs, for a failure's message.
fn logs(dir: &Path) -> String {
    let mut out = String::from("node logs:\n");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- {}\n", p.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}
