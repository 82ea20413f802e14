//! What each command does: the parsed command line, dispatched to the
//! module of its concern.

use super::*;

/// Runs a parsed command line.
pub(super) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, overrides } => {
            let settings = Settings::load(config.as_deref(), &overrides)?;
            let _telemetry = crate::telemetry::init(settings.log_format)?;
            let application = Application::build(settings).await?;
            application
                .run_until_stopped(crate::shutdown::signal())
                .await?;
        }
        Command::Agent { args } => {
            let _telemetry = crate::telemetry::init(crate::config::LogFormat::Text)?;
            agent::run(*args).await?
        }
        Command::Witness { args } => {
            let _telemetry = crate::telemetry::init(crate::config::LogFormat::Text)?;
            witness::run(*args).await?
        }
        Command::Migrate { config, overrides } => {
            let settings = Settings::load(config.as_deref(), &overrides)?;
            let _telemetry = crate::telemetry::init(settings.log_format)?;
            startup::open_database(&settings).await?;
            outln!("migrations applied");
        }
        Command::Draft { client, args } => {
            let (channel, output) = client.connect().await?;
            lifecycle::draft(channel, output, args).await?
        }
        Command::DiscardDraft { client, args } => {
            let (channel, output) = client.connect().await?;
            lifecycle::discard_draft(channel, output, args).await?
        }
        Command::SetSchema { client, args } => {
            let (channel, output) = client.connect().await?;
            schema::set_schema(channel, output, args).await?
        }
        Command::Publish { client, args } => {
            let (channel, output) = client.connect().await?;
            lifecycle::publish(channel, output, args).await?
        }
        Command::Activate { client, args } => {
            let (channel, output) = client.connect().await?;
            lifecycle::activate(channel, output, args).await?
        }
        Command::Rollback { client, args } => {
            let (channel, output) = client.connect().await?;
            lifecycle::rollback(channel, output, args).await?
        }
        Command::GetActive { client, args } => {
            let (channel, output) = client.connect().await?;
            inspect::get_active(channel, output, args).await?
        }
        Command::GetPolicy { client, args } => {
            let (channel, output) = client.connect().await?;
            inspect::get_policy(channel, output, args).await?
        }
        Command::GetVersion { client, args } => {
            let (channel, output) = client.connect().await?;
            inspect::get_version(channel, output, args).await?
        }
        Command::ListVersions { client, args } => {
            let (channel, output) = client.connect().await?;
            inspect::versions(channel, output, args).await?
        }
        Command::ListPolicies { client, args } => {
            let (channel, output) = client.connect().await?;
            inspect::policies(channel, output, args).await?
        }
        Command::ListEvents { client, args } => {
            let (channel, output) = client.connect().await?;
            history::events(channel, output, args).await?
        }
        Command::ListCheckpoints { client, limit } => {
            let (channel, output) = client.connect().await?;
            history::checkpoints(channel, output, limit).await?
        }
        Command::GetInclusionProof {
            client,
            event,
            tree_size,
        } => {
            let (channel, output) = client.connect().await?;
            proofs::inclusion(channel, output, event, tree_size).await?
        }
        Command::GetConsistencyProof {
            client,
            old_size,
            new_size,
        } => {
            let (channel, output) = client.connect().await?;
            proofs::consistency(channel, output, old_size, new_size).await?
        }
        Command::GetBundleProof {
            client,
            policy,
            version,
            revision,
            tree_size,
        } => {
            let (channel, output) = client.connect().await?;
            proofs::bundle(channel, output, &policy, version, revision, tree_size).await?
        }
        Command::ListRuntimes { client, args } => {
            let (channel, output) = client.connect().await?;
            fleet::list_runtimes(channel, output, args).await?
        }
        Command::GetPolicyStatus { client, args } => {
            let (channel, output) = client.connect().await?;
            fleet::get_policy_status(channel, output, args).await?
        }
        Command::DiffVersions { client, args } => {
            let (channel, output) = client.connect().await?;
            diff::diff_versions(channel, output, args).await?
        }
        Command::Sync { client, args } => {
            return sync::run(&client.connection, client.output, args).await;
        }
        Command::Rollout { command } => rollout::run(command).await?,
        Command::Schedule(command) => schedule::run(command).await?,
        Command::Subscription { command } => subscription::run(command).await?,
        Command::Login { args } => login::login(args).await?,
        Command::Logout { args } => login::logout(args).await?,
        Command::Whoami { client, namespace } => {
            let (channel, output) = client.connect().await?;
            inspect::whoami(channel, output, namespace.unwrap_or_default()).await?
        }
        Command::GetSigningKeys { client } => {
            let (channel, output) = client.connect().await?;
            inspect::keys(channel, output).await?
        }
        Command::Verify { jwks, bundle } => return verify::verify(&jwks, bundle.as_deref()),
        Command::Health { connection, args } => return health::health(&connection, args).await,
        Command::Auth {
            command:
                AuthCommand::CanI {
                    client,
                    method,
                    namespace,
                },
        } => {
            let (channel, output) = client.connect().await?;
            return inspect::can_i(channel, output, method, namespace.unwrap_or_default()).await;
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            // Into memory first: clap_complete panics on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "policyhub", &mut script);
            output::write_stdout_bytes(&script);
        }
        Command::WatchActive { client, args } => {
            let _telemetry = crate::telemetry::init(crate::config::LogFormat::Text)?;
            watch::run(&client.connection, client.output, args).await?
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
            for role in &roles {
                role.parse::<crate::grpc::auth::Grant>().map_err(|error| {
                    Usage::new(
                        format!("--role: {error}"),
                        "write NAMESPACE:ROLE or *:ROLE, with a role the error names",
                    )
                })?;
            }
            let secret_file =
                secret_file.unwrap_or_else(|| data_dir.join(crate::config::GENERATED_SECRET_FILE));
            let secret = std::fs::read_to_string(&secret_file).with_context(|| {
                Unusable::new(
                    What::TokenSecret,
                    format!("reading the token secret {}", secret_file.display()),
                )
            })?;
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
            outln!("{token}");
        }
        Command::RotateSigningKey { client, reason } => {
            let (channel, output) = client.connect().await?;
            let rotated =
                crate::grpc::proto::policy_service_client::PolicyServiceClient::new(channel)
                    .rotate_signing_key(crate::grpc::proto::RotateSigningKeyRequest { reason })
                    .await
                    .reply("rotating the signing key")?;
            if output == Output::Json {
                output::print_message(&rotated);
            } else {
                outln!(
                    "signing key {} replaces {}",
                    rotated.signing_key_id,
                    rotated.previous_key_id
                );
            }
        }
        Command::RecordRestore { client, reason } => {
            let (channel, output) = client.connect().await?;
            let recorded =
                crate::grpc::proto::policy_service_client::PolicyServiceClient::new(channel)
                    .record_restore(crate::grpc::proto::RecordRestoreRequest { reason })
                    .await
                    .reply("recording the restore")?;
            if output == Output::Json {
                output::print_message(&recorded);
            } else {
                let (event, checkpoint) = (
                    recorded.event.unwrap_or_default(),
                    recorded.checkpoint.unwrap_or_default(),
                );
                outln!(
                    "restore recorded as event {}; a checkpoint at revision {} signs the log's \
                     tree over it",
                    event.id,
                    checkpoint.revision
                );
            }
        }
        Command::VerifyLog {
            client,
            filename: Some(file),
            checkpoints,
            jwks,
        } => verify_log::verify_files(
            &file,
            checkpoints.as_deref().zip(jwks.as_deref()),
            client.output,
        )?,
        Command::VerifyLog { client, .. } => {
            let (channel, output) = client.connect().await?;
            verify_log::verify_log(channel, output).await?
        }
        Command::Backup { client, file } => {
            let (channel, output) = client.connect().await?;
            backup::backup(channel, output, file).await?
        }
        Command::Export { client, namespaces } => {
            let (channel, _) = client.connect().await?;
            archive::export(channel, namespaces).await?
        }
        Command::Import { client, file } => {
            let (channel, output) = client.connect().await?;
            archive::import(channel, output, &file).await?
        }
        Command::GenerateKey { out } => {
            let key = signing::write_new_key(&out)?;
            outln!("{}", key.key_id());
        }
    }
    Ok(ExitCode::SUCCESS)
}
