//! The `nomade` program: run a device, edit and read its data, pair, move
//! files, and a self-contained demonstration (`nomade demo`).
//!
//! Every command but `serve` and `demo` is a [`Request`]: sent to the node
//! serving the data directory over its control socket when one runs,
//! carried out on the directory directly when none does; either way the
//! answer is the same JSON, printed here by one function per command.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod bar;
mod cli;
mod demo;

use bar::ProgressBar;
use clap::Parser;
use cli::{
    ArtifactsCommand, Cli, Command, ConvCommand, DocCommand, PairCommand, PeersCommand,
    PresenceCommand, TextCommand,
};
use nomade_node::control::{
    self, ControlClient, ControlError, ControlLimits, ErrorKind, Event, EventSink, Request,
};
use nomade_node::doctor::ago;
use nomade_node::progress::bytes;
use nomade_node::{Node, NodeConfig, NodeError};
use nomade_transport::RateLimits;
use nomade_wire::PresenceStatus;
use serde_json::Value as Json;

fn main() {
    let cli = Cli::parse();
    // A running node logs warnings; a one-shot command only what stops it
    // (its own error line says the rest).
    let default_log = match cli.command {
        Command::Serve { .. } => "warn",
        _ => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(cli.log.as_deref().unwrap_or(default_log))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours on a terminal only: a log file gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}{}", e.message, hint(e.kind));
            exit_status(e.kind)
        }
    };
    // Background tasks (a redial in flight) must not hold the exit.
    runtime.shutdown_background();
    std::process::exit(code);
}

/// The exit status of a failure (see `nomade --help`).
fn exit_status(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::Invalid | ErrorKind::BadRequest => 2,
        ErrorKind::Unreachable => 3,
        ErrorKind::Refused => 4,
        _ => 1,
    }
}

/// What to do next, for the failures whose message cannot know it.
fn hint(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unreachable => {
            " (is `nomade serve` running there, on that port? `nomade doctor` tells more)"
        }
        ErrorKind::Refused => " (`nomade doctor` tells why; the devices may need pairing again)",
        ErrorKind::Busy => " (the running node is busy: try again in a moment)",
        _ => "",
    }
}

fn usage(message: impl Into<String>) -> ControlError {
    ControlError::new(ErrorKind::Invalid, message)
}

/// A command-line value: JSON if it parses, a plain string otherwise.
fn parse_value(s: &str) -> Json {
    serde_json::from_str::<Json>(s).unwrap_or_else(|_| Json::String(s.to_string()))
}

/// A conversation item's id as typed: `DEVICE#COUNTER`.
fn parse_item_id(text: &str) -> Result<nomade_node::ItemId, ControlError> {
    text.rsplit_once('#')
        .and_then(|(actor, counter)| {
            let counter = counter.parse::<u64>().ok()?;
            (!actor.is_empty() && counter > 0).then(|| nomade_node::ItemId {
                actor: actor.into(),
                counter,
            })
        })
        .ok_or_else(|| {
            ControlError::new(
                ErrorKind::Invalid,
                format!("{text:?} is not an item id (DEVICE#COUNTER, as `conv show --ids` prints)"),
            )
        })
}

/// A conversation item's id as printed: `DEVICE#COUNTER`.
fn item_id(id: &Json) -> String {
    format!("{}#{}", id["actor"].as_str().unwrap_or("?"), id["counter"])
}

fn print_json(v: &Json) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
}

