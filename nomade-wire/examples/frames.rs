//! Encodes every sample message, feeds the frames to the streaming decoder in
//! awkward 7-byte pieces, and prints what came out: a tour of the wire format.
//!
//! `cargo run -p nomade-wire --example frames`

use bytes::BytesMut;
use nomade_wire::{samples, Decoder, Envelope, HEADER_LEN};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let all = samples::all();
    let mut stream = BytesMut::new();
    for s in &all {
        stream.extend_from_slice(&samples::frame(s)?);
    }
    println!(
        "{} frames, {} bytes in one stream\n",
        all.len(),
        stream.len()
    );
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut decoded: Vec<Envelope> = Vec::new();
    for piece in stream.chunks(7) {
        buf.extend_from_slice(piece);
        while let Some(env) = decoder.decode(&mut buf)? {
            decoded.push(env);
        }
    }
    println!(
        "{:<28} {:>6} {:>8}  first payload bytes",
        "sample", "type", "frame"
    );
    for (s, env) in all.iter().zip(&decoded) {
        let frame = env.to_bytes()?;
        let payload = &frame[HEADER_LEN..frame.len().min(HEADER_LEN + 12)];
        println!(
            "{:<28} {:#06x} {:>7}B  {}{}",
            s.name,
            env.message.message_type().code(),
            frame.len(),
            payload
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            if env == &s.envelope { "" } else { "  MISMATCH" }
        );
    }
    let same =
        decoded.len() == all.len() && all.iter().zip(&decoded).all(|(s, e)| &s.envelope == e);
    println!("\nall frames decoded back to the messages sent: {same}");
    if !same {
        std::process::exit(1);
    }
    Ok(())
}
