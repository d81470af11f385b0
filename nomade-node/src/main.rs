//! The `nomade` program (being built: the node's sync flows come first).

fn main() {
    eprintln!("nomade: the command-line program is not built yet");
    std::process::exit(2);
}