fn config(cli: &Cli) -> NodeConfig {
    let (artifact_policy, background) = match &cli.command {
        Command::Serve {
            fetch,
            fetch_max_size,
            fetch_types,
            battery_floor,
            background_on_cellular,
            background_windows,
            utc_offset_minutes,
            ..
        } => (
            nomade_node::ArtifactPolicy {
                prefetch: fetch == "all",
                max_size: *fetch_max_size,
                mime_types: fetch_types.clone(),
                ..Default::default()
            },
            nomade_node::schedule::BackgroundPolicy {
                battery_floor: (*battery_floor > 0).then_some(*battery_floor),
                defer_on_cellular: !background_on_cellular,
                windows: background_windows.clone(),
                utc_offset_minutes: *utc_offset_minutes,
            },
        ),
        _ => Default::default(),
    };
    let discovery = matches!(
        &cli.command,
        Command::Serve {
            no_discovery: false,
            ..
        }
    );
    let relay = nomade_transport::RelayConfig {
        enabled: !matches!(&cli.command, Command::Serve { no_relay: true, .. }),
        ..Default::default()
    };
    NodeConfig {
        artifact_policy,
        background,
        discovery,
        relay,
        device_name: cli.name.clone().unwrap_or_default(),
        rate_limits: if cli.no_rate_limits {
            RateLimits::OFF
        } else {
            RateLimits::default()
        },
        handshake_timeout: Duration::try_from_secs_f64(cli.connect_timeout)
            .unwrap_or(Duration::from_secs(10)),
        ..NodeConfig::default()
    }
}

/// An absolute path (the node serving the directory has its own working
/// directory).
fn absolute(p: &Path) -> Result<PathBuf, ControlError> {
    std::path::absolute(p).map_err(|e| usage(format!("{}: {e}", p.display())))
}

fn open_error(dir: &Path, e: NodeError) -> ControlError {
    let mut err = ControlError::from(e);
    if err.message.contains("in use by another process") {
        err.message = format!(
            "{} is in use by another nomade process (one that does not serve commands, such as a long `put`): wait for it to finish",
            dir.display()
        );
    } else {
        err.message = format!("opening {}: {}", dir.display(), err.message);
    }
    err
}

/// Carries out `request` on the node serving `cli.dir`, or on the directory
/// itself if none serves it; `on_event` sees the events either way.
async fn execute(
    cli: &Cli,
    request: Request,
    mut on_event: impl FnMut(Event),
) -> Result<Json, ControlError> {
    let connected = ControlClient::connect(&cli.dir).await.map_err(|e| {
        ControlError::new(
            ErrorKind::Failed,
            format!("cannot reach the node serving {}: {e}", cli.dir.display()),
        )
    })?;
    if let Some(mut client) = connected {
        if let Some(name) = &cli.name {
            client
                .request(
                    &Request::Name {
                        name: Some(name.clone()),
                    },
                    |_| {},
                )
                .await?;
        }
        return client.request(&request, on_event).await;
    }
    let node = Node::open(&cli.dir, config(cli)).map_err(|e| open_error(&cli.dir, e))?;
    let (sink, mut events) = EventSink::channel(64);
    let result = {
        let handling = control::handle(&node, false, request, &sink);
        tokio::pin!(handling);
        loop {
            tokio::select! {
                r = &mut handling => break r,
                Some(ev) = events.recv() => on_event(ev),
            }
        }
    };
    while let Ok(ev) = events.try_recv() {
        on_event(ev);
    }
    node.shutdown().await;
    result
}

/// Draws the progress events of a `put` or `get`.
struct Progress {
    label: String,
    bar: Option<(String, ProgressBar)>,
}

impl Progress {
    fn new(label: String) -> Self {
        Progress { label, bar: None }
    }

    fn on_event(&mut self, ev: Event) {
        if let Event::Progress { phase, done, total } = ev {
            let start_new = self.bar.as_ref().is_none_or(|(p, _)| p != &phase);
            if start_new {
                let what = format!("{} ({phase})", self.label);
                self.bar = Some((phase.clone(), ProgressBar::new(what, total, true)));
            }
            if let Some((_, bar)) = &mut self.bar {
                bar.set_total(total);
                bar.update(done);
            }
        }
    }
}

