//! The `policyhub` command line.

mod connection;
mod watch;

use connection::Connection;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Overrides, Settings};
use crate::signing::{self, Jwks};
use crate::startup::{self, Application};

/// policyhub: signed, versioned policies for runtimes.
#[derive(Debug, Parser)]
#[command(name = "policyhub", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve {
        /// A TOML settings file; POLICYHUB_* variables and flags override it.
        #[arg(long, env = "POLICYHUB_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Apply pending database migrations and exit (serve also applies them).
    Migrate {
        /// A TOML settings file.
        #[arg(long, env = "POLICYHUB_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Verify a signed bundle offline against a JWKS.
    ///
    /// The bundle is a JWS, or a JSON object with a "jws" member (the output
    /// of GetActive or GetVersion). The JWKS is the output of GetSigningKeys.
    /// Exits 0 when the bundle verifies, 1 when it does not.
    Verify {
        /// The JWKS file.
        #[arg(long)]
        jwks: PathBuf,
        /// The bundle file; `-` or nothing reads standard input.
        bundle: Option<PathBuf>,
    },
    /// Follow the active bundles of a namespace, verifying each one.
    ///
    /// Prints a snapshot, then every update as it is activated; reconnects
    /// and resumes from the last revision when the server goes away.
    Watch {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: watch::WatchArgs,
    },
    /// Mint a bearer token signed with an HS256 secret: by default the
    /// local secret the server generated into its data directory.
    Token {
        /// Who the token speaks for (recorded as the actor of events).
        #[arg(long)]
        subject: String,
        /// A grant, "<namespace>:<role>" or "*:<role>"; repeat for several.
        /// Roles: reader, author, publisher, operator, admin.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// The server's data directory, holding its generated secret.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// The secret file, when it is not the generated one.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// The token's issuer (auth.issuer).
        #[arg(long, default_value = crate::config::LOCAL_ISSUER)]
        issuer: String,
        /// The token's audience (auth.audience).
        #[arg(long, default_value = "policyhub")]
        audience: String,
        /// How long the token is valid, in seconds.
        #[arg(long, default_value_t = 12 * 3600)]
        ttl_seconds: u64,
    },
    /// Manage signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Ask the server to sign with a newly generated key from now on (admin
    /// in every namespace). Bundles signed before keep verifying.
    Rotate {
        #[command(flatten)]
        connection: Connection,
        /// Why; recorded in the event log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Write a new Ed25519 private key (PKCS#8 PEM, mode 0600) and print its key id.
    Generate {
        /// Where to write it; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, overrides } => {
            let settings = Settings::load(config.as_deref(), &overrides)?;
            let _telemetry = crate::telemetry::init(settings.log_format)?;
            let application = Application::build(settings).await?;
            application
                .run_until_stopped(crate::shutdown::signal())
                .await?;
        }
        Command::Migrate { config, overrides } => {
            let settings = Settings::load(config.as_deref(), &overrides)?;
            let _telemetry = crate::telemetry::init(settings.log_format)?;
            startup::open_database(&settings).await?;
            println!("migrations applied");
        }
        Command::Verify { jwks, bundle } => return verify(&jwks, bundle.as_deref()),
        Command::Watch { connection, args } => {
            watch::run(connection.connect().await?, args).await?
        }
        Command::Token {
            subject,
            roles,
            data_dir,
            secret_file,
            issuer,
            audience,
            ttl_seconds,
        } => {
            let secret_file =
                secret_file.unwrap_or_else(|| data_dir.join(crate::config::GENERATED_SECRET_FILE));
            let secret = std::fs::read_to_string(&secret_file)
                .with_context(|| format!("reading the token secret {}", secret_file.display()))?;
            for role in &roles {
                role.parse::<crate::grpc::auth::Grant>()
                    .map_err(|error| anyhow::anyhow!(error))?;
            }
            let now = chrono::Utc::now().timestamp();
            let claims = serde_json::json!({
                "iss": issuer, "aud": audience, "sub": subject, "roles": roles,
                "iat": now, "nbf": now, "exp": now + ttl_seconds as i64,
            });
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes()),
            )?;
            println!("{token}");
        }
        Command::Keys {
            command: KeysCommand::Rotate { connection, reason },
        } => {
            let mut client = crate::grpc::proto::policy_service_client::PolicyServiceClient::new(
                connection.connect().await?,
            );
            let rotated = client
                .rotate_signing_key(crate::grpc::proto::RotateSigningKeyRequest { reason })
                .await
                .map_err(|status| anyhow::anyhow!("rotation refused: {}", status.message()))?
                .into_inner();
            println!(
                "signing key {} replaces {}",
                rotated.signing_key_id, rotated.previous_key_id
            );
        }
        Command::Keys {
            command: KeysCommand::Generate { out },
        } => {
            let key = signing::write_new_key(&out)?;
            println!("{}", key.kid());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_input(path: Option<&Path>) -> anyhow::Result<String> {
    match path {
        None => std::io::read_to_string(std::io::stdin()).context("reading standard input"),
        Some(path) if path == Path::new("-") => {
            std::io::read_to_string(std::io::stdin()).context("reading standard input")
        }
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        }
    }
}

/// The JWS in a bundle file: the text itself, or the "jws" member of JSON.
fn bundle_jws(text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    if !text.starts_with('{') {
        return Ok(text.to_owned());
    }
    let value: serde_json::Value =
        serde_json::from_str(text).context("the bundle is neither a JWS nor JSON")?;
    value
        .get("jws")
        .and_then(|jws| jws.as_str())
        .filter(|jws| !jws.is_empty())
        .map(str::to_owned)
        .context("the JSON has no \"jws\" member: an unsigned draft cannot be verified")
}

fn verify(jwks_path: &Path, bundle: Option<&Path>) -> anyhow::Result<ExitCode> {
    let jwks: Jwks = serde_json::from_str(&read_input(Some(jwks_path))?)
        .with_context(|| format!("{} is not a JWKS", jwks_path.display()))?;
    let jws = bundle_jws(&read_input(bundle)?)?;
    match signing::verify(&jws, &jwks) {
        Ok(claims) => {
            println!(
                "verified: {} version {}{} digest {}",
                claims.sub,
                claims.ver,
                claims
                    .label
                    .map(|label| format!(" ({label})"))
                    .unwrap_or_default(),
                claims.digest
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("verification failed: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}
