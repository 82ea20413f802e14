//! What each command does: the parsed command line, handed to the module
//! of its concern. A client command runs itself once `Client::run` has
//! connected.

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
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent { args } => {
            let _telemetry = crate::telemetry::init(crate::config::LogFormat::Text)?;
            agent::run(*args).await.map(succeeded)
        }
        Command::Witness { args } => {
            let _telemetry = crate::telemetry::init(crate::config::LogFormat::Text)?;
            witness::run(*args).await.map(succeeded)
        }
        Command::Migrate { config, overrides } => {
            let settings = Settings::load(config.as_deref(), &overrides)?;
            let _telemetry = crate::telemetry::init(settings.log_format)?;
            startup::open_database(&settings).await?;
            outln!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Draft { client, args } => client.run(args).await,
        Command::DiscardDraft { client, args } => client.run(args).await,
        Command::SetSchema { client, args } => client.run(args).await,
        Command::Publish { client, args } => client.run(args).await,
        Command::Activate { client, args } => client.run(args).await,
        Command::Rollback { client, args } => client.run(args).await,
        Command::GetActive { client, args } => client.run(args).await,
        Command::GetPolicy { client, args } => client.run(args).await,
        Command::GetVersion { client, args } => client.run(args).await,
        Command::ListVersions { client, args } => client.run(args).await,
        Command::ListPolicies { client, args } => client.run(args).await,
        Command::ListEvents { client, args } => client.run(args).await,
        Command::ListCheckpoints { client, args } => client.run(args).await,
        Command::GetInclusionProof { client, args } => client.run(args).await,
        Command::GetConsistencyProof { client, args } => client.run(args).await,
        Command::GetBundleProof { client, args } => client.run(args).await,
        Command::GetOpaBundle { client, args } => client.run(args).await,
        Command::GetOpaDiscovery { client, args } => client.run(args).await,
        Command::GetOpaSigningKeys { client, args } => client.run(args).await,
        Command::GetRestoreProof { client, args } => client.run(args).await,
        Command::ListRuntimes { client, args } => client.run(args).await,
        Command::ListDecisions { client, args } => client.run(args).await,
        Command::AnalyzeImpact { client, args } => client.run(args).await,
        Command::GetPolicyStatus { client, args } => client.run(args).await,
        Command::DiffVersions { client, args } => client.run(args).await,
        Command::Whoami { client, args } => client.run(args).await,
        Command::Auth {
            command: AuthCommand::CanI { client, args },
        } => client.run(args).await,
        Command::GetSigningKeys { client, args } => client.run(args).await,
        Command::RotateSigningKey { client, args } => client.run(args).await,
        Command::RevokeSigningKey { client, args } => client.run(args).await,
        Command::RecordRestore { client, args } => client.run(args).await,
        Command::Backup { client, args } => client.run(args).await,
        Command::Export { client, args } => client.run(args).await,
        Command::Import { client, args } => client.run(args).await,
        Command::ReceiveAlerts { client, args } => client.run(args).await,
        Command::VerifyLog { client, args } => args.run(&client).await,
        // The groups connect once for whichever of their commands runs.
        Command::Rollout { command } => rollout::run(command).await.map(succeeded),
        Command::Schedule(command) => schedule::run(command).await.map(succeeded),
        Command::Subscription { command } => subscription::run(command).await.map(succeeded),
        // These reach the server their own way: several calls with a
        // report of their own, a runtime's subscription, a probe.
        Command::Sync { client, args } => sync::run(&client.connection, client.output, args).await,
        Command::WatchActive { client, args } => {
            let _telemetry = crate::telemetry::init(crate::config::LogFormat::Text)?;
            watch::run(&client.connection, client.output, args)
                .await
                .map(succeeded)
        }
        Command::Health { client, args } => health::health(&client, args).await,
        Command::Login { args } => login::login(args).await.map(succeeded),
        Command::Logout { args } => login::logout(args).await.map(succeeded),
        Command::Verify { jwks, bundle } => verify::verify(&jwks, bundle.as_deref()),
        Command::Token { args } => args.run(),
        Command::GenerateKey { args } => args.run(),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            // Into memory first: clap_complete panics on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "policyhub", &mut script);
            output::write_stdout_bytes(&script);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The exit code of a command that failed if it returned an error.
fn succeeded((): ()) -> ExitCode {
    ExitCode::SUCCESS
}