async fn run(cli: Cli) -> Result<i32, ControlError> {
    let request = match &cli.command {
        Command::Demo {
            json,
            artifact_mib,
            rate_limits,
        } => {
            let report = demo::run(artifact_mib << 20, !*json, *rate_limits)
                .await
                .map_err(|e| ControlError::new(ErrorKind::Failed, format!("{e:#}")))?;
            if *json {
                print_json(&serde_json::to_value(&report).unwrap_or(Json::Null));
            } else {
                print!("{report}");
            }
            let ok = report.converged && report.restart_recovered && report.artifact.verified;
            return Ok(if ok { 0 } else { 1 });
        }
        Command::Serve {
            listen,
            metrics_addr,
            ..
        } => return serve(&cli, *listen, *metrics_addr).await,
        Command::Text(TextCommand::Edit { doc, field }) => {
            return text_edit(&cli, doc, field).await
        }
        Command::Status { json, watch: true } => return status_watch(&cli, *json).await,
        Command::Init => Request::Id,
        Command::Id => Request::Id,
        Command::Name { new } => Request::Name { name: new.clone() },
        Command::Pair(PairCommand::Show { listen, ttl }) => Request::PairShow {
            ttl_secs: *ttl,
            listen: listen.map(|l| l.to_string()),
        },
        Command::Pair(PairCommand::Join { code, addr, listen }) => Request::PairJoin {
            code: code.clone(),
            addr: addr.to_string(),
            listen: listen.map(|l| l.to_string()),
        },
        Command::Peers(PeersCommand::List) => Request::PeersList,
        Command::Peers(PeersCommand::Add { device_id, addr }) => Request::PeersAdd {
            device_id: device_id.clone(),
            addr: addr.map(|a| a.to_string()),
        },
        Command::Peers(PeersCommand::Remove { device_id }) => Request::PeersRemove {
            device_id: device_id.clone(),
        },
        Command::Peers(PeersCommand::Revoke { device_id }) => Request::PeersRevoke {
            device_id: device_id.clone(),
        },
        Command::Doc(DocCommand::Set { doc, key, value }) => Request::DocSet {
            doc: doc.clone(),
            key: key.clone(),
            value: parse_value(value),
        },
        Command::Doc(DocCommand::Get { doc, key }) => Request::DocGet {
            doc: doc.clone(),
            key: key.clone(),
        },
        Command::Doc(DocCommand::Delete { doc, key }) => Request::DocDelete {
            doc: doc.clone(),
            key: key.clone(),
        },
        Command::Doc(DocCommand::Show { doc }) => Request::DocShow { doc: doc.clone() },
        Command::Conv(ConvCommand::Append { conv, value }) => Request::ConvAppend {
            conv: conv.clone(),
            value: parse_value(value),
        },
        Command::Conv(ConvCommand::Insert { conv, index, value }) => Request::ConvInsert {
            conv: conv.clone(),
            index: *index,
            value: parse_value(value),
        },
        Command::Conv(ConvCommand::Remove { conv, index }) => Request::ConvRemove {
            conv: conv.clone(),
            index: *index,
        },
        Command::Conv(ConvCommand::Show { conv, ids: false }) => {
            Request::ConvShow { conv: conv.clone() }
        }
        Command::Conv(ConvCommand::Show { conv, ids: true }) => {
            Request::ConvItems { conv: conv.clone() }
        }
        Command::Conv(ConvCommand::InsertAfter { conv, after, value }) => {
            Request::ConvInsertAfter {
                conv: conv.clone(),
                after: match after.as_str() {
                    "start" => None,
                    id => Some(parse_item_id(id)?),
                },
                value: parse_value(value),
            }
        }
        Command::Conv(ConvCommand::RemoveItem { conv, item }) => Request::ConvRemoveItem {
            conv: conv.clone(),
            item: parse_item_id(item)?,
        },
        Command::Text(TextCommand::Show { doc, field }) => Request::TextShow {
            doc: doc.clone(),
            field: field.clone(),
        },
        Command::Text(TextCommand::Splice {
            doc,
            field,
            position,
            delete,
            insert,
        }) => Request::TextSplice {
            doc: doc.clone(),
            field: field.clone(),
            position: *position,
            delete: *delete,
            insert: insert.clone(),
        },
        Command::Presence(PresenceCommand::Set { status, message }) => Request::PresenceSet {
            status: parse_presence(status)?,
            message: message.clone(),
        },
        Command::Presence(PresenceCommand::Show) => Request::PeersList,
        Command::Subscribe {
            patterns,
            only,
            everything,
        } => Request::Subscribe {
            patterns: patterns.clone(),
            only: *only,
            everything: *everything,
        },
        Command::Unsubscribe { patterns } => Request::Unsubscribe {
            patterns: patterns.clone(),
        },
        Command::Subscriptions => Request::Subscriptions,
        Command::Power {
            battery,
            charging,
            connectivity,
        } => Request::PowerSet {
            state: nomade_node::schedule::PowerState {
                battery_level: *battery,
                charging: *charging,
                connectivity: serde_json::from_value(Json::String(
                    connectivity.to_ascii_lowercase(),
                ))
                .map_err(|_| {
                    usage(format!(
                        "{connectivity:?} is not a connectivity: wifi, cellular, ethernet or unknown"
                    ))
                })?,
            },
        },
        Command::Put {
            file,
            mime,
            recipients,
        } => Request::Put {
            path: absolute(file)?,
            mime: mime.clone(),
            recipients: recipients.clone(),
        },
        Command::Get {
            id,
            out,
            from,
            peer,
        } => Request::Get {
            id: id.clone(),
            out: absolute(out)?,
            from: from.map(|a| a.to_string()),
            peer: peer.clone(),
        },
        Command::Artifacts {
            action: None | Some(ArtifactsCommand::List),
        } => Request::ArtifactsList,
        Command::Artifacts {
            action: Some(ArtifactsCommand::Pin { id }),
        } => Request::ArtifactsPin {
            id: id.clone(),
            pinned: true,
        },
        Command::Artifacts {
            action: Some(ArtifactsCommand::Unpin { id }),
        } => Request::ArtifactsPin {
            id: id.clone(),
            pinned: false,
        },
        Command::Artifacts {
            action: Some(ArtifactsCommand::Evict { id }),
        } => Request::ArtifactsEvict { id: id.clone() },
        Command::Status { .. } => Request::Status,
        Command::Watch { .. } => Request::Watch,
        Command::Doctor { .. } => Request::Doctor,
    };
    let mut progress = Progress::new(match &cli.command {
        Command::Put { file, .. } => format!("put {}", file.display()),
        Command::Get { id, .. } => format!("get {}", id.get(..12).unwrap_or(id)),
        _ => String::new(),
    });
    let watch_json = matches!(cli.command, Command::Watch { json: true });
    let result = execute(&cli, request, |ev| match ev {
        Event::Progress { .. } => progress.on_event(ev),
        Event::PairingCode {
            code,
            device_id,
            listening,
        } => {
            let port = listening.rsplit(':').next().unwrap_or("4433").to_string();
            println!("pairing code: {code}");
            println!("device id:    {device_id}");
            println!("on the other device run: nomade pair join {code} <this host>:{port}");
            let _ = std::io::stdout().flush();
        }
        Event::Change { .. } | Event::Lagged { .. } => print_change(&ev, watch_json),
        _ => {}
    })
    .await?;
    Ok(print_result(&cli, &result))
}

