//! Background work and the device's state: the periodic snapshot of the
//! state, and the compaction of the history after it, wait while the
//! battery is low, say so in `status`, and run once the device charges.

use nomade_node::schedule::{Deferral, PowerState};
use nomade_node::Node;
use nomade_wire::{ConnectivityStatus, EntityType, Value};

mod common;
use common::{config, online, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_snapshot_waits_for_the_battery_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let phone = Node::open(&dir.path().join("phone"), config("phone")).expect("open");
    online(&phone).await;
    let low = PowerState {
        battery_level: Some(9),
        charging: false,
        connectivity: ConnectivityStatus::Wifi,
    };
    phone.set_power_state(low);
    wait_for(
        || !phone.core().background_allowed(),
        "the low battery to reach the store",
    )
    .await;
    // More than a snapshot's worth of operations.
    let every = nomade_node::core::SNAPSHOT_EVERY as usize;
    writes(&phone, every + 1_000);
    wait_for(
        || phone.deferred_work().iter().any(|w| w.work == "compaction"),
        "the snapshot to wait",
    )
    .await;
    let waiting = phone
        .deferred_work()
        .into_iter()
        .find(|w| w.work == "compaction")
        .expect("listed");
    assert_eq!(
        waiting.reason,
        Deferral::BatteryLow {
            level: 9,
            floor: 20
        }
    );
    assert!(waiting.items >= every, "{waiting:?}");
    assert_eq!(
        phone.core().history_status().snapshot_bytes,
        0,
        "no snapshot yet"
    );

    phone.set_power_state(PowerState {
        charging: true,
        ..low
    });
    wait_for(
        || phone.core().history_status().snapshot_bytes > 0,
        "the snapshot once charging",
    )
    .await;
    wait_for(
        || phone.deferred_work().is_empty(),
        "nothing deferred any more",
    )
    .await;
    phone.shutdown().await;
}

/// `n` field writes over 10 documents, in commits of 1,000.
fn writes(node: &Node, n: usize) {
    for start in (0..n).step_by(1_000) {
        let edits = (start..(start + 1_000).min(n))
            .map(|i| {
                let edit = nomade_crdt::LocalEdit::Set {
                    key: format!("k{}", i % 16),
                    value: Value::Int(i as i64),
                };
                (EntityType::Document, format!("doc{}", i % 10), edit)
            })
            .collect();
        node.core().edit_many(edits).expect("edits");
    }
}

/// A snapshot-first sync of a large store is background work: a phone on a
/// cellular link that joins a laptop whose history was compacted holds the
/// snapshot back (the laptop waits on flow control), says so in `status`,
/// and takes it once on Wi-Fi. Without the deferral the phone would adopt
/// the snapshot at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_first_sync_waits_while_on_a_cellular_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let laptop_dir = dir.path().join("laptop");
    {
        let laptop = Node::open(&laptop_dir, config("laptop")).expect("open");
        writes(&laptop, nomade_node::core::SNAPSHOT_EVERY as usize + 10_000);
        laptop.shutdown().await;
    }
    let laptop = Node::open(&laptop_dir, config("laptop")).expect("reopen");
    assert!(!laptop.core().compacted().is_empty(), "compacted");
    let phone_config = nomade_node::NodeConfig {
        deferred_snapshot_bytes: 1,
        ..config("phone")
    };
    let phone = Node::open(&dir.path().join("phone"), phone_config).expect("open");
    let cellular = PowerState {
        battery_level: Some(80),
        charging: false,
        connectivity: ConnectivityStatus::Cellular,
    };
    phone.set_power_state(cellular);
    let addr = online(&laptop).await;
    online(&phone).await;
    common::link(&laptop, addr, &phone).await;
    let work = format!("snapshot from {}", laptop.device_id());
    wait_for(
        || phone.deferred_work().iter().any(|w| w.work == work),
        "the snapshot to wait",
    )
    .await;
    let waiting = phone
        .deferred_work()
        .into_iter()
        .find(|w| w.work == work)
        .expect("listed");
    assert_eq!(waiting.reason, Deferral::Cellular);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(phone.metrics_snapshot().snapshots_adopted, 0);
    assert_ne!(phone.state_hash(), laptop.state_hash());
    assert!(
        phone.is_connected(&laptop.device_id()),
        "the session stays up"
    );

    phone.set_power_state(PowerState {
        connectivity: ConnectivityStatus::Wifi,
        ..cellular
    });
    wait_for(
        || phone.state_hash() == laptop.state_hash(),
        "the snapshot once on Wi-Fi",
    )
    .await;
    assert_eq!(phone.metrics_snapshot().snapshots_adopted, 1);
    assert!(phone.deferred_work().is_empty());
    phone.shutdown().await;
    laptop.shutdown().await;
}
