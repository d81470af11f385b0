//! The `nomade` program: run a device, edit and read its data, pair, move
//! files, and a self-contained demonstration (`nomade demo`).

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use nomade_artifact::ArtifactId;
use nomade_node::cli::{Cli, Command, ConvCommand, DocCommand, PairCommand, PeersCommand};
use nomade_node::progress::ProgressBar;
use nomade_node::{demo, json, Node, NodeConfig};
use nomade_transport::{DeviceId, PairingCode, RateLimits};
use nomade_wire::Value;

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
    match runtime.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// A command-line value: JSON if it parses, a plain string otherwise.
fn parse_value(s: &str) -> Value {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v) => json::from_json(&v),
        Err(_) => Value::String(s.to_string()),
    }
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn config(cli: &Cli) -> NodeConfig {
    NodeConfig {
        device_name: cli.name.clone().unwrap_or_else(|| "nomade device".into()),
        rate_limits: if cli.no_rate_limits {
            RateLimits::OFF
        } else {
            RateLimits::default()
        },
        ..NodeConfig::default()
    }
}

fn any_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([0, 0, 0, 0], 0))
}

async fn run(cli: Cli) -> Result<i32> {
    let config = config(&cli);
    let open = || {
        Node::open(&cli.dir, config.clone())
            .with_context(|| format!("opening {}", cli.dir.display()))
    };
    match &cli.command {
        Command::Init => {
            let node = open()?;
            println!("initialised {}", cli.dir.display());
            println!("device id: {}", node.device_id());
        }
        Command::Id => println!("{}", open()?.device_id()),
        Command::Pair(PairCommand::Show { listen, ttl }) => {
            let node = open()?;
            let addr = node.start(*listen).await?;
            let code = node.pairing_code_valid_for(Duration::from_secs(*ttl))?;
            println!("pairing code: {code}");
            println!("device id:    {}", node.device_id());
            println!(
                "on the other device run: nomade pair join {code} <this host>:{}",
                addr.port()
            );
            let before = node.peers()?.len();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(*ttl);
            loop {
                let peers = node.peers()?;
                if peers.len() > before {
                    if let Some(p) = peers.last() {
                        println!("paired with {}", p.device_id);
                    }
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    node.shutdown().await;
                    bail!("no device joined before the code expired");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Give the new peer's first sync a moment before exiting.
            tokio::time::sleep(Duration::from_millis(500)).await;
            node.shutdown().await;
        }
        Command::Pair(PairCommand::Join { code, addr }) => {
            let node = open()?;
            node.start(any_addr()).await?;
            let code = PairingCode::parse(code)
                .context("a pairing code is 8 letters and digits as shown")?;
            let peer = node.pair_with(*addr, &code).await?;
            node.wait_initial_sync(&peer, Duration::from_secs(30))
                .await?;
            println!("paired with {peer} and synced");
            node.shutdown().await;
        }
        Command::Peers(PeersCommand::List) => {
            let node = open()?;
            let peers = node.peers()?;
            if peers.is_empty() {
                println!("no paired devices");
            }
            for p in peers {
                println!(
                    "{}  {}  {}",
                    p.device_id,
                    p.name.as_deref().unwrap_or("-"),
                    p.addresses.join(",")
                );
            }
        }
        Command::Peers(PeersCommand::Add { device_id, addr }) => {
            let node = open()?;
            let id: DeviceId = device_id.parse()?;
            let addrs: Vec<_> = addr.iter().copied().collect();
            node.add_peer(id, "", &addrs)?;
            println!("paired with {id}");
        }
        Command::Peers(PeersCommand::Remove { device_id }) => {
            let node = open()?;
            let id: DeviceId = device_id.parse()?;
            if !node.remove_peer(&id)? {
                bail!("{id} is not paired");
            }
            println!("unpaired {id}");
        }
        Command::Serve {
            listen,
            metrics_addr,
        } => {
            let node = open()?;
            let addr = node.start(*listen).await?;
            node.connect_known_peers()?;
            eprintln!(
                "nomade {} ({}) listening on {addr}",
                node.device_id(),
                node.device_name()
            );
            if let Some(m) = metrics_addr {
                let bound = nomade_node::metrics_http::serve(node.clone(), *m).await?;
                eprintln!("metrics on http://{bound}/metrics");
            }
            tokio::signal::ctrl_c().await?;
            node.shutdown().await;
        }
        Command::Doc(cmd) => {
            let node = open()?;
            match cmd {
                DocCommand::Set { doc, key, value } => node.set(doc, key, parse_value(value))?,
                DocCommand::Delete { doc, key } => node.delete(doc, key)?,
                DocCommand::Get { doc, key } => {
                    match node.document(doc).and_then(|d| d.get(key).cloned()) {
                        Some(v) => print_json(&json::to_json(&v))?,
                        None => match node.text(doc, key) {
                            Some(t) => print_json(&serde_json::Value::String(t))?,
                            None => bail!("{doc} has no field {key}"),
                        },
                    }
                }
                DocCommand::Show { doc } => {
                    let mut map: serde_json::Map<String, serde_json::Value> = node
                        .document(doc)
                        .unwrap_or_default()
                        .iter()
                        .map(|(k, v)| (k.clone(), json::to_json(v)))
                        .collect();
                    for field in node.core().text_fields(doc) {
                        let text = node.text(doc, &field).unwrap_or_default();
                        map.insert(field, serde_json::Value::String(text));
                    }
                    print_json(&serde_json::Value::Object(map))?;
                }
            }
        }
        Command::Conv(cmd) => {
            let node = open()?;
            match cmd {
                ConvCommand::Append { conv, value } => {
                    node.conv_append(conv, parse_value(value))?
                }
                ConvCommand::Insert { conv, index, value } => {
                    node.conv_insert(conv, *index, parse_value(value))?
                }
                ConvCommand::Remove { conv, index } => node.conv_remove(conv, *index)?,
                ConvCommand::Show { conv } => {
                    for (i, item) in node
                        .conversation(conv)
                        .unwrap_or_default()
                        .iter()
                        .enumerate()
                    {
                        println!("{i}: {}", json::to_json(item));
                    }
                }
            }
        }
        Command::Put { file, mime } => {
            let node = open()?;
            let id = node.put_artifact(file, mime.as_deref())?;
            println!("{}", id.to_hex());
            println!("reference it in a document with: {}", id.to_reference());
        }
        Command::Get {
            id,
            out,
            from,
            peer,
        } => {
            let node = open()?;
            let id = ArtifactId::from_hex(id)
                .or_else(|| ArtifactId::from_reference(id))
                .context("an artifact id is 64 hex characters")?;
            if !node.artifacts().has(&id) {
                let Some(addr) = from else {
                    bail!("artifact {} is not held here; pass --from ADDR to fetch it from a paired device", id.to_hex());
                };
                let peer_id: DeviceId = match peer {
                    Some(p) => p.parse()?,
                    None => node
                        .peers()?
                        .into_iter()
                        .find(|p| p.addresses.iter().any(|a| a == &addr.to_string()))
                        .context("no paired device has that address: pass --peer DEVICE_ID")?
                        .device_id
                        .parse()?,
                };
                node.start(any_addr()).await?;
                node.connect(*addr, peer_id).await?;
                let mut bar: Option<ProgressBar> = None;
                node.fetch_artifact(&peer_id, id, |p| {
                    bar.get_or_insert_with(|| ProgressBar::new(p.bytes_total, true))
                        .update(p.bytes_done)
                })
                .await?;
                node.shutdown().await;
            }
            node.export_artifact(&id, out)?;
            println!("wrote {}", out.display());
        }
        Command::Status { json } => {
            let node = open()?;
            let status = node.status();
            if *json {
                print_json(&serde_json::to_value(&status)?)?;
            } else {
                println!("device   {} ({})", status.device_id, status.device_name);
                println!("data     {}", status.dir.display());
                println!("state    {}", status.state_hash);
                println!(
                    "content  {} operations, {} entities, {} artifacts",
                    status.operations, status.entities, status.artifacts
                );
                println!("peers    {}", status.peers.len());
                for p in &status.peers {
                    println!(
                        "  {}  {}  {}",
                        p.device_id,
                        p.name.as_deref().unwrap_or("-"),
                        p.addresses.join(",")
                    );
                }
                let m = &status.metrics;
                println!(
                    "metrics  {} ops applied from peers, {} sent",
                    m.ops_applied, m.ops_sent
                );
            }
        }
        Command::Demo {
            json,
            artifact_mib,
            rate_limits,
        } => {
            let report = demo::run(artifact_mib << 20, !*json, *rate_limits).await?;
            if *json {
                print_json(&serde_json::to_value(&report)?)?;
            } else {
                print!("{report}");
            }
            let ok = report.converged && report.restart_recovered && report.artifact.verified;
            return Ok(if ok { 0 } else { 1 });
        }
    }
    Ok(0)
}