fn parse_presence(s: &str) -> Result<PresenceStatus, ControlError> {
    serde_json::from_value(Json::String(s.to_ascii_lowercase())).map_err(|_| {
        usage(format!(
            "{s:?} is not a presence: online, away, busy or offline"
        ))
    })
}

fn print_change(ev: &Event, json: bool) {
    if json {
        if let Ok(line) = serde_json::to_string(ev) {
            println!("{line}");
        }
    } else {
        match ev {
            Event::Change {
                entity_type,
                entity_id,
                actor_id,
                remote,
                ..
            } => println!(
                "{} {entity_id} changed by {actor_id}{}",
                entity_type.as_str(),
                if *remote { "" } else { " (this device)" }
            ),
            Event::Lagged { missed } => println!("({missed} changes missed: read faster)"),
            _ => {}
        }
    }
    let _ = std::io::stdout().flush();
}

/// Prints a request's result as its command shows it; returns the exit status.
fn print_result(cli: &Cli, result: &Json) -> i32 {
    let s = |v: &Json| v.as_str().unwrap_or_default().to_string();
    match &cli.command {
        Command::Init => {
            println!("initialised {}", cli.dir.display());
            println!("device id: {}", s(&result["device_id"]));
        }
        Command::Id => println!("{}", s(&result["device_id"])),
        Command::Name { .. } => println!("{}", s(&result["name"])),
        Command::Pair(PairCommand::Show { .. }) => {
            println!("paired with {}", with_name(result))
        }
        Command::Pair(PairCommand::Join { .. }) => {
            println!("paired with {} and synced", with_name(result))
        }
        Command::Peers(PeersCommand::List) => print_peers(result),
        Command::Peers(PeersCommand::Add { .. }) => {
            println!("paired with {}", s(&result["device_id"]))
        }
        Command::Peers(PeersCommand::Remove { .. }) => {
            println!("unpaired {}", s(&result["device_id"]))
        }
        Command::Artifacts {
            action: None | Some(ArtifactsCommand::List),
        } => print_artifacts(result),
        Command::Artifacts {
            action: Some(ArtifactsCommand::Pin { id }),
        } => println!("pinned {id}"),
        Command::Artifacts {
            action: Some(ArtifactsCommand::Unpin { id }),
        } => println!("unpinned {id}"),
        Command::Artifacts {
            action: Some(ArtifactsCommand::Evict { id }),
        } => println!(
            "evicted {id}: {} freed",
            bytes(result["freed"].as_u64().unwrap_or(0))
        ),
        Command::Peers(PeersCommand::Revoke { .. }) => {
            println!(
                "revoked {}: your devices refuse it as they learn of it, and keep its changes up to {} only",
                s(&result["device_id"]),
                result["cutoff"]
            );
            println!("to use that device again, give it a new identity (a new data directory) and pair it");
        }
        Command::Doc(DocCommand::Get { .. } | DocCommand::Show { .. }) => print_json(result),
        Command::Conv(ConvCommand::Show { ids: false, .. }) => {
            for (i, item) in result.as_array().into_iter().flatten().enumerate() {
                println!("{i}: {item}");
            }
        }
        Command::Conv(ConvCommand::Show { ids: true, .. }) => {
            for (i, item) in result.as_array().into_iter().flatten().enumerate() {
                println!("{i}: {}  {}", item_id(&item["id"]), item["value"]);
            }
        }
        Command::Conv(ConvCommand::InsertAfter { .. }) => println!("{}", item_id(result)),
        Command::Text(TextCommand::Show { .. }) => {
            let text = s(result);
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
        }
        Command::Presence(PresenceCommand::Show) => {
            for p in result.as_array().into_iter().flatten() {
                let presence = &p["presence"];
                let state = if p["online"].as_bool() == Some(true) {
                    presence["status"].as_str().unwrap_or("online")
                } else {
                    "offline"
                };
                let message = presence["message"].as_str().unwrap_or("");
                println!("{}  {state}  {message}", peer_label(p));
            }
        }
        Command::Put { .. } => {
            println!("{}", s(&result["id"]));
            println!(
                "reference it in a document with: {}",
                s(&result["reference"])
            );
        }
        Command::Get { .. } => println!("wrote {}", s(&result["path"])),
        Command::Power { .. } => print_json(result),
        Command::Subscribe { .. } | Command::Unsubscribe { .. } | Command::Subscriptions => {
            println!("this device holds: {}", s(&result["subscription"]));
            if result["filling_in"].as_bool() == Some(true) {
                println!("filling in the history of entities subscribed to lately");
            }
        }
        Command::Status { json: true, .. } => print_json(result),
        Command::Status { .. } => print_status(result),
        Command::Doctor { json: true } => {
            print_json(result);
            return doctor_exit(result);
        }
        Command::Doctor { .. } => {
            print_doctor(result);
            return doctor_exit(result);
        }
        _ => {}
    }
    0
}

