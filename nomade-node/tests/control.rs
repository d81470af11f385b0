//! The control socket of a running node against what clients can send:
//! garbage, oversized and half-written requests, clients that never send,
//! thousands of connections, another user, a stale socket file, a second
//! node on the same directory. Each gets a typed error; the node goes on
//! answering and syncing.

use std::path::Path;
use std::time::Duration;

use nomade_node::control::{self, ControlClient, ControlLimits, ErrorKind, Reply, Request};
use nomade_node::Node;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

mod common;
use common::config;

fn limits() -> ControlLimits {
    ControlLimits {
        max_clients: 8,
        max_request_bytes: 64 * 1024,
        request_deadline: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
    }
}

async fn serving(dir: &Path, name: &str) -> (Node, control::ControlServer) {
    let node = Node::open(dir, config(name)).expect("open");
    node.start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start");
    let server = control::serve(&node, limits())
        .await
        .expect("control socket");
    (node, server)
}

/// The next line the server writes, as a reply.
async fn reply(r: &mut BufReader<UnixStream>) -> Option<Reply> {
    let mut line = String::new();
    match tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await {
        Ok(Ok(0)) | Ok(Err(_)) => None,
        Ok(Ok(_)) => Some(serde_json::from_str(&line).expect("a reply is JSON")),
        Err(_) => panic!("no reply within 5 s"),
    }
}

async fn connect(node: &Node) -> BufReader<UnixStream> {
    BufReader::new(
        UnixStream::connect(control::socket_path(node.dir()))
            .await
            .expect("connect"),
    )
}

fn kind(r: &Reply) -> Option<ErrorKind> {
    r.error.as_ref().map(|e| e.kind)
}

/// Reads until the server closes the connection (an end of stream, or a
/// reset when it closed with our bytes unread), within 5 s.
async fn closed(r: &mut BufReader<UnixStream>) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut rest))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_half_written_and_silent_clients_get_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _server) = serving(&dir.path().join("a"), "a").await;

    // Garbage: a typed error, and the connection goes on.
    let mut c = connect(&node).await;
    for garbage in [
        &b"hello\n"[..],
        b"{\"id\": 7, \"method\": \"format_disk\"}\n",
        b"{\"id\": 8, \"method\": \"doc_set\", \"params\": {\"doc\": []}}\n",
        b"\xff\xfe\x00\n",
        b"\n",
    ] {
        c.get_mut().write_all(garbage).await.expect("write");
        let r = reply(&mut c).await.expect("an answer");
        assert_eq!(kind(&r), Some(ErrorKind::BadRequest), "{garbage:?}: {r:?}");
    }
    c.get_mut()
        .write_all(b"{\"id\": 9, \"method\": \"id\"}\n")
        .await
        .expect("write");
    let r = reply(&mut c).await.expect("answer");
    assert_eq!(r.id, Some(9));
    assert_eq!(
        r.result.expect("a result")["device_id"],
        node.device_id().to_string()
    );

    // Oversized: refused before it is all read, then closed.
    let mut c = connect(&node).await;
    let big = vec![b'x'; 512 * 1024];
    let _ = c.get_mut().write_all(&big).await;
    let r = reply(&mut c).await.expect("answer");
    assert_eq!(kind(&r), Some(ErrorKind::TooLarge), "{r:?}");
    assert!(closed(&mut c).await);

    // Half a request, then nothing: the request deadline.
    let mut c = connect(&node).await;
    c.get_mut()
        .write_all(b"{\"id\": 1, \"meth")
        .await
        .expect("write");
    let r = reply(&mut c).await.expect("answer");
    assert_eq!(kind(&r), Some(ErrorKind::Timeout), "{r:?}");
    assert!(closed(&mut c).await);

    // Connected, silent: the idle timeout.
    let mut c = connect(&node).await;
    let r = reply(&mut c).await.expect("answer");
    assert_eq!(kind(&r), Some(ErrorKind::Timeout), "{r:?}");
    assert!(closed(&mut c).await);

    // And the node still answers.
    let mut client = ControlClient::connect(node.dir())
        .await
        .expect("connect")
        .expect("a node serves");
    client
        .request(
            &Request::DocSet {
                doc: "d".into(),
                key: "k".into(),
                value: serde_json::json!(1),
            },
            |_| {},
        )
        .await
        .expect("doc set");
    assert_eq!(
        node.document("d").and_then(|d| d.get("k").cloned()),
        Some(nomade_wire::Value::Int(1))
    );
    node.shutdown().await;
}

