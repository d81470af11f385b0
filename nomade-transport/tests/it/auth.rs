use std::sync::Arc;
use std::time::Duration;

use nomade_transport::tls::{PeerServerVerifier, ServerAcceptance, ALPN, SERVER_NAME};
use nomade_transport::{DeviceIdentity, PairedSet, TransportError, TransportEvent};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{local, node, pair, wait_event};

#[tokio::test]
async fn paired_devices_connect_both_ways() {
    let (a, b) = pair();
    let conn = a
        .connect(b.local_addr().expect("addr"), Some(b.device_id()))
        .await
        .expect("connect");
    assert_eq!(conn.peer(), b.device_id());
    let accepted = b.accept().await.expect("accept");
    assert_eq!(accepted.peer(), a.device_id());
    assert!(!accepted.newly_paired());
}

/// BAD_INPUTS #1: an unpaired device with a valid certificate fails the
/// handshake on both sides, and the refusal is counted.
#[tokio::test]
async fn unpaired_client_is_refused_on_both_sides() {
    let (a, b) = (node(), node());
    a.pair(b.device_id()); // a trusts b, b does not know a
    let mut events = b.events();
    let err = a
        .connect(b.local_addr().expect("addr"), None)
        .await
        .expect_err("refused");
    assert!(matches!(err, TransportError::NotPaired), "{err:?}");
    let ev = wait_event(&mut events, |e| {
        matches!(e, TransportEvent::HandshakeRejected { .. })
    })
    .await;
    if let TransportEvent::HandshakeRejected { reason, .. } = ev {
        assert!(!reason.is_empty());
    }
    assert_eq!(b.rejected_input().handshakes, 1);
    assert_eq!(b.rejected_input().total(), 1);
}

/// BAD_INPUTS #1, the other way round: a client refuses a server it never paired with.
#[tokio::test]
async fn unpaired_server_is_refused_on_both_sides() {
    let (a, b) = (node(), node());
    b.pair(a.device_id()); // b would accept a, but a does not know b
    let mut events = b.events();
    let err = a
        .connect(b.local_addr().expect("addr"), None)
        .await
        .expect_err("refused");
    assert!(
        matches!(err, TransportError::PeerNotAccepted { .. }),
        "{err:?}"
    );
    wait_event(&mut events, |e| {
        matches!(e, TransportEvent::HandshakeRejected { .. })
    })
    .await;
}

#[tokio::test]
async fn wrong_expected_device_is_refused() {
    let (a, b) = pair();
    let c = node();
    a.pair(c.device_id());
    let err = a
        .connect(b.local_addr().expect("addr"), Some(c.device_id()))
        .await
        .expect_err("b is not c");
    assert!(
        matches!(err, TransportError::PeerNotAccepted { .. }),
        "{err:?}"
    );
}

/// Presents a fixed certificate with an arbitrary key.
#[derive(Debug)]
struct Impostor(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Impostor {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// BAD_INPUTS #2: a paired device's public certificate presented with another
/// key fails, because the handshake signature is verified.
#[tokio::test]
async fn copied_certificate_without_its_key_is_refused() {
    let (a, b) = pair();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let attacker_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let signing = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            attacker_key.serialize_der(),
        )))
        .expect("load");
    let stolen: CertificateDer<'static> = a.identity_cert().clone();
    let certified = Arc::new(rustls::sign::CertifiedKey::new(vec![stolen], signing));
    let verifier = Arc::new(PeerServerVerifier::new(
        PairedSet::new(),
        ServerAcceptance::Pairing,
    ));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(Impostor(certified)));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic");
    let mut endpoint = quinn::Endpoint::client(local()).expect("client");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let mut events = b.events();
    let conn = endpoint
        .connect(b.local_addr().expect("addr"), SERVER_NAME)
        .expect("start")
        .await;
    // The client may believe the handshake finished; the server must refuse it.
    let reason = match conn {
        Err(e) => e,
        Ok(c) => tokio::time::timeout(Duration::from_secs(5), c.closed())
            .await
            .expect("closed in time"),
    };
    assert!(
        matches!(reason, quinn::ConnectionError::ConnectionClosed(_)),
        "{reason:?}"
    );
    let ev = wait_event(&mut events, |e| {
        matches!(e, TransportEvent::HandshakeRejected { .. })
    })
    .await;
    if let TransportEvent::HandshakeRejected { reason, .. } = ev {
        assert!(reason.to_lowercase().contains("signature"), "{reason}");
    }
    // And the real device still gets in.
    a.connect(b.local_addr().expect("addr"), Some(b.device_id()))
        .await
        .expect("genuine device connects");
}

/// BAD_INPUTS #5: unpaired while connected, a device is cut off within a bounded time and cannot reconnect.
#[tokio::test]
async fn unpairing_closes_live_connections_and_blocks_reconnects() {
    let (a, b) = pair();
    let conn = a
        .connect(b.local_addr().expect("addr"), None)
        .await
        .expect("connect");
    let _accepted = b.accept().await.expect("accept");
    assert_eq!(b.unpair(&a.device_id()), 1);
    let why = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed in time");
    assert!(matches!(why, TransportError::NotPaired), "{why:?}");
    let err = a
        .connect(b.local_addr().expect("addr"), None)
        .await
        .expect_err("no longer paired");
    assert!(matches!(err, TransportError::NotPaired), "{err:?}");
    // Pairing again, without restart, lets it back in.
    b.pair(a.device_id());
    a.connect(b.local_addr().expect("addr"), None)
        .await
        .expect("re-paired");
}

#[tokio::test]
async fn identity_on_disk_survives_restart_and_stays_paired() {
    let dir = tempfile::tempdir().expect("tmp");
    let b = node();
    let a1 = nomade_transport::Transport::bind(
        DeviceIdentity::load_or_create(dir.path()).expect("id"),
        PairedSet::new(),
        local(),
        crate::config(),
    )
    .expect("bind");
    a1.pair(b.device_id());
    b.pair(a1.device_id());
    let id = a1.device_id();
    drop(a1);
    let a2 = nomade_transport::Transport::bind(
        DeviceIdentity::load_or_create(dir.path()).expect("id"),
        PairedSet::new(),
        local(),
        crate::config(),
    )
    .expect("bind");
    assert_eq!(a2.device_id(), id);
    a2.pair(b.device_id());
    a2.connect(b.local_addr().expect("addr"), Some(b.device_id()))
        .await
        .expect("same identity after restart");
}

/// BAD_INPUTS #3: a client without a certificate is refused.
#[tokio::test]
async fn client_without_certificate_is_refused() {
    let b = node();
    let verifier = Arc::new(PeerServerVerifier::new(
        PairedSet::new(),
        ServerAcceptance::Pairing,
    ));
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic");
    let mut endpoint = quinn::Endpoint::client(local()).expect("client");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let mut events = b.events();
    let conn = endpoint
        .connect(b.local_addr().expect("addr"), SERVER_NAME)
        .expect("start")
        .await;
    let reason = match conn {
        Err(e) => e,
        Ok(c) => tokio::time::timeout(Duration::from_secs(5), c.closed())
            .await
            .expect("closed in time"),
    };
    assert!(
        matches!(reason, quinn::ConnectionError::ConnectionClosed(_)),
        "{reason:?}"
    );
    wait_event(&mut events, |e| {
        matches!(e, TransportEvent::HandshakeRejected { .. })
    })
    .await;
}