fn with_name(result: &Json) -> String {
    let id = result["device_id"].as_str().unwrap_or_default();
    match result["name"].as_str() {
        Some(n) => format!("{id} ({n})"),
        None => id.to_string(),
    }
}

fn peer_label(p: &Json) -> String {
    format!(
        "{}  {}",
        p["device_id"].as_str().unwrap_or_default(),
        p["name"].as_str().unwrap_or("-")
    )
}

fn now_ms() -> i64 {
    nomade_node::core::now_ms()
}

/// `online`, `last seen 5 min ago`, or `never seen`.
fn seen(p: &Json) -> String {
    if p["session"].is_object() {
        return "online".into();
    }
    match p["last_seen_ms"].as_i64() {
        Some(t) => format!("last seen {} ago", ago(now_ms().saturating_sub(t))),
        None => "never seen".into(),
    }
}

fn print_peers(result: &Json) {
    let peers = result.as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        println!("no paired devices");
    }
    for p in &peers {
        let addrs: Vec<&str> = p["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .collect();
        println!(
            "{}  {}  {}",
            peer_label(p),
            seen(p),
            if addrs.is_empty() {
                "(no address)".to_string()
            } else {
                addrs.join(",")
            }
        );
    }
}

fn print_artifacts(result: &Json) {
    let list = result.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no artifacts");
    }
    for a in &list {
        let id = a["id"].as_str().unwrap_or_default();
        let size = a["size"]
            .as_u64()
            .map(bytes)
            .unwrap_or_else(|| "size unknown".into());
        let state = a["state"].as_str().unwrap_or_default().replace('_', " ");
        let pinned = if a["pinned"].as_bool() == Some(true) {
            "  pinned"
        } else {
            ""
        };
        let mime = a["mime_type"].as_str().unwrap_or("-");
        let by: Vec<&str> = a["referenced_by"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str())
            .collect();
        println!(
            "{}  {:<11} {:>10}  {mime}{pinned}{}",
            id.get(..16).unwrap_or(id),
            state,
            size,
            if by.is_empty() {
                String::new()
            } else {
                format!("  in {}", by.join(", "))
            }
        );
    }
}

