//! The `nomade` program as a real process: the command line, and a node
//! killed with SIGKILL in the middle of a sync, restarted from its directory.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nomade_node::{Node, NodeConfig};
use nomade_transport::{DeviceId, RateLimits};

fn nomade(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nomade"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run nomade")
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "nomade failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn status(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(nomade(dir, &["status", "--json"]))).expect("status JSON")
}

fn free_udp_port() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr")
}

/// Starts `nomade serve`; its log goes to `serve.log` beside its directory
/// (appended, so a restart adds to it), shown when a test fails.
fn serve(dir: &Path, addr: SocketAddr) -> Child {
    serve_with(Command::new(env!("CARGO_BIN_EXE_nomade")), dir, addr)
}

/// Starts `nomade serve` unable to write files larger than `kib` KiB (the
/// shell's soft `ulimit -f`), with `SIGXFSZ` ignored so that a write past the
/// limit fails with `EFBIG` as a write to a full disk fails with `ENOSPC`.
/// The process is the child itself (`exec`): `prlimit --pid` can lift the
/// limit later, as freeing space would.
fn serve_on_a_small_disk(dir: &Path, addr: SocketAddr, kib: u64) -> Child {
    let mut cmd = Command::new("bash");
    cmd.args([
        "-c",
        "trap '' XFSZ; ulimit -S -f \"$0\" && exec \"$@\"",
        &kib.to_string(),
        env!("CARGO_BIN_EXE_nomade"),
    ]);
    serve_with(cmd, dir, addr)
}

