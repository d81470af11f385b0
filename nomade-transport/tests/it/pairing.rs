use std::time::Duration;

use nomade_transport::{PairingCode, TransportError, TransportEvent};

use crate::{node, wait_event};

#[tokio::test]
async fn right_code_pairs_both_sides() {
    let (joiner, shower) = (node(), node());
    let code = shower.start_pairing();
    let mut events = shower.events();
    let typed = PairingCode::parse(&code.to_string().to_uppercase()).expect("typed code");
    let conn = joiner
        .pair_with(shower.local_addr().expect("addr"), &typed)
        .await
        .expect("pairs");
    assert_eq!(conn.peer(), shower.device_id());
    assert!(conn.newly_paired());
    let accepted = shower.accept().await.expect("accept");
    assert_eq!(accepted.peer(), joiner.device_id());
    assert!(accepted.newly_paired());
    assert!(joiner.paired().contains(&shower.device_id()));
    assert!(shower.paired().contains(&joiner.device_id()));
    let ev = wait_event(&mut events, |e| matches!(e, TransportEvent::Paired { .. })).await;
    assert_eq!(
        ev,
        TransportEvent::Paired {
            peer: joiner.device_id(),
            // The joiner dials from the socket it listens on.
            addr: joiner.local_addr().expect("addr"),
        }
    );
    // The pairing connection carries frames like any other.
    let mut s = conn
        .open_uni(nomade_wire::StreamRole::Presence)
        .await
        .expect("open");
    s.send(&crate::beat(1)).await.expect("send");
    let mut inc = accepted.accept_stream().await.expect("stream");
    assert_eq!(inc.recv.recv().await.expect("recv"), Some(crate::beat(1)));
    // And the pin holds for ordinary connections, without the code.
    joiner
        .connect(shower.local_addr().expect("addr"), Some(shower.device_id()))
        .await
        .expect("normal connect after pairing");
    // Single use: a third device cannot use the same code.
    let late = node();
    let err = late
        .pair_with(shower.local_addr().expect("addr"), &code)
        .await
        .expect_err("window used");
    assert!(matches!(err, TransportError::PairingRefused(_)), "{err:?}");
    assert!(!shower.paired().contains(&late.device_id()));
}

#[tokio::test]
async fn wrong_code_is_refused_and_nothing_is_pinned() {
    let (joiner, shower) = (node(), node());
    let code = shower.start_pairing();
    let wrong = if code.as_str() == "aaaaaaaa" {
        "bbbbbbbb"
    } else {
        "aaaaaaaa"
    };
    let wrong = PairingCode::parse(wrong).expect("code");
    let mut events = shower.events();
    let err = joiner
        .pair_with(shower.local_addr().expect("addr"), &wrong)
        .await
        .expect_err("wrong code");
    assert!(matches!(err, TransportError::PairingRefused(_)), "{err:?}");
    let ev = wait_event(&mut events, |e| {
        matches!(e, TransportEvent::PairingFailed { .. })
    })
    .await;
    if let TransportEvent::PairingFailed { peer, reason } = ev {
        assert_eq!(peer, joiner.device_id());
        assert!(reason.contains("wrong pairing code"), "{reason}");
    }
    assert!(shower.paired().list().is_empty());
    assert!(joiner.paired().list().is_empty());
    // The attempt used the window: even the right code is now refused.
    let err = joiner
        .pair_with(shower.local_addr().expect("addr"), &code)
        .await
        .expect_err("window consumed");
    assert!(matches!(err, TransportError::PairingRefused(_)), "{err:?}");
    assert!(shower.paired().list().is_empty());
}

#[tokio::test]
async fn expired_code_is_refused_and_nothing_is_pinned() {
    let (joiner, shower) = (node(), node());
    let code = shower.start_pairing_for(Duration::from_millis(1));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut events = shower.events();
    let err = joiner
        .pair_with(shower.local_addr().expect("addr"), &code)
        .await
        .expect_err("expired");
    assert!(matches!(err, TransportError::PairingRefused(_)), "{err:?}");
    wait_event(&mut events, |e| {
        matches!(e, TransportEvent::HandshakeRejected { .. })
    })
    .await;
    assert!(shower.paired().list().is_empty());
    assert!(joiner.paired().list().is_empty());
}

#[tokio::test]
async fn no_pairing_window_means_unknown_devices_are_refused() {
    let (joiner, shower) = (node(), node());
    let code = PairingCode::parse("abcdefgh").expect("code");
    let err = joiner
        .pair_with(shower.local_addr().expect("addr"), &code)
        .await
        .expect_err("no window");
    assert!(matches!(err, TransportError::PairingRefused(_)), "{err:?}");
    assert!(shower.paired().list().is_empty());
}
