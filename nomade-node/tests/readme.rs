//! The README's flow, run as a person would: the commands of its
//! `readme-flow` block, exactly as written and in order, each through
//! `bash` with the `nomade` program on the `PATH`, two processes per device
//! (`serve` in the background, commands beside it). Only the two ports
//! (free ones instead of 47001 and 47002) and the pairing code (the one
//! `pair show` printed instead of the example) are substituted. When the
//! README changes, this test runs the new commands.
//!
//! Then what the README promises: edits made while both serve arrive on the
//! other side within seconds, `peers list`, `status --json` and `doctor` say
//! what they should, and a device killed (SIGKILL, leaving its control
//! socket behind) and restarted with the same command redials by itself and
//! catches up.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn readme_flow() -> Vec<String> {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme).expect("README.md");
    let begin = text
        .find("<!-- readme-flow: begin -->")
        .expect("the README marks its flow with <!-- readme-flow: begin -->");
    let end = text[begin..]
        .find("<!-- readme-flow: end -->")
        .expect("and <!-- readme-flow: end -->")
        + begin;
    let block = &text[begin..end];
    let body = block
        .split("```sh")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh code block between the markers");
    body.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The command without its trailing comment (what decides `&`).
fn command_part(line: &str) -> &str {
    match line.find(" #") {
        Some(i) => line[..i].trim(),
        None => line.trim(),
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

struct Flow {
    cwd: tempfile::TempDir,
    path: String,
    ports: [(String, String); 2],
    code: Option<String>,
    background: Vec<(String, Child, PathBuf)>,
}

impl Flow {
    fn new() -> Flow {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_nomade"));
        let bin_dir = bin.parent().expect("bin dir").to_path_buf();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Flow {
            cwd: tempfile::tempdir().expect("tempdir"),
            path,
            ports: [
                ("47001".into(), free_port().to_string()),
                ("47002".into(), free_port().to_string()),
            ],
            code: None,
            background: Vec::new(),
        }
    }

    fn port(&self, i: usize) -> &str {
        &self.ports[i].1
    }

    fn substitute(&self, line: &str) -> String {
        let mut l = line.to_string();
        for (from, to) in &self.ports {
            l = l.replace(from.as_str(), to);
        }
        if let Some(code) = &self.code {
            l = l.replace("k3x7-2mfa", code);
        }
        l
    }

    fn bash(&self, command: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(command)
            .current_dir(self.cwd.path())
            .env("PATH", &self.path)
            .env_remove("NOMADE_DIR")
            .env_remove("NOMADE_NAME")
            .env_remove("RUST_LOG");
        c
    }

    /// Runs a line in the foreground.
    fn run(&self, line: &str) -> Output {
        self.bash(&self.substitute(line)).output().expect("bash")
    }

    /// Starts a line ending in `&` the way a shell would, its output into a
    /// file of its own. `exec` makes the process the program itself, so that
    /// a kill reaches it.
    fn start(&mut self, line: &str) {
        let command = self.substitute(command_part(line).trim_end_matches('&').trim());
        let n = self.background.len();
        let out = self.cwd.path().join(format!("background-{n}.out"));
        let file = std::fs::File::create(&out).expect("output file");
        let err = file.try_clone().expect("clone");
        let child = self
            .bash(&format!("exec {command}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn");
        self.background.push((command, child, out));
    }

    fn output_of(&self, i: usize) -> String {
        std::fs::read_to_string(&self.background[i].2).unwrap_or_default()
    }

    fn logs(&self) -> String {
        (0..self.background.len())
            .map(|i| format!("--- {}\n{}", self.background[i].0, self.output_of(i)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.background {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `line` until `check` accepts its output, for at most `within`.
fn eventually(
    flow: &Flow,
    line: &str,
    within: Duration,
    check: impl Fn(&Output) -> bool,
) -> Output {
    let deadline = Instant::now() + within;
    loop {
        let out = flow.run(line);
        if check(&out) {
            return out;
        }
        if Instant::now() > deadline {
            panic!(
                "`{line}` did not give what the README says within {within:?}:\nstdout: {}\nstderr: {}\n{}",
                stdout(&out),
                String::from_utf8_lossy(&out.stderr),
                flow.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_socket(flow: &Flow, dir: &str) {
    let sock = flow.cwd.path().join(dir).join("control.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "{dir} serve did not come up:\n{}",
            flow.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn the_readme_flow_works_as_written() {
    let lines = readme_flow();
    assert!(lines.len() >= 10, "the README's flow: {lines:?}");
    let mut flow = Flow::new();
    let within = Duration::from_secs(10);
    let mut laptop_id = String::new();
    let mut phone_id = String::new();
    for line in &lines {
        let cmd = command_part(line);
        if cmd.ends_with('&') {
            flow.start(line);
            let i = flow.background.len() - 1;
            if cmd.contains(" serve") {
                let dir = if cmd.contains("--dir laptop") {
                    "laptop"
                } else {
                    "phone"
                };
                wait_for_socket(&flow, dir);
            } else if cmd.contains("pair show") {
                let deadline = Instant::now() + within;
                let code = loop {
                    let out = flow.output_of(i);
                    if let Some(l) = out.lines().find(|l| l.starts_with("pairing code: ")) {
                        break l.trim_start_matches("pairing code: ").trim().to_string();
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no pairing code:\n{}",
                        flow.logs()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                };
                assert_eq!(code.len(), 9, "{code}");
                flow.code = Some(code);
            } else {
                panic!("a background command the test does not know: {line}");
            }
            continue;
        }
        let out = if cmd.contains("doc show trip") {
            eventually(&flow, line, within, |o| {
                json(o) == serde_json::json!({"title": "Lisbon in May"})
            })
        } else if cmd.contains("conv show family-chat") {
            eventually(&flow, line, within, |o| stdout(o) == "0: \"on my way\"\n")
        } else if cmd.contains("text show trip notes") {
            eventually(&flow, line, within, |o| stdout(o) == "pack light\n")
        } else {
            flow.run(line)
        };
        assert!(
            out.status.success(),
            "`{line}` failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            flow.logs()
        );
        let text = stdout(&out);
        if cmd.contains("--dir laptop --name laptop init") {
            laptop_id = text
                .trim()
                .rsplit(' ')
                .next()
                .unwrap_or_default()
                .to_string();
        } else if cmd.contains("--dir phone --name phone init") {
            phone_id = text
                .trim()
                .rsplit(' ')
                .next()
                .unwrap_or_default()
                .to_string();
        } else if cmd.contains("pair join") {
            assert_eq!(
                text.trim(),
                format!("paired with {laptop_id} (laptop) and synced"),
                "the joiner learns the responder's name"
            );
        } else if cmd.contains("peers list") {
            let laptop_addr = format!("127.0.0.1:{}", flow.port(0));
            assert!(
                text.contains(&laptop_id)
                    && text.contains(" laptop ")
                    && text.contains("online")
                    && text.contains(&laptop_addr),
                "peers list: {text}"
            );
        } else if cmd.contains("status --json") {
            let st = json(&out);
            assert_eq!(st["device_name"], "phone", "{st}");
            let peer = &st["peers"][0];
            assert_eq!(peer["device_id"], laptop_id.as_str());
            assert_eq!(peer["name"], "laptop");
            assert_eq!(peer["online"], true, "{peer}");
            assert_eq!(
                peer["session"]["address"],
                format!("127.0.0.1:{}", flow.port(0))
            );
            assert!(
                peer["session"]["rtt_ms"].as_f64().is_some_and(|r| r > 0.0),
                "{peer}"
            );
            assert!(peer["session"]["bytes_received"]
                .as_u64()
                .is_some_and(|b| b > 0));
            assert!(peer["session"]["last_sync_ms"].as_i64().is_some(), "{peer}");
        } else if cmd.contains("doctor") {
            assert!(text.contains("ok (syncing)"), "doctor: {text}");
        }
    }
    assert!(!laptop_id.is_empty() && !phone_id.is_empty());

    // The background `pair show` said whom it paired with, by name, and ended.
    let show = flow
        .background
        .iter()
        .position(|(c, _, _)| c.contains("pair show"))
        .expect("pair show ran");
    let deadline = Instant::now() + within;
    while flow.background[show].1.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "pair show did not end:\n{}",
            flow.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        flow.output_of(show)
            .contains(&format!("paired with {phone_id} (phone)")),
        "{}",
        flow.output_of(show)
    );
    // Pairing remembered both ways: the laptop knows where the phone serves.
    let laptop_peers = flow.run("nomade --dir laptop peers list");
    assert!(
        stdout(&laptop_peers).contains(&format!("127.0.0.1:{}", flow.port(1))),
        "{}",
        stdout(&laptop_peers)
    );

    // The laptop dies (SIGKILL: its control socket stays behind); the phone
    // edits meanwhile; the laptop starts again with the README's command.
    let serve_line = lines
        .iter()
        .find(|l| command_part(l).contains("--dir laptop serve"))
        .expect("the laptop's serve line")
        .clone();
    let laptop = flow
        .background
        .iter()
        .position(|(c, _, _)| c.contains("--dir laptop serve"))
        .expect("laptop serve ran");
    flow.background[laptop].1.kill().expect("kill -9");
    let _ = flow.background[laptop].1.wait();
    assert!(flow.cwd.path().join("laptop/control.sock").exists());
    let edit = flow.run("nomade --dir phone doc set trip title Porto");
    assert!(edit.status.success());
    // With no node behind the stale socket, commands open the directory.
    let offline = flow.run("nomade --dir laptop status --json");
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    assert_eq!(json(&offline)["listening"], serde_json::Value::Null);
    flow.start(&serve_line);
    wait_for_socket(&flow, "laptop");
    eventually(
        &flow,
        "nomade --dir laptop doc get trip title",
        Duration::from_secs(30),
        |o| stdout(o).trim() == "\"Porto\"",
    );
    eventually(&flow, "nomade --dir laptop doctor", within, |o| {
        o.status.success() && stdout(o).contains("ok (syncing)")
    });
    let st = json(&flow.run("nomade --dir laptop status --json"));
    assert_eq!(st["peers"][0]["name"], "phone");
    assert_eq!(st["peers"][0]["online"], true, "{st}");
    assert_eq!(st["listening"], format!("127.0.0.1:{}", flow.port(0)));
}
