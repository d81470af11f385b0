//! Bounded runs of the deterministic simulator (`cargo xtask sim` runs more).

use nomade_node::sim::{run, SimConfig, Topology};

/// A full mesh of 8: everything converges, each operation applied once on
/// each device, and forwarding keeps traffic at the minimum (7x before):
/// every device pulls from every author, and says so.
#[test]
fn a_mesh_of_eight_converges_at_about_one_copy_per_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = SimConfig {
        devices: 8,
        ..SimConfig::default()
    };
    let r = run(&config, dir.path()).expect("converges");
    assert!(r.traffic_ratio() <= 1.05, "{r:?}");
}

/// A full mesh of 24, the devices editing while they connect: nothing is
/// relayed (1.10x at 32 devices before `HAVE` listed the devices pulled
/// from directly), and what `HAVE`s cost stays a small part of the bytes.
#[test]
fn a_mesh_of_twenty_four_sends_each_operation_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = SimConfig {
        devices: 24,
        edits_per_device: 10,
        ..SimConfig::default()
    };
    let r = run(&config, dir.path()).expect("converges");
    assert!(r.traffic_ratio() <= 1.01, "{r:?}");
    let have = r.bytes_by_type.get("HAVE").copied().unwrap_or(0);
    assert!(have * 4 < r.bytes, "HAVE {have} of {} bytes", r.bytes);
}

/// A line of 8: nothing echoed.
#[test]
fn a_line_of_eight_sends_each_operation_once_per_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = SimConfig {
        devices: 8,
        topology: Topology::Line,
        ..SimConfig::default()
    };
    let r = run(&config, dir.path()).expect("converges");
    assert!(r.traffic_ratio() <= 1.05, "{r:?}");
}

/// Loss, a partition and a crash-restart, over several seeds: all converge,
/// exactly once, nothing acknowledged lost.
#[test]
fn faults_converge_exactly_once() {
    for seed in 1..=4 {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SimConfig {
            loss: 0.1,
            partition: true,
            crash: true,
            seed,
            ..SimConfig::default()
        };
        run(&config, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// A run depends on its seed alone (the devices' clocks are the simulated
/// one): a failing seed replays as it failed. The same seed twice, with
/// loss, a partition and a crash, gives the same figures to the byte.
#[test]
fn a_seed_replays_exactly() {
    let config = SimConfig {
        loss: 0.1,
        partition: true,
        crash: true,
        seed: 3,
        ..SimConfig::default()
    };
    let once = || {
        let dir = tempfile::tempdir().expect("tempdir");
        run(&config, dir.path()).unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(once(), once());
}

/// Selective sync under faults: device 0 holds part of the documents, and
/// more halfway through (filled in then), in a mesh and in a line, with
/// loss, a partition and a crash-restart, over several seeds. It ends equal
/// to the others on its documents, counting every operation; the others
/// converge exactly once as ever.
#[test]
fn a_device_holding_part_of_the_documents_converges_on_them_under_faults() {
    use Topology::{FullMesh, Line};
    // Seeds 2 to 8 each failed before one of two fixes: a run past the
    // refill frontier applied at once, ending the refill never; a skip
    // waiting in the causal buffer when the subscription grew, taking the
    // place of the operation it stood for.
    let runs = [
        (1, FullMesh, 5),
        (2, FullMesh, 5),
        (4, Line, 5),
        (7, Line, 6),
        (5, FullMesh, 8),
        (8, Line, 8),
    ];
    for (seed, topology, devices) in runs {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SimConfig {
            devices,
            topology,
            loss: 0.1,
            partition: true,
            crash: true,
            partial: true,
            seed,
            ..SimConfig::default()
        };
        run(&config, dir.path()).unwrap_or_else(|e| panic!("{topology:?}: {e}"));
    }
}