fn print_status(st: &Json) {
    let s = |v: &Json| v.as_str().unwrap_or_default().to_string();
    println!(
        "device   {} ({})",
        s(&st["device_id"]),
        s(&st["device_name"])
    );
    println!("data     {}", s(&st["dir"]));
    match st["listening"].as_str() {
        Some(a) => println!("serving  on {a}"),
        None => println!("serving  no (start it with `nomade serve`)"),
    }
    if let Some(t) = st["disk_full_since_ms"].as_i64() {
        println!(
            "disk     FULL for {}: nothing more can be stored",
            ago(now_ms().saturating_sub(t))
        );
    }
    println!("state    {}", s(&st["state_hash"]));
    println!(
        "content  {} changes, {} entities, {} artifacts",
        st["operations"], st["entities"], st["artifacts"]
    );
    let filling = if st["subscription_filling_in"].as_bool() == Some(true) {
        " (filling in the history of entities subscribed to lately)"
    } else {
        ""
    };
    println!("holds    {}{filling}", s(&st["subscription"]));
    let h = &st["history"];
    println!(
        "history  snapshot of {} KB, {} operations after it, {} changes compacted",
        h["snapshot_bytes"].as_u64().unwrap_or(0) / 1024,
        h["operations_after_snapshot"],
        h["compacted"]
    );
    let peers = st["peers"].as_array().cloned().unwrap_or_default();
    println!("peers    {}", peers.len());
    for p in &peers {
        let session = &p["session"];
        if session.is_object() {
            let last_sync = match session["last_sync_ms"].as_i64() {
                Some(t) => format!("last sync {} ago", ago(now_ms().saturating_sub(t))),
                None => "no sync yet".into(),
            };
            println!(
                "  {}  online via {}  rtt {:.1} ms  {}  sent {} received {}",
                peer_label(p),
                session_path(session),
                session["rtt_ms"].as_f64().unwrap_or(0.0),
                last_sync,
                bytes(session["bytes_sent"].as_u64().unwrap_or(0)),
                bytes(session["bytes_received"].as_u64().unwrap_or(0)),
            );
        } else {
            let why = p["last_dial"]["outcome"]["kind"]
                .as_str()
                .map(|k| format!("  (last dial: {})", k.replace('_', " ")))
                .unwrap_or_default();
            println!("  {}  {}{why}", peer_label(p), seen(p));
        }
    }
    if st["this_device_revoked"].as_bool() == Some(true) {
        println!("REVOKED  another of your devices revoked this one: they refuse it; pair it again with a new identity");
    }
    let revoked = st["revoked"].as_array().cloned().unwrap_or_default();
    if !revoked.is_empty() {
        println!("revoked  {}", revoked.len());
        for r in &revoked {
            let by: Vec<String> = r["revoked_by"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b[0].as_str().map(|x| x.chars().take(9).collect()))
                .collect();
            println!(
                "  {}  changes kept up to {}, revoked by {}",
                s(&r["device_id"]),
                r["cutoff"],
                by.join(", ")
            );
        }
    }
    for d in st["deferred"].as_array().into_iter().flatten() {
        println!(
            "waiting  {} ({} items): {}",
            s(&d["work"]),
            d["items"],
            s(&d["why"])
        );
    }
    let m = &st["metrics"];
    println!(
        "metrics  {} ops applied from peers, {} sent",
        m["ops_applied"], m["ops_sent"]
    );
}

