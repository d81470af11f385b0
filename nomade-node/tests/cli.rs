//! The `nomade` program's manners, as real processes: exit statuses that
//! tell usage errors, unreachable peers and refusals apart; one node per
//! directory; a pairing window that lasts what `--ttl` says; logs and
//! progress written into files as plain lines; a peer out of reach reported
//! once; `text edit` through `$EDITOR`, and what happens when the text
//! changed meanwhile; `put` and `get` through a running node.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nomade")
}

fn nomade(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run nomade")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "nomade failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn free_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// Two data directories `a` and `b` pinned to each other with `peers add`,
/// each knowing where the other will serve.
struct Paired {
    a: PathBuf,
    b: PathBuf,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    a_id: String,
}

fn paired_out_of_band(tmp: &Path, a_flags: &[&str]) -> Paired {
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a_id = ok(nomade(&a, &[a_flags, &["id"]].concat()))
        .trim()
        .to_string();
    let b_id = ok(nomade(&b, &["id"])).trim().to_string();
    ok(nomade(
        &a,
        &["peers", "add", &b_id, "--addr", &b_addr.to_string()],
    ));
    ok(nomade(
        &b,
        &["peers", "add", &a_id, "--addr", &a_addr.to_string()],
    ));
    Paired {
        a,
        b,
        a_addr,
        b_addr,
        a_id,
    }
}

/// `nomade serve` with its stderr in `log`.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Serve {
    fn start(dir: &Path, listen: SocketAddr, extra: &[&str]) -> Serve {
        let log = dir.with_extension("log");
        let file = std::fs::File::create(&log).expect("log");
        let child = Command::new(bin())
            .arg("--dir")
            .arg(dir)
            .args(["serve", "--listen", &listen.to_string()])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn serve");
        let sock = dir.join("control.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "serve did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Serve { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn exit_statuses_tell_usage_unreachable_and_refused_apart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    ok(nomade(&a, &["init"]));
    // Usage: a bad value, a bad id, a position past the end; and clap's own.
    for args in [
        &["peers", "add", "not-a-device-id"][..],
        &["conv", "remove", "chat", "9"],
        &["presence", "set", "sleepy"],
        &["doc"],
    ] {
        let out = nomade(&a, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }
    // Unreachable: nothing listens at the peer's address.
    let b = tmp.path().join("b");
    let b_id = ok(nomade(&b, &["id"])).trim().to_string();
    let nowhere = free_addr().to_string();
    ok(nomade(&a, &["peers", "add", &b_id, "--addr", &nowhere]));
    let id = "ab".repeat(32);
    let out = nomade(
        &a,
        &[
            "--connect-timeout",
            "0.5",
            "get",
            &id,
            "out.bin",
            "--from",
            &nowhere,
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let message = stderr(&out);
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(message.starts_with("error: "), "{message}");
    // Refused: a wrong pairing code.
    let shower = tmp.path().join("shower");
    let listen = free_addr();
    let mut show = Command::new(bin())
        .arg("--dir")
        .arg(&shower)
        .args([
            "pair",
            "show",
            "--ttl",
            "20",
            "--listen",
            &listen.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("pair show");
    let mut first = String::new();
    {
        use std::io::BufRead;
        let out = show.stdout.as_mut().expect("stdout");
        std::io::BufReader::new(out)
            .read_line(&mut first)
            .expect("the code line");
    }
    let shown = first
        .trim()
        .trim_start_matches("pairing code: ")
        .to_string();
    let wrong = if shown.starts_with('a') {
        "bbbb-bbbb"
    } else {
        "aaaa-aaaa"
    };
    let out = nomade(&a, &["pair", "join", wrong, &listen.to_string()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let _ = show.kill();
    let _ = show.wait();
}

#[test]
fn one_node_per_directory_and_a_pairing_window_lasts_its_ttl() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    let serve = Serve::start(&a, free_addr(), &[]);
    let second = nomade(&a, &["serve", "--listen", &free_addr().to_string()]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("already serves"),
        "{}",
        stderr(&second)
    );
    // The window closes after --ttl (not the old fixed 5 minutes), and says so.
    let started = Instant::now();
    let out = nomade(&a, &["pair", "show", "--ttl", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("pairing code: "));
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        serve.log().contains("ttl=1s"),
        "the node opened a 1 s window: {}",
        serve.log()
    );
}

/// Into a file, logs have no terminal colour codes, progress is plain
/// lines (no bar redrawn with carriage returns), and a peer out of reach is
/// warned about once, however many times it is dialed.
#[test]
fn logs_and_progress_in_files_are_plain_and_an_unreachable_peer_is_warned_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    ok(nomade(&a, &["init"]));
    let b_id = ok(nomade(&tmp.path().join("b"), &["id"]))
        .trim()
        .to_string();
    let nowhere = free_addr().to_string();
    ok(nomade(&a, &["peers", "add", &b_id, "--addr", &nowhere]));
    let serve = Serve::start(&a, free_addr(), &["--connect-timeout", "0.2"]);
    // A large file put through the running node, its stderr a pipe.
    let file = tmp.path().join("big.bin");
    std::fs::write(&file, vec![42u8; 48 << 20]).expect("write");
    let put = nomade(&a, &["put", file.to_str().expect("path")]);
    let progress = stderr(&put);
    let id = ok(put).lines().next().expect("id").to_string();
    assert!(
        !progress.contains('\r'),
        "a bar was redrawn into a pipe: {progress:?}"
    );
    assert!(
        progress
            .lines()
            .any(|l| l.contains("(put)") && l.contains("(100%)")),
        "{progress}"
    );
    assert!(progress.lines().count() <= 20, "{progress}");
    assert_eq!(id.len(), 64);
    // Give the redial loop a few attempts at the dead address.
    std::thread::sleep(Duration::from_secs(3));
    let log = serve.log();
    assert!(!log.contains('\x1b'), "colour codes in a log file: {log:?}");
    let warned = log.matches("cannot reach peer").count();
    assert_eq!(warned, 1, "{log}");
    let warnings_about_it = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(&nowhere))
        .count();
    assert_eq!(warnings_about_it, 1, "one warning in all: {log}");
    let st: serde_json::Value =
        serde_json::from_str(&ok(nomade(&a, &["status", "--json"]))).expect("json");
    let dial = &st["peers"][0]["last_dial"];
    assert_eq!(dial["outcome"]["kind"], "unreachable", "{st}");
    assert!(
        dial["failures_in_a_row"].as_u64().is_some_and(|n| n >= 2),
        "{dial}"
    );
}

#[test]
fn text_edit_sends_the_difference_and_keeps_the_users_version_on_a_conflict() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    ok(nomade(
        &a,
        &["text", "splice", "notes", "body", "0", "0", "hello world"],
    ));
    let edit = |editor: String| {
        Command::new(bin())
            .arg("--dir")
            .arg(&a)
            .args(["text", "edit", "notes", "body"])
            .env("EDITOR", editor)
            .env_remove("VISUAL")
            .output()
            .expect("text edit")
    };
    let out = edit("sed -i s/world/there/".into());
    assert!(ok(out).contains("change(s) sent"));
    assert_eq!(
        ok(nomade(&a, &["text", "show", "notes", "body"])),
        "hello there\n"
    );
    // The text changes while the editor is open (another command edits it).
    let racing = format!(
        "{} --dir {} text splice notes body 0 0 '>> ' && sed -i s/there/again/",
        bin(),
        a.display()
    );
    let out = edit(racing);
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(
        message.contains("changed while it was being edited"),
        "{message}"
    );
    let kept = message
        .split("kept in ")
        .nth(1)
        .map(str::trim)
        .expect("where the user's version is");
    assert_eq!(std::fs::read_to_string(kept).expect("kept"), "hello again");
    let _ = std::fs::remove_file(kept);
    // Nothing of the edit was applied; the other change was.
    assert_eq!(
        ok(nomade(&a, &["text", "show", "notes", "body"])),
        ">> hello there\n"
    );
}

/// `get` through a running node fetches from a connected device without
/// being told where, with plain progress lines, then writes the file.
#[test]
fn put_and_get_through_running_nodes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Paired {
        a,
        b,
        a_addr,
        b_addr,
        ..
    } = paired_out_of_band(tmp.path(), &[]);
    let _sa = Serve::start(&a, a_addr, &["--no-rate-limits"]);
    let _sb = Serve::start(&b, b_addr, &["--no-rate-limits"]);
    let file = tmp.path().join("photo.bin");
    let data: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).expect("write");
    let id = ok(nomade(&a, &["put", file.to_str().expect("path")]))
        .lines()
        .next()
        .expect("id")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st: serde_json::Value =
            serde_json::from_str(&ok(nomade(&b, &["status", "--json"]))).expect("json");
        if st["peers"][0]["online"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "b never connected: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out_path = tmp.path().join("copy.bin");
    let got = nomade(&b, &["get", &id, out_path.to_str().expect("path")]);
    let progress = stderr(&got);
    assert!(ok(got).starts_with("wrote "));
    assert_eq!(std::fs::read(&out_path).expect("read"), data);
    assert!(progress.contains("(fetch)"), "{progress}");
    assert!(!progress.contains('\r'));
    // A device that does not serve fetches from a paired one it dials,
    // without being told where (its known address).
    let c = tmp.path().join("c");
    let c_id = ok(nomade(&c, &["id"])).trim().to_string();
    ok(nomade(&a, &["peers", "add", &c_id]));
    let a_id = ok(nomade(&a, &["id"])).trim().to_string();
    ok(nomade(
        &c,
        &["peers", "add", &a_id, "--addr", &a_addr.to_string()],
    ));
    let c_copy = tmp.path().join("c-copy.bin");
    ok(nomade(&c, &["get", &id, c_copy.to_str().expect("path")]));
    assert_eq!(std::fs::read(&c_copy).expect("read"), data);

    // A file sealed for b only (once a learned b's key, at their session's
    // start): b gets it; c can hold it for b, not open it.
    let b_id = ok(nomade(&b, &["id"])).trim().to_string();
    let secret = tmp.path().join("secret.bin");
    std::fs::write(&secret, &data[..100_000]).expect("write");
    let sealed_id = loop {
        let put = nomade(&a, &["put", secret.to_str().expect("path"), "--for", &b_id]);
        if put.status.success() {
            break ok(put).lines().next().expect("id").to_string();
        }
        assert!(stderr(&put).contains("artifact key"), "{}", stderr(&put));
        assert!(Instant::now() < deadline, "a never learned b's key");
        std::thread::sleep(Duration::from_millis(100));
    };
    let b_secret = tmp.path().join("b-secret.bin");
    ok(nomade(
        &b,
        &["get", &sealed_id, b_secret.to_str().expect("path")],
    ));
    assert_eq!(std::fs::read(&b_secret).expect("read"), &data[..100_000]);
    let c_secret = tmp.path().join("c-secret.bin");
    let refused = nomade(&c, &["get", &sealed_id, c_secret.to_str().expect("path")]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("not a recipient"),
        "{}",
        stderr(&refused)
    );
    assert!(!c_secret.exists());
    let listed = ok(nomade(&c, &["artifacts"]));
    assert!(
        listed.contains("held_for_others") || listed.contains("held for others"),
        "{listed}"
    );
}

/// Reads one line of `child`'s stdout within `within`.
fn line_within(child: &mut Child, within: Duration) -> Option<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(within).ok()
}

/// `watch` prints each change as it is applied; `status --watch` into a
/// file writes the peers when they change; `name` renames the device and
/// the name stays.
#[test]
fn live_commands_watch_status_watch_and_renaming() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Paired {
        a,
        b,
        a_addr,
        b_addr,
        a_id,
    } = paired_out_of_band(tmp.path(), &["--name", "laptop"]);
    let mut sa = Serve::start(&a, a_addr, &[]);
    let _sb = Serve::start(&b, b_addr, &[]);

    let mut watch = Command::new(bin())
        .arg("--dir")
        .arg(&b)
        .args(["watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("watch");
    let status_file = tmp.path().join("status.txt");
    let mut status_watch = Command::new(bin())
        .arg("--dir")
        .arg(&b)
        .args(["status", "--watch"])
        .stdout(Stdio::from(
            std::fs::File::create(&status_file).expect("file"),
        ))
        .stderr(Stdio::null())
        .spawn()
        .expect("status --watch");
    std::thread::sleep(Duration::from_millis(300));
    ok(nomade(&a, &["doc", "set", "trip", "title", "Lisbon"]));
    let line = line_within(&mut watch, Duration::from_secs(20)).expect("a change line");
    let change: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(change["change"]["entity_id"], "trip", "{line}");
    assert_eq!(change["change"]["actor_id"], a_id.as_str());
    assert_eq!(change["change"]["remote"], true);
    let _ = watch.kill();
    let _ = watch.wait();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = status_watch.kill();
    let _ = status_watch.wait();
    let written = std::fs::read_to_string(&status_file).expect("read");
    assert!(
        written.contains(&a_id) && written.contains("online via"),
        "{written}"
    );
    assert!(!written.contains('\x1b'), "no screen clearing into a file");

    assert_eq!(ok(nomade(&a, &["name"])).trim(), "laptop");
    assert_eq!(
        ok(nomade(&a, &["name", "Ana's laptop"])).trim(),
        "Ana's laptop"
    );
    let _ = sa.child.kill();
    let _ = sa.child.wait();
    assert_eq!(ok(nomade(&a, &["name"])).trim(), "Ana's laptop", "kept");
    let st: serde_json::Value =
        serde_json::from_str(&ok(nomade(&a, &["status", "--json"]))).expect("json");
    assert_eq!(st["device_name"], "Ana's laptop");
}

/// A command prints the same whether it opens the directory itself or goes
/// through the node serving it.
#[test]
fn commands_print_the_same_with_and_without_a_running_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    ok(nomade(&a, &["doc", "set", "trip", "title", "\"Lisbon\""]));
    ok(nomade(&a, &["doc", "set", "trip", "nights", "4"]));
    ok(nomade(
        &a,
        &["conv", "append", "chat", "{\"from\":\"ana\"}"],
    ));
    ok(nomade(
        &a,
        &["text", "splice", "trip", "notes", "0", "0", "pack light"],
    ));
    let reads: [&[&str]; 6] = [
        &["doc", "show", "trip"],
        &["doc", "get", "trip", "nights"],
        &["conv", "show", "chat"],
        &["text", "show", "trip", "notes"],
        &["id"],
        &["name"],
    ];
    // A failure too: the same status and message.
    let failure = |o: Output| (o.status.code(), stderr(&o));
    let missing = ["doc", "get", "trip", "budget"];
    let offline: Vec<String> = reads.iter().map(|r| ok(nomade(&a, r))).collect();
    let offline_failure = failure(nomade(&a, &missing));
    let _serve = Serve::start(&a, free_addr(), &[]);
    let online: Vec<String> = reads.iter().map(|r| ok(nomade(&a, r))).collect();
    assert_eq!(offline, online);
    assert_eq!(failure(nomade(&a, &missing)), offline_failure);
    assert_eq!(offline_failure.0, Some(1));
    assert!(
        offline_failure.1.contains("trip has no field budget"),
        "{}",
        offline_failure.1
    );
}

/// Conversation items by id from the command line: `conv show --ids` prints
/// each item's id, `conv insert-after` answers after an item wherever it
/// moved and prints the new id, `conv remove-item` removes by id; an id
/// never in the conversation is `not_found` (status 1), a malformed one a
/// usage error (status 2).
#[test]
fn conversation_items_are_named_by_id_on_the_command_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    ok(nomade(&a, &["conv", "append", "chat", "lunch?"]));
    ok(nomade(&a, &["conv", "append", "chat", "dinner?"]));
    let listed = ok(nomade(&a, &["conv", "show", "chat", "--ids"]));
    let lunch = listed
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("an id")
        .to_string();
    assert!(lunch.ends_with("#1"), "{listed}");
    ok(nomade(&a, &["conv", "insert", "chat", "0", "first"]));
    let answer = ok(nomade(&a, &["conv", "insert-after", "chat", &lunch, "yes"]));
    let answer = answer.trim();
    assert!(answer.ends_with("#4"), "{answer}");
    assert_eq!(
        ok(nomade(&a, &["conv", "show", "chat"])),
        "0: \"first\"\n1: \"lunch?\"\n2: \"yes\"\n3: \"dinner?\"\n"
    );
    ok(nomade(&a, &["conv", "remove-item", "chat", &lunch]));
    ok(nomade(&a, &["conv", "remove-item", "chat", &lunch]));
    assert_eq!(
        ok(nomade(&a, &["conv", "show", "chat"])),
        "0: \"first\"\n1: \"yes\"\n2: \"dinner?\"\n"
    );
    let missing = nomade(&a, &["conv", "remove-item", "chat", "nobody#1"]);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("no item nobody#1"),
        "{}",
        stderr(&missing)
    );
    let malformed = nomade(&a, &["conv", "insert-after", "chat", "lunch", "x"]);
    assert_eq!(malformed.status.code(), Some(2), "{}", stderr(&malformed));
    assert!(stderr(&malformed).contains("not an item id"));
}

/// `nomade peers revoke` on one running node reaches the other running
/// node, which shows it in `status` and refuses to pair the device again,
/// also after a restart.
#[test]
fn a_revocation_from_the_command_line_reaches_the_other_running_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = paired_out_of_band(tmp.path(), &[]);
    let phone = tmp.path().join("phone");
    let phone_id = ok(nomade(&phone, &["id"])).trim().to_string();
    for dir in [&p.a, &p.b] {
        ok(nomade(dir, &["peers", "add", &phone_id]));
    }
    let _a = Serve::start(&p.a, p.a_addr, &[]);
    let b = Serve::start(&p.b, p.b_addr, &[]);
    let connected = |dir: &Path| {
        let st: serde_json::Value =
            serde_json::from_str(&ok(nomade(dir, &["status", "--json"]))).expect("json");
        st["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|peer| peer["session"].is_object())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !connected(&p.b) {
        assert!(Instant::now() < deadline, "the nodes did not connect");
        std::thread::sleep(Duration::from_millis(100));
    }

    let said = ok(nomade(&p.a, &["peers", "revoke", &phone_id]));
    assert!(said.starts_with(&format!("revoked {phone_id}")), "{said}");
    let revoked_on_b = || {
        let st: serde_json::Value =
            serde_json::from_str(&ok(nomade(&p.b, &["status", "--json"]))).expect("json");
        st["revoked"].as_array().into_iter().flatten().any(|r| {
            r["device_id"] == phone_id.as_str() && r["revoked_by"][0][0] == p.a_id.as_str()
        })
    };
    while !revoked_on_b() {
        assert!(Instant::now() < deadline, "the revocation did not reach b");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = ok(nomade(&p.b, &["status"]));
    assert!(status.contains("revoked  1"), "{status}");
    assert!(!ok(nomade(&p.b, &["peers", "list"])).contains(&phone_id));
    let again = nomade(&p.b, &["peers", "add", &phone_id]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("revoked"), "{}", stderr(&again));
    // The device cannot revoke itself.
    let b_id = ok(nomade(&p.b, &["id"]));
    let itself = nomade(&p.b, &["peers", "revoke", b_id.trim()]);
    assert!(!itself.status.success());
    assert!(
        stderr(&itself).contains("cannot revoke itself"),
        "{}",
        stderr(&itself)
    );

    // After a restart, without a running node, it still holds.
    drop(b);
    assert!(revoked_on_b());
    assert!(!nomade(&p.b, &["peers", "add", &phone_id]).status.success());
}

/// `serve --background-windows` outside the current time: the prefetch of
/// a referenced artifact waits, and `status` says why; `artifacts` lists it
/// as remote only with its size; `power` reports the device's state.
#[test]
fn background_prefetch_waits_for_its_window_and_status_says_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = paired_out_of_band(tmp.path(), &[]);
    let file = tmp.path().join("photo.bin");
    std::fs::write(&file, vec![5u8; 200_000]).expect("write");
    let put = ok(nomade(
        &p.a,
        &["put", file.to_str().expect("path"), "--mime", "image/jpeg"],
    ));
    let id = put.lines().next().expect("id").to_string();
    ok(nomade(
        &p.a,
        &[
            "doc",
            "set",
            "album",
            "cover",
            &format!("\"nomade:artifact/{id}\""),
        ],
    ));
    // A window that opens two hours from now (UTC) and lasts one.
    let now_min = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / 60)
        % 1440;
    let (start, end) = ((now_min + 120) % 1440, (now_min + 180) % 1440);
    let window = format!(
        "{:02}:{:02}-{:02}:{:02}",
        start / 60,
        start % 60,
        end / 60,
        end % 60
    );
    let _a = Serve::start(&p.a, p.a_addr, &[]);
    let _b = Serve::start(&p.b, p.b_addr, &["--background-windows", &window]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = ok(nomade(&p.b, &["status"]));
        if status.contains("waiting  artifact prefetch") {
            assert!(
                status.contains("outside the background windows"),
                "{status}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no deferred prefetch: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let listed = ok(nomade(&p.b, &["artifacts"]));
    assert!(listed.contains("remote only"), "{listed}");
    assert!(listed.contains("image/jpeg"), "{listed}");
    let power = ok(nomade(
        &p.b,
        &["power", "--battery", "55", "--connectivity", "wifi"],
    ));
    let power: serde_json::Value = serde_json::from_str(&power).expect("json");
    assert_eq!(power["battery_level"], 55);
    assert_eq!(power["connectivity"], "wifi");
    let bad = nomade(&p.b, &["power", "--connectivity", "pigeon"]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = nomade(&p.b, &["serve", "--background-windows", "25:00-01:00"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

/// `nomade subscribe` / `unsubscribe` / `subscriptions` on a data
/// directory: the subscription is kept, shown in `status`, malformed
/// patterns are refused saying why, and an edit outside it is refused.
#[test]
fn subscriptions_are_set_shown_and_enforced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("phone");
    let said = ok(nomade(&dir, &["subscriptions"]));
    assert!(said.contains("this device holds: everything"), "{said}");
    let said = ok(nomade(&dir, &["subscribe", "--only", "document:trip"]));
    assert!(said.contains("this device holds: document:trip"), "{said}");
    let said = ok(nomade(&dir, &["subscribe", "conversation:family-*"]));
    assert!(
        said.contains("document:trip conversation:family-*"),
        "{said}"
    );
    ok(nomade(&dir, &["doc", "set", "trip", "title", "Lisbon"]));
    let refused = nomade(&dir, &["doc", "set", "notes", "title", "x"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("subscribe to it first"),
        "{}",
        stderr(&refused)
    );
    let bad = nomade(&dir, &["subscribe", "document:a*b"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("type:prefix*"), "{}", stderr(&bad));
    let said = ok(nomade(&dir, &["unsubscribe", "document:trip"]));
    assert!(
        said.contains("this device holds: conversation:family-*"),
        "{said}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&ok(nomade(&dir, &["status", "--json"]))).expect("json");
    assert_eq!(status["subscription"], "conversation:family-*");
    assert_eq!(status["subscription_filling_in"], false);
    let said = ok(nomade(&dir, &["subscribe", "--everything"]));
    assert!(said.contains("this device holds: everything"), "{said}");
    ok(nomade(&dir, &["doc", "set", "notes", "title", "x"]));
}
