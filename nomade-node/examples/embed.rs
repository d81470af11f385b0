//! Embedding Nomade in an app: two devices in one process, on loopback.
//!
//! `cargo run -p nomade-node --example embed`
//!
//! Open a node on a directory, edit documents and conversations, subscribe
//! to changes applied from peers, pair, put and get an artifact, list peers.

use std::time::Duration;

use nomade_node::{Node, NodeConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let config = |name: &str| NodeConfig {
        device_name: name.into(),
        ..NodeConfig::default()
    };

    // Open (or create) a device on a directory; edits are durable on return.
    let laptop = Node::open(&tmp.path().join("laptop"), config("laptop"))?;
    let phone = Node::open(&tmp.path().join("phone"), config("phone"))?;
    laptop.set("recipe", "title", "Pancakes")?;
    laptop.splice_text("recipe", "steps", 0, 0, "Mix flour and eggs.")?;
    phone.conv_append("family-chat", "who brings the syrup?")?;

    // Files travel as artifacts, referenced from documents.
    let photo = tmp.path().join("pancakes.jpg");
    std::fs::write(&photo, b"not really a jpeg")?;
    let id = laptop.put_artifact(&photo, Some("image/jpeg"))?;
    laptop.set("recipe", "photo", id.to_reference())?;

    // Watch what peers change.
    let mut changes = phone.subscribe();

    // Go online and pair with a short code (shown on one device, typed on the other).
    let laptop_addr = laptop.start("127.0.0.1:0".parse()?).await?;
    phone.start("127.0.0.1:0".parse()?).await?;
    let code = laptop.pairing_code()?;
    println!("laptop shows pairing code {code}");
    let peer = phone.pair_with(laptop_addr, &code).await?;
    println!("phone paired with {peer}");
    phone
        .wait_initial_sync(&peer, Duration::from_secs(10))
        .await?;

    let change = tokio::time::timeout(Duration::from_secs(5), changes.recv()).await??;
    println!(
        "phone saw a change to {} from {}",
        change.entity_id, change.actor_id
    );
    println!("phone reads the recipe: {:?}", phone.document("recipe"));
    println!("phone reads the steps: {:?}", phone.text("recipe", "steps"));

    // The referenced photo follows the sync; fetch it explicitly if needed.
    if !phone.artifacts().has(&id) {
        phone
            .fetch_artifact(&peer, id, |p| {
                println!("  {} / {} bytes", p.bytes_done, p.bytes_total)
            })
            .await?;
    }
    let copy = tmp.path().join("copy.jpg");
    phone.export_artifact(&id, &copy)?;
    println!(
        "photo arrived intact: {}",
        std::fs::read(&copy)? == std::fs::read(&photo)?
    );
    println!(
        "phone's peers: {:?}",
        phone
            .peers()?
            .iter()
            .map(|p| &p.device_id)
            .collect::<Vec<_>>()
    );

    laptop.shutdown().await;
    phone.shutdown().await;
    Ok(())
}
