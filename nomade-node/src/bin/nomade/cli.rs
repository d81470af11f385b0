//! The `nomade` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use nomade_node::schedule::Window;

/// A window of the day, `HH:MM-HH:MM`.
fn parse_window(s: &str) -> Result<Window, String> {
    Window::parse(s).ok_or_else(|| {
        format!("{s:?} is not a window of the day: HH:MM-HH:MM, for example 22:00-06:30")
    })
}

/// The exit statuses, in `nomade --help`.
pub const EXIT_STATUSES: &str = "\
Exit status: 0 success; 1 failure; 2 usage error (bad arguments or values);
3 a peer is unreachable; 4 a peer refused this device (not paired, another
protocol version, a wrong pairing code).

While `nomade serve` runs on a directory, every other command on that
directory goes through it (its control socket, control.sock), with the same
output as without it.";

/// Nomade: keep documents, conversations and files in sync across your devices, peer to peer.
#[derive(Debug, Parser)]
#[command(name = "nomade", version, about, long_about = None, after_help = EXIT_STATUSES)]
pub struct Cli {
    /// The device's data directory (identity, database, artifacts).
    #[arg(long, global = true, env = "NOMADE_DIR", default_value = ".nomade")]
    pub dir: PathBuf,
    /// Log filter (e.g. `info`, `nomade_node=debug`; default: `warn` for
    /// `serve`, `error` for other commands); RUST_LOG takes precedence.
    #[arg(long, global = true)]
    pub log: Option<String>,
    /// Names this device (kept in its data directory, shown to peers); see also `nomade name`.
    #[arg(long, global = true, env = "NOMADE_NAME")]
    pub name: Option<String>,
    /// Longest a connection attempt to a peer may take, in seconds.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Switch the application rate limits off (default: on, per the protocol).
    #[arg(long, global = true)]
    pub no_rate_limits: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the data directory: a device identity and an empty database.
    Init,
    /// Print this device's id (compare it by eye when pairing out of band).
    Id,
    /// Print this device's name, or change it.
    Name {
        /// The new name.
        new: Option<String>,
    },
    /// Pair with another device using a short-lived code.
    #[command(subcommand)]
    Pair(PairCommand),
    /// List, add or remove paired devices.
    #[command(subcommand)]
    Peers(PeersCommand),
    /// Run the node: accept paired devices, dial known ones, sync continuously.
    Serve {
        /// The UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:4433")]
        listen: SocketAddr,
        /// Serve Prometheus metrics over HTTP on this address.
        #[arg(long)]
        metrics_addr: Option<SocketAddr>,
        /// Which artifact contents to fetch after a sync: `all` (referenced
        /// ones, within --fetch-max-size and --fetch-types) or `metadata`
        /// (none: each is known by its size and type, fetched by `get`).
        #[arg(long, default_value = "all", value_parser = ["all", "metadata"])]
        fetch: String,
        /// Fetch by itself only artifacts up to this many bytes.
        #[arg(long)]
        fetch_max_size: Option<u64>,
        /// Fetch by itself only these MIME types, comma-separated
        /// (`image/jpeg`, or `image/` for a family).
        #[arg(long, value_delimiter = ',')]
        fetch_types: Vec<String>,
        /// Background work (prefetching) waits while the battery is below
        /// this percentage and not charging (0: never waits for it).
        #[arg(long, default_value_t = 20)]
        battery_floor: u8,
        /// Background work goes on a cellular link too (default: it waits).
        #[arg(long)]
        background_on_cellular: bool,
        /// Background work only in these stretches of the day, comma-separated
        /// `HH:MM-HH:MM` (UTC, or shifted by --utc-offset-minutes).
        #[arg(long, value_delimiter = ',', value_parser = parse_window)]
        background_windows: Vec<Window>,
        /// This device's offset from UTC in minutes, for --background-windows.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        utc_offset_minutes: i16,
        /// Do not announce this device or look for paired ones on the local
        /// network (mDNS); they are then dialed only at known addresses.
        #[arg(long)]
        no_discovery: bool,
        /// Do not relay connections between other paired devices (they
        /// ask this device when they cannot reach each other directly).
        /// This device still connects through others when it must.
        #[arg(long)]
        no_relay: bool,
    },
    /// List the artifacts this device knows of (held, partly fetched,
    /// remote only; pinned), or pin, unpin or evict one.
    Artifacts {
        /// What to do (default: list).
        #[command(subcommand)]
        action: Option<ArtifactsCommand>,
    },
    /// Edit or read documents.
    #[command(subcommand)]
    Doc(DocCommand),
    /// Edit or read conversations.
    #[command(subcommand)]
    Conv(ConvCommand),
    /// Edit or read collaborative text fields of documents.
    #[command(subcommand)]
    Text(TextCommand),
    /// Set this device's presence, or show the peers'.
    #[command(subcommand)]
    Presence(PresenceCommand),
    /// Tell a running node the device's power and network state (background
    /// work waits while the battery is low or on a cellular link).
    Power {
        /// Battery level in percent.
        #[arg(long)]
        battery: Option<u8>,
        /// The device is charging.
        #[arg(long)]
        charging: bool,
        /// wifi, cellular, ethernet or unknown.
        #[arg(long, default_value = "unknown")]
        connectivity: String,
    },
    /// Hold more entities (patterns `type:id`, `type:prefix*`, `type:*`):
    /// peers send only the entities subscribed to; those added are filled
    /// in, history included.
    Subscribe {
        /// Patterns to add (with --only: the whole subscription).
        patterns: Vec<String>,
        /// Hold exactly these patterns from now on (from everything too).
        #[arg(long)]
        only: bool,
        /// Hold every entity again.
        #[arg(long, conflicts_with_all = ["patterns", "only"])]
        everything: bool,
    },
    /// Hold fewer entities: those dropped stop changing here.
    Unsubscribe {
        /// Patterns to remove.
        #[arg(required = true)]
        patterns: Vec<String>,
    },
    /// Show which entities this device holds.
    Subscriptions,
    /// Store a file as an artifact (encrypted at rest) and print its id.
    Put {
        /// The file.
        file: PathBuf,
        /// Its MIME type.
        #[arg(long)]
        mime: Option<String>,
        /// Seal it for this device and this paired device only (repeat for
        /// several): the others can hold and pass it on, not open it.
        #[arg(long = "for", value_name = "DEVICE_ID")]
        recipients: Vec<String>,
    },
    /// Write an artifact to a file, fetching it from a peer if needed.
    Get {
        /// The artifact id (64 hex characters).
        id: String,
        /// Where to write it.
        out: PathBuf,
        /// Fetch from this paired peer's address if the artifact is not held locally.
        #[arg(long)]
        from: Option<SocketAddr>,
        /// The device id of the peer at `--from` (default: the paired device with that address).
        #[arg(long)]
        peer: Option<String>,
    },
    /// Show the node's state: id, peers (online, address, RTT, last sync, bytes each way), metrics.
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Refresh every second (needs `nomade serve` running).
        #[arg(long)]
        watch: bool,
    },
    /// Print changes as they are applied (needs `nomade serve` running).
    Watch {
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Explain why each paired device is syncing or not, and what to do.
    Doctor {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a self-contained demonstration on loopback: devices pair, edit
    /// concurrently, sync, move an artifact, restart from disk, converge.
    Demo {
        /// One JSON object instead of the readable report.
        #[arg(long)]
        json: bool,
        /// Artifact size in MiB.
        #[arg(long, default_value_t = 32)]
        artifact_mib: u64,
        /// Keep the protocol's default rate limits on (10 MB/s for artifacts).
        #[arg(long)]
        rate_limits: bool,
    },
}

/// `nomade pair ...`
#[derive(Debug, Subcommand)]
pub enum PairCommand {
    /// Show a pairing code and wait for one device to join with it.
    Show {
        /// The UDP address to listen on, when no `nomade serve` runs (default:
        /// where this device last served, else 0.0.0.0:4433).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// How long the code stays valid, in seconds (the protocol's default: 5 minutes).
        #[arg(long, default_value_t = 300)]
        ttl: u64,
    },
    /// Join a device that is showing a code.
    Join {
        /// The code it shows.
        code: String,
        /// Its address.
        addr: SocketAddr,
        /// The UDP address to dial from, when no `nomade serve` runs (default:
        /// where this device last served, else 0.0.0.0:4433); the other
        /// device remembers it as this device's address.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

/// `nomade artifacts ...`
#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// List them, each with its state, size, type and who refers to it.
    List,
    /// Keep an artifact on this device: fetched whatever the policy, never evicted.
    Pin {
        /// The artifact id.
        id: String,
    },
    /// Undo `pin`.
    Unpin {
        /// The artifact id.
        id: String,
    },
    /// Drop an artifact's content from this device, keeping its metadata;
    /// `get` fetches it again.
    Evict {
        /// The artifact id.
        id: String,
    },
}

/// `nomade peers ...`
#[derive(Debug, Subcommand)]
pub enum PeersCommand {
    /// List paired devices.
    List,
    /// Pair out of band: pin a device id you have compared by eye.
    Add {
        /// The device id (with or without dashes).
        device_id: String,
        /// Where it can be reached.
        #[arg(long)]
        addr: Option<SocketAddr>,
    },
    /// Unpair a device.
    Remove {
        /// The device id.
        device_id: String,
    },
    /// Revoke a lost or stolen device: every device of yours that this
    /// one reaches refuses it from then on, and nothing it writes
    /// afterwards is taken. It comes back only with a new identity.
    Revoke {
        /// The device id.
        device_id: String,
    },
}

/// `nomade doc ...`
#[derive(Debug, Subcommand)]
pub enum DocCommand {
    /// Set a field (the value is parsed as JSON, or taken as a string).
    Set {
        /// Document id.
        doc: String,
        /// Field.
        key: String,
        /// Value.
        value: String,
    },
    /// Print a field.
    Get {
        /// Document id.
        doc: String,
        /// Field.
        key: String,
    },
    /// Delete a field.
    Delete {
        /// Document id.
        doc: String,
        /// Field.
        key: String,
    },
    /// Print a whole document.
    Show {
        /// Document id.
        doc: String,
    },
}

/// `nomade conv ...`
#[derive(Debug, Subcommand)]
pub enum ConvCommand {
    /// Append an item.
    Append {
        /// Conversation id.
        conv: String,
        /// The item (JSON, or a string).
        value: String,
    },
    /// Insert an item at a position.
    Insert {
        /// Conversation id.
        conv: String,
        /// Position (0 = first).
        index: usize,
        /// The item.
        value: String,
    },
    /// Remove the item at a position.
    Remove {
        /// Conversation id.
        conv: String,
        /// Position.
        index: usize,
    },
    /// Print the conversation.
    Show {
        /// Conversation id.
        conv: String,
        /// Also print each item's id (`DEVICE#COUNTER`), which names it
        /// whatever is inserted or removed around it.
        #[arg(long)]
        ids: bool,
    },
    /// Insert an item right after another, named by its id (a reply after
    /// the message it answers); prints the new item's id.
    InsertAfter {
        /// Conversation id.
        conv: String,
        /// The item's id (`DEVICE#COUNTER`, from `conv show --ids`), or
        /// `start` to insert first.
        after: String,
        /// The item (JSON, or a string).
        value: String,
    },
    /// Remove an item named by its id.
    RemoveItem {
        /// Conversation id.
        conv: String,
        /// The item's id (`DEVICE#COUNTER`).
        item: String,
    },
}

/// `nomade text ...`
#[derive(Debug, Subcommand)]
pub enum TextCommand {
    /// Print a text field.
    Show {
        /// Document id.
        doc: String,
        /// Text field.
        field: String,
    },
    /// Replace DELETE characters at POSITION with INSERT.
    Splice {
        /// Document id.
        doc: String,
        /// Text field.
        field: String,
        /// Where (in characters, 0 = the start).
        position: usize,
        /// How many characters to remove.
        delete: usize,
        /// What to insert (may be empty).
        insert: String,
    },
    /// Edit a text field in $EDITOR (or $VISUAL, else vi); the difference is
    /// sent as splices, so concurrent edits elsewhere in the text merge.
    Edit {
        /// Document id.
        doc: String,
        /// Text field.
        field: String,
    },
}

/// `nomade presence ...`
#[derive(Debug, Subcommand)]
pub enum PresenceCommand {
    /// Announce this device's presence to its peers (a running node).
    Set {
        /// online, away, busy or offline.
        status: String,
        /// A message shown beside it.
        message: Option<String>,
    },
    /// Show each peer's presence.
    Show,
}
