//! `policyhub witness`: the flags of a witness, turned into its settings
//! (`crate::witness` does the work).

use std::{net::SocketAddr, path::PathBuf};

/// What a witness is and which logs it witnesses.
#[derive(Debug, clap::Args)]
pub struct WitnessArgs {
    /// The witness's key name, such as witness.example.com/w1.
    #[arg(long, env = "POLICYHUB_WITNESS_NAME")]
    name: String,
    /// Its Ed25519 key (the base64 of its seed), made there (0600) on
    /// first start.
    #[arg(long, env = "POLICYHUB_WITNESS_KEY_FILE")]
    key_file: PathBuf,
    /// Where it keeps, per log, the last checkpoint it cosigned.
    #[arg(long, env = "POLICYHUB_WITNESS_STATE_FILE")]
    state_file: PathBuf,
    /// A log's verifier key, <origin>+<key id>+<base64 key> (its name is
    /// the log's origin); repeat for several logs or keys.
    #[arg(
        long = "log",
        env = "POLICYHUB_WITNESS_LOGS",
        value_delimiter = ',',
        required = true
    )]
    logs: Vec<String>,
    /// Where it listens for add-checkpoint.
    #[arg(
        long,
        env = "POLICYHUB_WITNESS_LISTEN",
        default_value = "127.0.0.1:7380"
    )]
    listen: SocketAddr,
}

pub async fn run(args: WitnessArgs) -> anyhow::Result<()> {
    crate::witness::run(crate::witness::Settings {
        name: args.name,
        key_file: args.key_file,
        state_file: args.state_file,
        logs: args.logs,
        listen: args.listen,
    })
    .await
}