fn serve_with(mut cmd: Command, dir: &Path, addr: SocketAddr) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(serve_log(dir))
        .expect("log file");
    cmd.env("RUST_LOG", "info")
        .arg("--dir")
        .arg(dir)
        .args([
            "--no-rate-limits",
            "--name",
            "desk",
            "serve",
            "--listen",
            &addr.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn nomade serve")
}

fn serve_log(dir: &Path) -> std::path::PathBuf {
    dir.with_extension("serve.log")
}

#[test]
fn command_line_edits_and_reads_documents_and_conversations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let init = ok(nomade(d, &["init"]));
    let id = ok(nomade(d, &["id"])).trim().to_string();
    assert!(init.contains(&id));
    assert!(id.parse::<DeviceId>().is_ok(), "{id}");
    ok(nomade(d, &["doc", "set", "trip", "budget", "1200"]));
    ok(nomade(d, &["doc", "set", "trip", "title", "Lisbon"]));
    ok(nomade(d, &["doc", "delete", "trip", "budget"]));
    let show: serde_json::Value =
        serde_json::from_str(&ok(nomade(d, &["doc", "show", "trip"]))).expect("json");
    assert_eq!(show, serde_json::json!({"title": "Lisbon"}));
    ok(nomade(d, &["conv", "append", "chat", "hi"]));
    ok(nomade(
        d,
        &["conv", "insert", "chat", "0", "{\"from\":\"ana\"}"],
    ));
    let conv = ok(nomade(d, &["conv", "show", "chat"]));
    assert_eq!(conv, "0: {\"from\":\"ana\"}\n1: \"hi\"\n");
    // Errors are clear and exit non-zero.
    let bad = nomade(d, &["conv", "remove", "chat", "9"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("out of range"));
    let bad = nomade(d, &["peers", "add", "not-a-device-id"]);
    assert!(!bad.status.success());
    // Pairing out of band with an id computed elsewhere.
    let other = tempfile::tempdir().expect("tempdir");
    let other_id = ok(nomade(other.path(), &["id"])).trim().to_string();
    ok(nomade(
        d,
        &["peers", "add", &other_id, "--addr", "127.0.0.1:9"],
    ));
    assert!(ok(nomade(d, &["peers", "list"])).contains(&other_id));
    let st = status(d);
    assert_eq!(st["device_id"], id);
    assert_eq!(st["operations"], 5);
    ok(nomade(d, &["peers", "remove", &other_id]));
    assert!(ok(nomade(d, &["peers", "list"])).contains("no paired devices"));
    // A file in and out as an artifact.
    let file = d.join("in.bin");
    std::fs::write(&file, vec![7u8; 200_000]).expect("write");
    let put = ok(nomade(d, &["put", file.to_str().expect("path")]));
    let hex = put.lines().next().expect("id line").to_string();
    let out = d.join("out.bin");
    ok(nomade(d, &["get", &hex, out.to_str().expect("path")]));
    assert_eq!(std::fs::read(&out).expect("read"), vec![7u8; 200_000]);
}

/// A laptop (a node in this process, online) and a desk (a `nomade`
/// directory, not yet serving) paired with each other; the desk will serve
/// on `desk_addr`.
struct Pair {
    desk_dir: std::path::PathBuf,
    desk_id: DeviceId,
    desk_addr: SocketAddr,
    laptop: Node,
}

async fn laptop_and_desk(tmp: &Path) -> Pair {
    let desk_dir = tmp.join("desk");
    let desk_id: DeviceId = ok(nomade(&desk_dir, &["id"]))
        .trim()
        .parse()
        .expect("device id");
    let laptop = Node::open(
        &tmp.join("laptop"),
        NodeConfig {
            device_name: "laptop".into(),
            rate_limits: RateLimits::OFF,
            heartbeat_period: Duration::from_millis(300),
            ..NodeConfig::default()
        },
    )
    .expect("open");
    let laptop_addr = laptop
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start");
    ok(nomade(
        &desk_dir,
        &[
            "peers",
            "add",
            &laptop.device_id().to_string(),
            "--addr",
            &laptop_addr.to_string(),
        ],
    ));
    let desk_addr = free_udp_port();
    laptop
        .add_peer(desk_id, "desk", &[desk_addr])
        .expect("add peer");
    Pair {
        desk_dir,
        desk_id,
        desk_addr,
        laptop,
    }
}

/// BAD_INPUTS #30: killed mid-write, the store is consistent after restart and
/// everything acknowledged is there; sync then resumes and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_30_sigkill_mid_sync_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Pair {
        desk_dir,
        desk_id,
        desk_addr,
        laptop,
    } = laptop_and_desk(tmp.path()).await;

    let mut child = serve(&desk_dir, desk_addr);
    laptop.connect_known_peers().expect("dial");
    // Edit continuously while the desk receives, then kill it mid-stream.
    let mut written = 0usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        for _ in 0..50 {
            laptop
                .splice_text("notes", "body", 0, 0, "x")
                .expect("edit");
            written += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let acked = laptop.core().acked_by(&desk_id.to_string());
        if acked.values().sum::<u64>() >= 500 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the desk never acknowledged 500 operations"
        );
    }
    // A burst, and the kill lands while it is being sent and stored.
    for _ in 0..1000 {
        laptop
            .splice_text("notes", "body", 0, 0, "y")
            .expect("edit");
        written += 1;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let acked = laptop.core().acked_by(&desk_id.to_string());
    eprintln!(
        "killed with {} of {written} operations acknowledged",
        acked.values().sum::<u64>()
    );

    // Everything acknowledged is on the desk's disk.
    let after_crash = status(&desk_dir);
    let me = laptop.device_id().to_string();
    let on_disk = after_crash["version_vector"][&me].as_u64().unwrap_or(0);
    assert!(
        on_disk >= acked[me.as_str()],
        "acknowledged {} but only {on_disk} survived",
        acked[me.as_str()]
    );

    // Restarted, it catches up: nothing lost, nothing doubled.
    let mut child = serve(&desk_dir, desk_addr);
    let target = laptop.core().version_vector()[me.as_str()];
    let mut caught_up = false;
    // Up to a minute: the restarted process, its redial and the catch-up
    // share two cores with the rest of the suite.
    for _ in 0..1200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if laptop
            .core()
            .acked_by(&desk_id.to_string())
            .get(me.as_str())
            == Some(&target)
        {
            caught_up = true;
            break;
        }
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(
        caught_up,
        "the restarted desk did not acknowledge every operation; its log:\n{}",
        std::fs::read_to_string(serve_log(&desk_dir)).unwrap_or_default()
    );
    let final_status = status(&desk_dir);
    assert_eq!(final_status["state_hash"], laptop.state_hash().to_hex());
    assert_eq!(final_status["operations"].as_u64(), Some(written as u64));
    laptop.shutdown().await;
}

