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
    for start in (0..every + 1_000).step_by(1_000) {
        let edits = (start..start + 1_000)
            .map(|i| {
                let edit = nomade_crdt::LocalEdit::Set {
                    key: format!("k{}", i % 16),
                    value: Value::Int(i as i64),
                };
                (EntityType::Document, format!("doc{}", i % 10), edit)
            })
            .collect();
        phone.core().edit_many(edits).expect("edits");
    }
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