/// Thousands of connections at once: those over the limit are told `busy`
/// at once and closed, the node's memory does not follow the flood, and it
/// goes on serving commands and syncing with its peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_are_bounded_and_the_node_goes_on_syncing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, _server) = serving(&dir.path().join("a"), "a").await;
    let b = Node::open(&dir.path().join("b"), config("b")).expect("open");
    let b_addr = b
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start");
    a.add_peer(b.device_id(), "b", &[b_addr]).expect("pair");
    b.add_peer(a.device_id(), "a", &[]).expect("pair");
    a.connect(b_addr, b.device_id()).await.expect("connect");

    let path = control::socket_path(a.dir());
    let mut held = Vec::new();
    let mut busy = 0;
    for i in 0..2000 {
        let Ok(mut s) = UnixStream::connect(&path).await else {
            // Out of descriptors on this side: enough have been made.
            break;
        };
        if i % 2 == 0 {
            let _ = s.write_all(b"{\"id\": 1, \"method\": \"stat").await;
        }
        held.push(s);
    }
    assert!(held.len() >= 500, "only {} connections made", held.len());
    // The first `max_clients` are served; every later one is told busy.
    for s in held.iter_mut().skip(limits().max_clients) {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while let Ok(Ok(1)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut byte)).await
        {
            if byte[0] == b'\n' {
                break;
            }
            line.push(byte[0]);
        }
        let r: Reply = serde_json::from_slice(&line).expect("a busy reply");
        assert_eq!(kind(&r), Some(ErrorKind::Busy));
        busy += 1;
    }
    assert_eq!(busy, held.len() - limits().max_clients);
    // While the flood is held, the node syncs an edit to its peer.
    a.set("trip", "title", "during the flood").expect("edit");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.document("trip").and_then(|d| d.get("title").cloned())
        != Some(nomade_wire::Value::from("during the flood"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edit did not reach b"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
    // The served ones time out or close; then commands work again.
    tokio::time::sleep(limits().idle_timeout + Duration::from_millis(200)).await;
    let mut client = ControlClient::connect(a.dir())
        .await
        .expect("connect")
        .expect("a node serves");
    let st = client
        .request(&Request::Status, |_| {})
        .await
        .expect("status");
    assert_eq!(st["peers"][0]["online"], true, "{st}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A stale socket file (a node killed with kill -9) is replaced; while a
/// node serves, a second one on the same directory is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_and_a_second_server_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("a");
    std::fs::create_dir_all(&d).expect("dir");
    // What a killed node leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(control::socket_path(&d)).expect("bind"));
    assert!(control::socket_path(&d).exists());
    assert!(ControlClient::connect(&d).await.expect("connect").is_none());
    let (node, server) = serving(&d, "a").await;
    assert!(control::node_serves(&d).await);
    let err = control::serve(&node, limits())
        .await
        .expect_err("a second server");
    assert!(err.to_string().contains("already serves"), "{err}");
    // Still the first one answering.
    let mut client = ControlClient::connect(&d)
        .await
        .expect("c")
        .expect("serves");
    client.request(&Request::Id, |_| {}).await.expect("id");
    let mode = std::fs::metadata(server.path())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("socket");
    assert_eq!(mode, 0o600, "owner only");
    node.shutdown().await;
    drop(server);
    assert!(!control::socket_path(&d).exists(), "removed at the end");
}

/// A client of another user is refused even when the socket's permissions
/// were loosened to let it connect. (Acting as another user takes root and
/// `setpriv`: without them this is said, not passed silently.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_user_is_refused() {
    let as_root =
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    if as_root.ok() != Some(true) || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("NOT RUN: acting as another user needs root and /usr/bin/setpriv");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("a");
    let (node, server) = serving(&d, "a").await;
    use std::os::unix::fs::PermissionsExt;
    for p in [dir.path(), d.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::set_permissions(server.path(), std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let script = "import socket,sys\n\
s=socket.socket(socket.AF_UNIX)\n\
s.connect(sys.argv[1])\n\
s.sendall(b'{\"id\":1,\"method\":\"status\"}\\n')\n\
print(s.makefile().readline())";
    let out = tokio::process::Command::new("/usr/bin/setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .arg(server.path())
        .output()
        .await
        .expect("run as nobody");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Reply = serde_json::from_str(text.trim()).expect("a reply");
    assert_eq!(kind(&r), Some(ErrorKind::Forbidden), "{r:?}");
    assert!(r.result.is_none());
    node.shutdown().await;
}

/// `watch` streams each change as an event, and ends when the client goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_until_the_client_leaves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _server) = serving(&dir.path().join("a"), "a").await;
    let mut c = connect(&node).await;
    c.get_mut()
        .write_all(b"{\"id\": 3, \"method\": \"watch\"}\n")
        .await
        .expect("write");
    // The subscription starts with the request; give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    node.set("trip", "title", "x").expect("edit");
    node.conv_append("chat", "hi").expect("edit");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = reply(&mut c).await.expect("an event");
        assert_eq!(r.id, Some(3));
        match r.event.expect("an event") {
            control::Event::Change {
                entity_id, remote, ..
            } => seen.push((entity_id, remote)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, vec![("trip".into(), false), ("chat".into(), false)]);
    drop(c);
    // The node serves the next client as before.
    let mut client = ControlClient::connect(node.dir())
        .await
        .expect("c")
        .expect("serves");
    client.request(&Request::Id, |_| {}).await.expect("id");
    node.shutdown().await;
}
