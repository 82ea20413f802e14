//! `policyhub token`: a bearer token minted offline with an HS256 secret.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use super::failure::{Unusable, Usage, What};

/// Arguments of `policyhub token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Who the token speaks for (recorded as the actor of events).
    #[arg(long)]
    subject: String,
    /// A grant, "<namespace>:<role>" or "*:<role>"; repeat for several.
    /// Roles: reader, author, publisher, operator, admin, approver.
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
}

impl TokenArgs {
    /// Prints the token.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        for role in &self.roles {
            role.parse::<crate::grpc::auth::Grant>().map_err(|error| {
                Usage::new(
                    format!("--role: {error}"),
                    "write NAMESPACE:ROLE or *:ROLE, with a role the error names",
                )
            })?;
        }
        let secret_file = self
            .secret_file
            .unwrap_or_else(|| self.data_dir.join(crate::config::GENERATED_SECRET_FILE));
        let secret = std::fs::read_to_string(&secret_file).with_context(|| {
            Unusable::new(
                What::TokenSecret,
                format!("reading the token secret {}", secret_file.display()),
            )
        })?;
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "iss": self.issuer, "aud": self.audience, "sub": self.subject, "roles": self.roles,
            "iat": now, "nbf": now, "exp": now + self.ttl_seconds as i64,
        });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes()),
        )?;
        outln!("{token}");
        Ok(ExitCode::SUCCESS)
    }
}
