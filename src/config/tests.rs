//! The settings' tests: layering, the environment, every key reachable.

use super::*;

#[test]
fn flags_override_the_file_and_secrets_do_not_print() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policyhub.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7000\"\ndatabase_url = \"postgres://u:hunter2@db/hub\"\n\
         [limits]\nmax_body_bytes = 2048\n",
    )
    .unwrap();
    let overrides = Overrides {
        listen: Some("127.0.0.1:7001".parse().unwrap()),
        ..Overrides::default()
    };
    let settings = load(&[], Some(&file), &overrides).unwrap();
    assert_eq!(settings.listen.port(), 7001);
    assert_eq!(settings.limits.max_body_bytes, 2048);
    assert_eq!(
        settings.limits.max_page_size,
        Limits::default().max_page_size
    );
    assert!(!format!("{settings:?}").contains("hunter2"));
}

/// Settings that differ from the defaults at every key, with every
/// optional setting given and every collection filled.
fn every_key_changed() -> Settings {
    Settings {
        listen: "127.0.0.1:7000".parse().unwrap(),
        listen_backlog: 128,
        metrics_listen: Some("127.0.0.1:7001".parse().unwrap()),
        http_listen: Some("127.0.0.1:7002".parse().unwrap()),
        data_dir: PathBuf::from("state"),
        database_url: Some(SecretString::from("postgres://hub:pw@db/hub")),
        database_pool_size: PoolSize::try_from(4).unwrap(),
        insecure: true,
        bundle_issuer: "issuer".into(),
        signing: SigningSettings {
            key_files: vec!["a.pem".into(), "b.pem".into()],
            opa_key_files: vec!["opa.pem".into()],
        },
        limits: Limits {
            max_body_bytes: 2048,
            default_page_size: 7,
            max_page_size: 70,
            max_text_bytes: 99,
            max_activation_targets: 3,
        },
        connections: crate::connections::Limits {
            header_read_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(9),
            max_per_port: 12,
        },
        log_format: LogFormat::Json,
        health_check_interval: Duration::from_millis(1500),
        watch: WatchSettings {
            heartbeat_interval: Duration::from_secs(2),
            catch_up_interval: Duration::from_secs(3),
            listen_notifications: false,
            vouch_timeout: Duration::from_secs(4),
        },
        auth: AuthSettings {
            jwks_file: Some("jwks.json".into()),
            hs256_secret_file: Some("secret".into()),
            issuer: "tokens".into(),
            audience: "hub".into(),
            leeway: Duration::from_secs(5),
            roles_claim: "grants".into(),
            public_reflection: false,
            issuers: vec![IssuerSettings {
                issuer: "https://idp.example.com".into(),
                audiences: vec!["policyhub".into()],
                jwks_file: None,
                ca_file: Some("idp-ca.pem".into()),
                roles_claim: Some("policyhub_roles".into()),
                claims: vec!["groups".into()],
                refresh_interval: Duration::from_secs(600),
                min_refresh_interval: Duration::from_secs(10),
                keys_grace_period: Duration::from_secs(7200),
                client_id: Some("policyhub-console".into()),
                scopes: vec!["openid".into(), "groups".into()],
            }],
            bindings_file: Some("bindings.toml".into()),
        },
        tls: Some(TlsSettings {
            cert_file: "cert.pem".into(),
            key_file: "key.pem".into(),
            client_ca_file: Some("ca.pem".into()),
        }),
        quotas: QuotaSettings {
            max_streams_per_subject: 9,
            mutations_per_second: 7.5,
            mutation_burst: 11.0,
        },
        runtimes: RuntimeSettings {
            stale_after: Duration::from_secs(60),
            flush_interval: Duration::from_secs(6),
            forget_after: Duration::from_secs(3600),
        },
        rollouts: RolloutSettings {
            tick_interval: Duration::from_secs(8),
            required_approvals: [("payments".to_string(), 2), ("billing".to_string(), 1)].into(),
            prometheus: [(
                "default".to_string(),
                PrometheusServer {
                    url: "http://prometheus:9090".into(),
                },
            )]
            .into(),
            min_analysis_interval: Duration::from_secs(30),
            analysis_timeout: Duration::from_secs(3),
        },
        audit: AuditSettings {
            checkpoint_interval: Duration::from_secs(90),
            log_origin: Some("policy.example.com/log".into()),
            witnesses: vec![WitnessSettings {
                name: Some("w1".into()),
                url: "https://witness.example".into(),
                key: witness_key("witness.example/w1"),
            }],
            witness_timeout: Duration::from_secs(5),
        },
        notifications: NotificationSettings {
            allow_http: true,
            allow_private_addresses: true,
            timeout: Duration::from_secs(3),
            initial_retry_delay: Duration::from_millis(250),
            max_retry_delay: Duration::from_secs(60),
            disable_after_failures: 5,
            poll_interval: Duration::from_millis(50),
        },
        schedules: ScheduleSettings {
            min_interval: Duration::from_secs(300),
        },
        opa: OpaSettings {
            namespaces: [(
                "payments".to_owned(),
                OpaNamespace {
                    roots: vec!["payments".into(), "cards/limits".into()],
                    impact_gate: Some(ImpactGateSettings {
                        max_changed_percent: 2.5,
                        decisions: 500,
                    }),
                },
            )]
            .into(),
        },
        decisions: DecisionSettings {
            max_per_namespace: 1000,
            max_age: Duration::from_secs(86400),
        },
        idempotency_retention: Some(Duration::from_secs(3600)),
    }
}