/// The doctor's exit status: 0 when a node serves and every peer syncs.
fn doctor_exit(report: &Json) -> i32 {
    let serving = report["serving"].as_bool() == Some(true);
    let all_ok = report["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|p| p["ok"].as_bool() == Some(true));
    if serving && all_ok {
        0
    } else {
        1
    }
}

/// Prints the doctor's report.
fn print_doctor(report: &Json) {
    if report["serving"].as_bool() != Some(true) {
        println!("this device: no node is running, so nothing syncs until `nomade serve` runs");
    }
    let peers = report["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        println!("no paired devices: pair one with `nomade pair show` and `nomade pair join`");
    }
    for p in &peers {
        let ok = p["ok"].as_bool() == Some(true);
        println!(
            "{}: {} ({}): {}",
            peer_label(p),
            if ok { "ok" } else { "NOT SYNCING" },
            p["cause"].as_str().unwrap_or_default().replace('_', " "),
            p["advice"].as_str().unwrap_or_default()
        );
    }
}

async fn serve(
    cli: &Cli,
    listen: SocketAddr,
    metrics_addr: Option<SocketAddr>,
) -> Result<i32, ControlError> {
    if control::node_serves(&cli.dir).await {
        return Err(ControlError::new(
            ErrorKind::Failed,
            format!(
                "a node already serves {}: stop it first (one node per directory)",
                cli.dir.display()
            ),
        ));
    }
    let node = Node::open(&cli.dir, config(cli)).map_err(|e| open_error(&cli.dir, e))?;
    let addr = node.start(listen).await.map_err(ControlError::from)?;
    node.remember_listen_addr(listen)
        .map_err(ControlError::from)?;
    // Without its control socket (a directory path too long for one, say)
    // the node still syncs; commands then cannot reach it, and say so.
    let control = match control::serve(&node, ControlLimits::default()).await {
        Ok(c) => Some(c),
        Err(NodeError::Invalid(why)) => return Err(ControlError::new(ErrorKind::Failed, why)),
        Err(e) => {
            eprintln!(
                "warning: no control socket ({e}): other commands cannot reach this node while it runs"
            );
            None
        }
    };
    node.connect_known_peers().map_err(ControlError::from)?;
    eprintln!(
        "nomade {} ({}) listening on {addr}; commands on {}",
        node.device_id(),
        node.device_name(),
        control
            .as_ref()
            .map_or("no socket".into(), |c| c.path().display().to_string())
    );
    if let Some(m) = metrics_addr {
        let bound = nomade_node::metrics_http::serve(node.clone(), m)
            .await
            .map_err(|e| ControlError::new(ErrorKind::Failed, format!("metrics on {m}: {e}")))?;
        eprintln!("metrics on http://{bound}/metrics");
    }
    wait_for_stop().await;
    eprintln!("stopping");
    node.shutdown().await;
    drop(control);
    Ok(0)
}

/// Ctrl-C or SIGTERM.
async fn wait_for_stop() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

async fn status_watch(cli: &Cli, json: bool) -> Result<i32, ControlError> {
    let Some(mut client) = ControlClient::connect(&cli.dir)
        .await
        .map_err(|e| ControlError::new(ErrorKind::Failed, e.to_string()))?
    else {
        return Err(control::no_node_at(&cli.dir));
    };
    let terminal = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let st = client.request(&Request::Status, |_| {}).await?;
        if json {
            println!("{}", serde_json::to_string(&st).unwrap_or_default());
        } else if terminal {
            // Clear the screen and draw again.
            print!("\x1b[2J\x1b[H");
            print_status(&st);
        } else {
            // Into a file or a pipe: a block only when the peers changed.
            let summary = peers_summary(&st);
            if summary != last {
                println!("{summary}");
                last = summary;
            }
        }
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
    }
}

