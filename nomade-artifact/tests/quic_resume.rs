//! An artifact transfer over real QUIC (quinn on loopback), interrupted by
//! closing the connection mid-transfer and resumed on a new connection from the
//! last verified chunk.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::BytesMut;
use nomade_artifact::{ArtifactStore, DeviceKey, Receiver, ReceiverEvent, Sender, SenderEvent};
use nomade_wire::{Decoder, Envelope, Message, MessageId, StreamHeader, StreamRole};
use quinn::{RecvStream, SendStream};
use rand::RngCore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;

async fn send_msg(send: &mut SendStream, msg: Message) -> anyhow::Result<()> {
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let mut buf = BytesMut::new();
    Envelope::new(MessageId::from(id), 0, msg).encode_into(&mut buf)?;
    send.write_all(&buf).await?;
    Ok(())
}

/// Reads the next whole message; `None` at a clean end of stream.
async fn read_msg(
    recv: &mut RecvStream,
    buf: &mut BytesMut,
    dec: &mut Decoder,
) -> anyhow::Result<Option<Message>> {
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        if let Some(env) = dec.decode(buf)? {
            return Ok(Some(env.message));
        }
        match recv.read(&mut tmp).await? {
            Some(n) => buf.extend_from_slice(&tmp[..n]),
            None if buf.is_empty() => return Ok(None),
            None => return Err(dec.truncation(buf).into()),
        }
    }
}

/// The holder: one Sender per artifact stream; reports each stream's outcome.
async fn serve_connection(
    conn: quinn::Connection,
    store: ArtifactStore,
    events: mpsc::UnboundedSender<anyhow::Result<SenderEvent>>,
) {
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    let result = async {
        let mut header = [0u8; 2];
        recv.read_exact(&mut header).await?;
        anyhow::ensure!(StreamHeader::parse(header)?.role == StreamRole::Artifact);
        let mut sender = Sender::new(store, true);
        let (mut buf, mut dec) = (BytesMut::new(), Decoder::new());
        let mut last = None;
        loop {
            // Pull-based: one chunk is read from disk per write the stream accepts.
            while let Some(m) = sender.next_message()? {
                send_msg(&mut send, m).await?;
            }
            if sender.is_finished() {
                send.finish()?;
                return last.context("finished without an event");
            }
            let msg = read_msg(&mut recv, &mut buf, &mut dec)
                .await?
                .context("stream ended early")?;
            last = Some(sender.handle_message(msg)?);
        }
    }
    .await;
    let _ = events.send(result);
    // Let the fetcher read everything and close the connection itself.
    conn.closed().await;
}

/// The fetcher: runs one Receiver over a new stream; with `cut_after`, closes
/// the whole connection after that many verified chunks.
async fn fetch(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    store: &ArtifactStore,
    id: nomade_artifact::ArtifactId,
    cut_after: Option<u32>,
) -> anyhow::Result<Receiver> {
    let conn = endpoint.connect(addr, "localhost")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&StreamHeader::new(StreamRole::Artifact).to_bytes())
        .await?;
    let mut receiver = Receiver::new(store.clone(), id, 100)?;
    let (mut buf, mut dec) = (BytesMut::new(), Decoder::new());
    loop {
        while let Some(m) = receiver.next_message()? {
            send_msg(&mut send, m).await?;
        }
        if receiver.is_finished() {
            send.finish()?;
            // Wait for the holder to finish its side, then close.
            while read_msg(&mut recv, &mut buf, &mut dec).await?.is_some() {}
            conn.close(0u32.into(), b"done");
            return Ok(receiver);
        }
        let msg = read_msg(&mut recv, &mut buf, &mut dec)
            .await?
            .context("holder closed the stream")?;
        if let ReceiverEvent::Progress(p) = receiver.handle_message(msg)? {
            if cut_after == Some(p.chunks_done) {
                conn.close(1u32.into(), b"simulated drop");
                return Ok(receiver);
            }
        }
    }
}

fn write_random(path: &std::path::Path, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::OsRng.fill_bytes(&mut data);
    std::fs::write(path, &data).expect("write source");
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_quic_transfer_resumes_from_last_verified_chunk() -> anyhow::Result<()> {
    let dirs = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let holder = ArtifactStore::open(dirs.0.path(), DeviceKey::generate(), None)?;
    let fetcher = ArtifactStore::open(dirs.1.path(), DeviceKey::generate(), None)?;
    let src = dirs.2.path().join("source.bin");
    let data = write_random(&src, 3 * 1024 * 1024 + 777); // 49 chunks
    let id = holder.put_file(&src, Some("video/mp4"), &[fetcher.public_key()])?;

    // Loopback QUIC with a self-signed certificate the client trusts.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert_der: CertificateDer<'static> = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let server_cfg = quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key)?;
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
    let addr = server.local_addr()?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der)?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(quinn::ClientConfig::with_root_certificates(Arc::new(
        roots,
    ))?);

    let (tx, mut rx) = mpsc::unbounded_channel();
    let accept_store = holder.clone();
    let acceptor = tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let (store, tx) = (accept_store.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    serve_connection(conn, store, tx).await;
                }
            });
        }
    });

    // First connection: dropped after 17 verified chunks.
    let first = fetch(&client, addr, &fetcher, id, Some(17)).await?;
    assert_eq!(first.progress().chunks_done, 17);
    assert!(!first.is_complete());
    drop(first);
    let holder_side = rx.recv().await.context("holder outcome")?;
    assert!(holder_side.is_err(), "the holder saw the connection drop");
    assert!(!fetcher.has(&id));
    assert!(fetcher.has_partial(&id));

    // Second connection: resumes from chunk 17.
    let probe = Receiver::new(fetcher.clone(), id, 100)?;
    assert_eq!(probe.request().resume_from, Some(17));
    drop(probe);
    let second = fetch(&client, addr, &fetcher, id, None).await?;
    assert!(second.is_complete());
    assert_eq!(second.progress().bytes_at_start, 17 * 65_536);
    assert_eq!(second.progress().bytes_done, data.len() as u64);
    match rx.recv().await.context("holder outcome")? {
        Ok(SenderEvent::Completed { id: done }) => assert_eq!(done, id),
        other => panic!("holder did not complete: {other:?}"),
    }

    let out = dirs.2.path().join("fetched.bin");
    fetcher.export(&id, &out)?;
    assert_eq!(std::fs::read(&out)?, data);
    assert!(!fetcher.has_partial(&id));

    client.wait_idle().await;
    acceptor.abort();
    Ok(())
}