/// Every leaf of `value` below `path`: its dotted key and its value
/// (none when unset), as an environment variable would carry it.
fn leaves(path: &str, value: &figment::value::Value, into: &mut Vec<(String, Option<String>)>) {
    use figment::value::Value;
    let key = |name: &str| match path {
        "" => name.to_string(),
        _ => format!("{path}.{name}"),
    };
    match value {
        Value::Dict(_, dict) => {
            for (name, value) in dict {
                leaves(&key(name), value, into);
            }
        }
        Value::Array(..) => into.push((path.to_string(), Some(inline(value)))),
        Value::String(_, text) => into.push((path.to_string(), Some(text.clone()))),
        Value::Bool(_, flag) => into.push((path.to_string(), Some(flag.to_string()))),
        Value::Num(_, number) => {
            let number = match (number.to_u128(), number.to_i128(), number.to_f64()) {
                (Some(unsigned), ..) => unsigned.to_string(),
                (None, Some(signed), _) => signed.to_string(),
                (None, None, float) => float.unwrap_or_default().to_string(),
            };
            into.push((path.to_string(), Some(number)));
        }
        Value::Empty(..) => into.push((path.to_string(), None)),
        Value::Char(_, char) => into.push((path.to_string(), Some(char.to_string()))),
    }
}