/// BAD_INPUTS #32: the disk fills up while operations arrive. Nothing that
/// could not be stored is acknowledged, the node says so in its log, the
/// database stays consistent, and once there is room again the node carries
/// on without a restart: everything arrives, nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_32_a_full_disk_acknowledges_nothing_and_recovers_when_space_returns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Pair {
        desk_dir,
        desk_id,
        desk_addr,
        laptop,
    } = laptop_and_desk(tmp.path()).await;
    let me = laptop.device_id().to_string();
    let acked = || {
        laptop
            .core()
            .acked_by(&desk_id.to_string())
            .get(me.as_str())
            .copied()
            .unwrap_or(0)
    };
    let desk_log = || std::fs::read_to_string(serve_log(&desk_dir)).unwrap_or_default();
    let wait_acked = |n: u64, what: &'static str| {
        let (acked, desk_log) = (&acked, &desk_log);
        async move {
            for _ in 0..600 {
                if acked() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!(
                "{what}: {} of {n} acknowledged; the desk's log:\n{}",
                acked(),
                desk_log()
            );
        }
    };

    // Room for a few small operations, not for two megabytes more.
    for i in 0..10 {
        laptop.set("trip", &format!("k{i}"), i).expect("edit");
    }
    let mut child = serve_on_a_small_disk(&desk_dir, desk_addr, 1024);
    let pid = child.id().to_string();
    laptop.connect_known_peers().expect("dial");
    wait_acked(10, "the small operations").await;

    // Values that do not compress (the store compresses its rows).
    let big = |i: u64| -> String {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..60_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect()
    };
    for i in 0..40 {
        laptop
            .set("photos", &format!("p{i}"), big(i).as_str())
            .expect("edit");
    }
    let log_says_so = || desk_log().contains("could not store operations");
    for _ in 0..200 {
        if log_says_so() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(log_says_so(), "the desk never reported the full disk");
    // What still fitted was stored and acknowledged (the laptop retries
    // after each failure); then the disk is full, and the rest stays
    // unacknowledged.
    let mut while_full = acked();
    let mut steady_since = std::time::Instant::now();
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    while steady_since.elapsed() < Duration::from_millis(1500) {
        assert!(
            std::time::Instant::now() < give_up,
            "acknowledgements never settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = acked();
        if now != while_full {
            (while_full, steady_since) = (now, std::time::Instant::now());
        }
    }
    assert!(
        (10..50).contains(&while_full),
        "{while_full} of 50 acknowledged on a full disk"
    );
    // The doctor, asked through the running node, says why.
    let doctor = nomade(&desk_dir, &["doctor", "--json"]);
    assert_eq!(
        doctor.status.code(),
        Some(1),
        "a device is not syncing: {}\n{}",
        String::from_utf8_lossy(&doctor.stdout),
        desk_log()
    );
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).expect("json");
    assert_eq!(report["serving"], true, "{report}");
    assert_eq!(report["peers"][0]["cause"], "disk_full", "{report}");
    assert!(report["peers"][0]["advice"]
        .as_str()
        .is_some_and(|a| a.contains("free some space")));
    assert!(ok(nomade(&desk_dir, &["status"])).contains("disk     FULL"));

    // Space again: the same process stores everything.
    let lifted = Command::new("prlimit")
        .args(["--pid", &pid, "--fsize=unlimited"])
        .status()
        .expect("run prlimit");
    assert!(lifted.success(), "prlimit failed");
    let target = laptop.core().version_vector()[me.as_str()];
    assert_eq!(target, 50);
    wait_acked(target, "after space returned").await;
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "the desk exited instead of carrying on"
    );
    let doctor = nomade(&desk_dir, &["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).expect("json");
    assert_eq!(report["peers"][0]["cause"], "syncing", "{report}");
    assert_eq!(doctor.status.code(), Some(0));
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let after = status(&desk_dir);
    assert_eq!(after["operations"].as_u64(), Some(target));
    assert_eq!(after["state_hash"], laptop.state_hash().to_hex());
    laptop.shutdown().await;
}

/// A data directory of an earlier build (store format 1: operation rows and
/// no format entry): every command, `serve` included, exits with the
/// message that says what to do, and the file stays as it was.
#[test]
fn a_database_of_an_earlier_build_is_refused_with_what_to_do() {
    use redb::ReadableDatabase;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("desk");
    ok(nomade(&dir, &["name", "desk"]));
    let db = dir.join("nomade.redb");
    std::fs::remove_file(&db).expect("start from an earlier build's file");
    {
        let old = redb::Database::create(&db).expect("create");
        let txn = old.begin_write().expect("write");
        let ops: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("ops");
        txn.open_table(ops)
            .expect("ops")
            .insert(1, b"\x85an operation of the earlier form".as_slice())
            .expect("row");
        txn.commit().expect("commit");
    }
    for args in [
        &["status"][..],
        &["doc", "show", "trip"][..],
        &["serve", "--listen", "127.0.0.1:0"][..],
    ] {
        let out = nomade(&dir, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains("older Nomade") && stderr.contains("move nomade.redb"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // The operations are there as they were, and no format was stamped.
    let old = redb::Database::create(&db).expect("reopen");
    let txn = old.begin_read().expect("read");
    let ops: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("ops");
    let table = txn.open_table(ops).expect("ops");
    let row = table.get(1).expect("get").map(|r| r.value().to_vec());
    assert_eq!(
        row.as_deref(),
        Some(&b"\x85an operation of the earlier form"[..])
    );
    let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    let stamped = txn
        .open_table(meta)
        .is_ok_and(|m| m.get("store_format").expect("get").is_some());
    assert!(!stamped, "a format was stamped on the earlier build's file");
}

/// BAD_INPUTS #31 at start-up: a truncated or overwritten database makes
/// every command, `serve` included, exit at once with a clear message and a
/// failure status (no panic, no retry loop), and leaves the file as it was
/// for the user to inspect or restore.
#[test]
fn bad_input_31_a_damaged_database_stops_the_program_with_a_clear_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("desk");
    ok(nomade(&dir, &["doc", "set", "trip", "title", "Lisbon"]));
    let db = dir.join("nomade.redb");
    let good = std::fs::read(&db).expect("read");
    let damaged: [(&str, Vec<u8>); 2] = [
        ("truncated", good[..good.len() / 3].to_vec()),
        ("overwritten", vec![0x5a; good.len()]),
    ];
    for (what, bytes) in damaged {
        std::fs::write(&db, &bytes).expect("damage");
        for args in [&["status", "--json"][..], &["doc", "show", "trip"][..]] {
            let out = nomade(&dir, args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{what}: {args:?} succeeded");
            assert!(
                stderr.contains("corrupt") || stderr.contains("database"),
                "{what}: {args:?}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_nomade"))
            .arg("--dir")
            .arg(&dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .output()
            .expect("run serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{what}: serve ran on a damaged database"
        );
        assert!(stderr.contains("corrupt"), "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert_eq!(
            std::fs::read(&db).expect("read"),
            bytes,
            "{what}: file changed"
        );
    }
}

#[test]
fn demo_converges_and_reports_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_nomade"))
        .args(["demo", "--json", "--artifact-mib", "2"])
        .output()
        .expect("run demo");
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["converged"], true);
    assert_eq!(report["restart_recovered"], true);
    assert_eq!(report["artifact"]["verified"], true);
    assert_eq!(report["artifact"]["bytes"], 2 << 20);
    let devices = report["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 3);
    assert!(devices
        .iter()
        .all(|d| d["state_hash"] == devices[0]["state_hash"]));
    assert!(report["ops_synced"].as_u64().expect("ops_synced") > 0);
}