/// Where a session goes: the peer's address, or the device relaying it.
fn session_path(session: &Json) -> String {
    match session["relayed_via"].as_str() {
        Some(relay) => format!("relay {relay}"),
        None => session["address"].as_str().unwrap_or_default().to_string(),
    }
}

/// One line per peer: what `status --watch` prints into a file when it changes.
fn peers_summary(st: &Json) -> String {
    st["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let via = if p["session"].is_object() {
                format!(" via {}", session_path(&p["session"]))
            } else {
                String::new()
            };
            format!("{}  {}{via}", peer_label(p), seen(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `nomade text edit`: the field in $EDITOR, the difference sent as splices.
async fn text_edit(cli: &Cli, doc: &str, field: &str) -> Result<i32, ControlError> {
    let show = Request::TextShow {
        doc: doc.to_string(),
        field: field.to_string(),
    };
    let base = match execute(cli, show, |_| {}).await {
        Ok(v) => v.as_str().unwrap_or_default().to_string(),
        Err(e) if e.kind == ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let file = tempfile::Builder::new()
        .prefix(&format!("nomade-{doc}-{field}-"))
        .suffix(".txt")
        .tempfile()
        .map_err(|e| ControlError::new(ErrorKind::Failed, format!("a temporary file: {e}")))?;
    std::fs::write(file.path(), &base)
        .map_err(|e| ControlError::new(ErrorKind::Failed, e.to_string()))?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    // The editor may carry arguments ("code --wait"): run it through the shell.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(file.path())
        .status()
        .map_err(|e| usage(format!("cannot run the editor {editor:?}: {e}")))?;
    if !status.success() {
        return Err(ControlError::new(
            ErrorKind::Failed,
            format!("the editor {editor:?} failed ({status}): nothing was changed"),
        ));
    }
    let new = std::fs::read_to_string(file.path())
        .map_err(|e| ControlError::new(ErrorKind::Failed, e.to_string()))?;
    let replace = Request::TextReplace {
        doc: doc.to_string(),
        field: field.to_string(),
        base,
        new: new.clone(),
    };
    match execute(cli, replace, |_| {}).await {
        Ok(v) => {
            let n = v["splices"].as_u64().unwrap_or(0);
            if n == 0 {
                println!("no change");
            } else {
                println!("{n} change(s) sent");
            }
            Ok(0)
        }
        Err(e) if e.kind == ErrorKind::Conflict => {
            let keep = file.into_temp_path().keep().ok();
            Err(ControlError::new(
                ErrorKind::Conflict,
                match keep {
                    Some(p) => format!("{}; your version is kept in {}", e.message, p.display()),
                    None => e.message,
                },
            ))
        }
        Err(e) => Err(e),
    }
}