/// A value as an environment variable writes it: arrays and tables inline,
/// as `[{issuer = "https://…", audiences = ["policyhub"]}]`.
fn inline(value: &figment::value::Value) -> String {
    use figment::value::Value;
    match value {
        Value::Dict(_, dict) => {
            let entries: Vec<String> = dict
                .iter()
                .map(|(name, value)| format!("{name} = {}", inline(value)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        Value::Array(_, items) => {
            let items: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", items.join(", "))
        }
        Value::String(_, text) => format!("{text:?}"),
        Value::Bool(_, flag) => flag.to_string(),
        Value::Num(_, number) => number.to_f64().unwrap_or_default().to_string(),
        Value::Empty(..) => "\"\"".into(),
        Value::Char(_, char) => format!("{:?}", char.to_string()),
    }
}

fn keys_of(settings: &Settings) -> Vec<(String, Option<String>)> {
    let value = figment::value::Value::serialize(settings).unwrap();
    let mut keys = Vec::new();
    leaves("", &value, &mut keys);
    keys
}

#[test]
fn every_setting_is_settable_from_its_environment_variable() {
    let changed = every_key_changed();
    let mut keys = keys_of(&changed);
    // The one value the serialization redacts.
    for (key, value) in &mut keys {
        if key == "database_url" {
            *value = Some(changed.database_url().expose_secret().to_string());
        }
    }
    let defaults = keys_of(&Settings::default());
    for (key, value) in &keys {
        assert!(value.is_some(), "{key}: unset in the sample");
        let default = defaults.iter().find(|(name, _)| name == key);
        assert_ne!(default.map(|(_, value)| value), Some(value), "{key}");
    }
    assert!(
        keys.iter()
            .any(|(key, _)| key == "audit.checkpoint_interval")
    );

    let variables: Vec<(String, String)> = keys
        .into_iter()
        .map(|(key, value)| (variable_name(&key), value.unwrap_or_default()))
        .collect();
    let loaded = load_with(&variables).unwrap();
    assert_eq!(keys_of(&loaded), keys_of(&changed));
    assert_eq!(
        loaded.database_url().expose_secret(),
        changed.database_url().expose_secret()
    );
}

/// The settings loaded from `file` and `overrides` with `variables`
/// set. Every test loads through here: figment's jail lets one test at a
/// time see the environment, and restores it after.
#[allow(clippy::result_large_err)] // the jail's signature
fn load(
    variables: &[(String, String)],
    file: Option<&Path>,
    overrides: &Overrides,
) -> anyhow::Result<Settings> {
    let mut loaded = None;
    figment::Jail::expect_with(|jail| {
        for (variable, value) in variables {
            jail.set_env(variable, value);
        }
        loaded = Some(Settings::load(file, overrides));
        Ok(())
    });
    loaded.expect("the jail ran")
}

fn load_with(variables: &[(String, String)]) -> anyhow::Result<Settings> {
    load(variables, None, &Overrides::default())
}

fn load_file(file: &Path) -> anyhow::Result<Settings> {
    load(&[], Some(file), &Overrides::default())
}

#[test]
fn unknown_or_invalid_setting_variables_are_refused_by_name() {
    for (variable, value) in [
        ("POLICYHUB_BOGUS__X", "1"),
        ("POLICYHUB_LIMITS__MAX_BODDY_BYTES", "1"),
        ("POLICYHUB_LIMITS__MAX_BODY_BYTES", "lots"),
        ("POLICYHUB_AUDIT__CHECKPOINT_INTERVAL", "60"),
        ("POLICYHUB_ROLLOUTS__REQUIRED_APPROVALS__PAYMENTS", "-1"),
        ("POLICYHUB_LISTEN", "nowhere"),
    ] {
        let refused = load_with(&[(variable.into(), value.into())]).unwrap_err();
        let refused = format!("{refused:#}");
        assert!(
            refused.contains(&format!("environment variable {variable}:")),
            "{refused}"
        );
    }
}

#[test]
fn prefixed_variables_that_are_not_settings_are_left_alone() {
    // What Kubernetes injects for a Service called `policyhub`, and the
    // client's and the agent's own variables.
    let others = [
        ("POLICYHUB_PORT", "tcp://10.0.0.1:50051"),
        ("POLICYHUB_SERVICE_HOST", "10.0.0.1"),
        ("POLICYHUB_SERVER", "http://127.0.0.1:50051"),
        ("POLICYHUB_AGENT_LISTEN", "127.0.0.1:7070"),
    ]
    .map(|(variable, value)| (variable.to_string(), value.to_string()));
    let settings = load_with(&others).unwrap();
    assert_eq!(settings.listen, Settings::default().listen);
}

#[test]
fn durations_are_written_with_their_unit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policyhub.toml");
    std::fs::write(
        &file,
        "health_check_interval = \"1500ms\"\nidempotency_retention = \"30days\"\n\
         [watch]\nheartbeat_interval = \"2s\"\n[runtimes]\nstale_after = \"10m\"\n",
    )
    .unwrap();
    let settings = load_file(&file).unwrap();
    assert_eq!(settings.health_check_interval, Duration::from_millis(1500));
    assert_eq!(
        settings.idempotency_retention,
        Some(Duration::from_secs(30 * 24 * 3600))
    );
    assert_eq!(settings.watch.heartbeat_interval, Duration::from_secs(2));
    assert_eq!(settings.runtimes.stale_after, Duration::from_secs(600));
    for bare in [
        "health_check_interval = 5\n",
        "[watch]\nheartbeat_interval = \"10\"\n",
    ] {
        std::fs::write(&file, bare).unwrap();
        let refused = load_file(&file).unwrap_err();
        assert!(
            format!("{refused:#}").contains("health_check_interval")
                || format!("{refused:#}").contains("heartbeat_interval"),
            "{refused:#}"
        );
    }
}

#[test]
fn schedules_fire_at_most_once_a_minute_unless_set_otherwise() {
    assert_eq!(
        Settings::default().schedules.min_interval,
        Duration::from_secs(60)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policyhub.toml");
    std::fs::write(&file, "[schedules]\nmin_interval = \"5m\"\n").unwrap();
    let settings = Settings::load(Some(&file), &Overrides::default()).unwrap();
    assert_eq!(settings.schedules.min_interval, Duration::from_secs(300));
}

#[test]
fn unknown_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policyhub.toml");
    std::fs::write(&file, "lisen = \"127.0.0.1:7000\"\n").unwrap();
    assert!(load_file(&file).is_err());
}

/// A witness's verifier key under `name`.
fn witness_key(name: &str) -> String {
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    policyhub_runtime::cosignature::verifier_key(name, &key.verifying_key())
}

#[test]
fn a_witness_with_a_bad_url_or_key_is_refused_naming_the_entry() {
    let good = witness_key("witness.example/w1");
    let other = witness_key("witness.example/w2");
    for (entries, refusal) in [
        (
            format!("{{url = \"ftp://w\", key = \"{good}\"}}"),
            "audit.witnesses[0] (ftp://w): url",
        ),
        (
            format!("{{url = \"not a url\", key = \"{good}\"}}"),
            "audit.witnesses[0] (not a url): url",
        ),
        (
            "{name = \"w1\", url = \"https://w\", key = \"w+0000+AAAA\"}".to_owned(),
            "audit.witnesses[0] (w1): key: \"w+0000+AAAA\" is not a cosignature/v1",
        ),
        (
            format!(
                "{{url = \"https://a\", key = \"{good}\"}}, {{name = \"b\", url = \"https://b\", key = \"{good}\"}}"
            ),
            "audit.witnesses[1] (b): another witness has a key named \"witness.example/w1\"",
        ),
    ] {
        let variables = [(
            "POLICYHUB_AUDIT__WITNESSES".to_owned(),
            format!("[{entries}]"),
        )];
        let refused = format!("{:#}", load_with(&variables).unwrap_err());
        assert!(refused.contains(refusal), "{refused}");
    }
    let variables = [(
        "POLICYHUB_AUDIT__WITNESSES".to_owned(),
        format!(
            "[{{url = \"https://a/\", key = \"{good}\"}}, {{url = \"http://b:8080/w\", key = \"{other}\"}}]"
        ),
    )];
    let loaded = load_with(&variables).unwrap();
    assert_eq!(
        loaded.audit.witnesses[0].display_name(),
        "witness.example/w1"
    );
    assert_eq!(
        loaded.audit.witnesses[1].add_checkpoint_url(),
        "http://b:8080/w/add-checkpoint"
    );
}

#[test]
fn a_pool_of_no_connections_or_an_absurd_number_is_refused_by_name() {
    for value in ["0", "1001", "4294967296", "-1"] {
        let variables = [("POLICYHUB_DATABASE_POOL_SIZE".to_owned(), value.to_owned())];
        let error = format!("{:#}", load_with(&variables).unwrap_err());
        assert!(
            error.contains("POLICYHUB_DATABASE_POOL_SIZE"),
            "{value}: {error}"
        );
        if value != "-1" {
            assert!(error.contains("from 1 to 1000"), "{value}: {error}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policyhub.toml");
    std::fs::write(&file, "database_pool_size = 0\n").unwrap();
    let error = format!("{:#}", load_file(&file).unwrap_err());
    assert!(error.contains("from 1 to 1000"), "{error}");
    for value in ["0", "5000", "many"] {
        assert!(parse_pool_size(value).is_err(), "{value}");
    }
    let variables = [("POLICYHUB_DATABASE_POOL_SIZE".to_owned(), "1000".to_owned())];
    assert_eq!(
        load_with(&variables).unwrap().database_pool_size.get(),
        1000
    );
    let overrides = Overrides {
        database: DatabaseOverrides {
            database_pool_size: Some(parse_pool_size("3").unwrap()),
            ..DatabaseOverrides::default()
        },
        ..Overrides::default()
    };
    let loaded = load(&variables, None, &overrides).unwrap();
    assert_eq!(loaded.database_pool_size.get(), 3, "the flag overrides");
}

#[test]
fn an_impact_gate_beyond_a_percentage_or_a_replays_window_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policyhub.toml");
    let gate = |gate: &str| {
        format!("[opa.namespaces.payments]\nroots = [\"payments\"]\nimpact_gate = {{ {gate} }}\n")
    };
    for (bad, says) in [
        (
            "max_changed_percent = 150.0",
            "max_changed_percent: 150 is not a percentage",
        ),
        (
            "max_changed_percent = -1.0",
            "max_changed_percent: -1 is not a percentage",
        ),
        (
            "max_changed_percent = 1.0, decisions = 0",
            "decisions: 0: an analysis replays 1 to 10000",
        ),
        (
            "max_changed_percent = 1.0, decisions = 10001",
            "decisions: 10001",
        ),
        ("decisions = 10", "missing field `max_changed_percent`"),
    ] {
        std::fs::write(&file, gate(bad)).unwrap();
        let error = format!("{:#}", load_file(&file).unwrap_err());
        assert!(error.contains(says), "{bad}: {error}");
    }
    std::fs::write(&file, gate("max_changed_percent = 1.0")).unwrap();
    let gates = load_file(&file).unwrap().opa.impact_gates().unwrap();
    let gate = gates.values().next().unwrap();
    assert_eq!((gate.max_changed_percent, gate.decisions), (1.0, 1000));
}
