//! Races between replicas (docs/src/contributing/design.md#storage): two real
//! server binaries on one PostgreSQL database, or one binary on SQLite, and
//! two conflicting calls released at the same instant by a barrier, one to
//! each replica, round after round. Each scenario asserts what serial
//! execution allows: the stored state keeps its invariant in every round, and
//! exactly the call that would break it is refused, with the rule it broke.

use std::{future::Future, sync::Arc};

use policyhub::grpc::{
    convert::json_to_struct,
    proto::{
        self, RolloutState, bundle_service_client::BundleServiceClient,
        policy_service_client::PolicyServiceClient, rollout_target_request::Selector,
    },
};
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{Value, json};
use tokio::sync::Barrier;
use tonic::{Code, Request, Status, transport::Channel};
use tonic_types::StatusExt;

use crate::cli::mint_token;
use crate::helpers::{
    Backend, Reaped, TestDatabase, expect_code, free_port, opa_key_file, policyhub_binary,
    start_serving, target,
};
use crate::rollouts::step;

/// Rounds of each race; every round runs in a namespace of its own.
const ROUNDS: usize = 20;

/// Namespaces whose rollouts need two approvals (`gated0`…).
const GATED: &str = "gated";

/// Namespaces served to OPA (`opa0`…), each its own bundle root.
const OPA: &str = "opa";

/// One replica's clients.
#[derive(Clone)]
struct Replica {
    policy: PolicyServiceClient<Channel>,
    bundle: BundleServiceClient<Channel>,
}

/// Two replicas of one database, and tokens for the callers.
struct Race {
    replicas: [Replica; 2],
    /// Killed before the database is dropped (fields drop in order).
    _servers: Vec<Reaped>,
    database: TestDatabase,
    /// Starts rollouts and does everything else: `alice`, admin.
    admin: String,
    /// Approvers other than the starter.
    approvers: [String; 2],
    /// Readers of two different subjects.
    readers: [String; 2],
}

/// `message` with `token` as its bearer credential.
fn authorized<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn token(database: &TestDatabase, subject: &str, role: &str) -> String {
    let data_dir = database.data_dir.path().display().to_string();
    mint_token(&data_dir, subject, role)
        .success()
        .trim()
        .to_owned()
}

impl Race {
    /// On PostgreSQL two server binaries sharing the database (and the data
    /// directory, so they sign with one key and trust one token secret); on
    /// SQLite, which has one replica, two connections to one binary.
    async fn start(backend: Backend) -> Self {
        let database = TestDatabase::new(backend).await;
        let settings: Vec<(String, String)> = (0..ROUNDS)
            .map(|round| {
                let key = format!("POLICYHUB_ROLLOUTS__REQUIRED_APPROVALS__{GATED}{round}");
                (key, "2".to_owned())
            })
            .chain((0..ROUNDS).map(|round| {
                let key = format!("POLICYHUB_OPA__NAMESPACES__{OPA}{round}__ROOTS");
                (key, format!(r#"["{OPA}{round}"]"#))
            }))
            .collect();
        let replicas = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => 2,
        };
        let mut servers = Vec::new();
        let mut channels = Vec::new();
        for _ in 0..replicas {
            let port = free_port();
            let mut command = std::process::Command::new(policyhub_binary());
            command
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .arg("--data-dir")
                .arg(database.data_dir.path())
                .env("POLICYHUB_DATABASE_URL", &database.url)
                .env(
                    "POLICYHUB_SIGNING__OPA_KEY_FILES",
                    serde_json::json!([opa_key_file(database.data_dir.path())]).to_string(),
                )
                .env("POLICYHUB_ROLLOUTS__TICK_INTERVAL", "100ms")
                // Rounds set up faster than an operator's quota allows.
                .env("POLICYHUB_QUOTAS__MUTATIONS_PER_SECOND", "100000")
                .envs(settings.iter().cloned());
            let (server, channel) = start_serving(command, port).await;
            servers.push(server);
            channels.push(channel);
        }
        let replica = |channel: &Channel| Replica {
            policy: PolicyServiceClient::new(channel.clone()),
            bundle: BundleServiceClient::new(channel.clone()),
        };
        let first = replica(&channels[0]);
        let second = channels.get(1).map(replica).unwrap_or_else(|| {
            // A second connection to the one SQLite server.
            Replica {
                policy: PolicyServiceClient::new(channels[0].clone()),
                bundle: BundleServiceClient::new(channels[0].clone()),
            }
        });
        Race {
            admin: token(&database, "alice", "*:admin"),
            approvers: [
                token(&database, "bob", "*:approver"),
                token(&database, "carol", "*:approver"),
            ],
            readers: [
                token(&database, "dave", "*:reader"),
                token(&database, "erin", "*:reader"),
            ],
            replicas: [first, second],
            database,
            _servers: servers,
        }
    }

    fn policy(&self, replica: usize) -> PolicyServiceClient<Channel> {
        self.replicas[replica].policy.clone()
    }

    async fn draft(
        &self,
        replica: usize,
        namespace: &str,
        name: &str,
        requirements: &[(&str, &str)],
    ) -> Result<proto::DraftResponse, Status> {
        let request = draft_request(namespace, name, json!({ "of": name }), requirements);
        Ok(self
            .policy(replica)
            .draft(authorized(request, &self.admin))
            .await?
            .into_inner())
    }

    async fn publish(
        &self,
        namespace: &str,
        name: &str,
        label: &str,
        activate: bool,
    ) -> proto::PublishResponse {
        let request = publish_request(namespace, name, label, activate);
        self.policy(0)
            .publish(authorized(request, &self.admin))
            .await
            .expect("publish")
            .into_inner()
    }

    /// Drafts and publishes `label` of `name` with `requirements`.
    async fn release(
        &self,
        namespace: &str,
        name: &str,
        label: &str,
        requirements: &[(&str, &str)],
        activate: bool,
    ) {
        self.draft(0, namespace, name, requirements)
            .await
            .expect("draft");
        self.publish(namespace, name, label, activate).await;
    }

    async fn start_rollout(
        &self,
        namespace: &str,
        name: &str,
        version: u32,
    ) -> Result<proto::Rollout, Status> {
        let request = start_request(namespace, name, version);
        Ok(self
            .policy(0)
            .start_rollout(authorized(request, &self.admin))
            .await?
            .into_inner())
    }

    async fn get_rollout(&self, namespace: &str, id: &str) -> proto::Rollout {
        let request = proto::GetRolloutRequest {
            namespace: namespace.into(),
            id: id.into(),
        };
        self.policy(0)
            .get_rollout(authorized(request, &self.admin))
            .await
            .expect("get rollout")
            .into_inner()
    }

    /// The events of `namespace`/`name` of `kind`.
    async fn events(&self, namespace: &str, name: &str, kind: proto::EventKind) -> usize {
        let request = proto::ListEventsRequest {
            namespace: namespace.into(),
            name: name.into(),
            kinds: vec![kind as i32],
            page_size: 500,
            page_token: String::new(),
            ..Default::default()
        };
        self.policy(0)
            .list_events(authorized(request, &self.admin))
            .await
            .expect("list events")
            .into_inner()
            .events
            .len()
    }

    /// Rows of `sql` (one text column, `line`) read straight from the
    /// database.
    async fn stored(&self, sql: &str) -> Vec<String> {
        let db = Database::connect(&self.database.url)
            .await
            .expect("connect to the test database");
        let rows = db
            .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .expect("state query");
        db.close().await.ok();
        rows.iter()
            .map(|row| row.try_get::<String>("", "line").expect("line column"))
            .collect()
    }

    /// Every requirement of an active version of `namespace` that the
    /// active label of the required policy does not meet, as stored.
    async fn unmet_requirements(&self, namespace: &str) -> Vec<String> {
        let rows = self
            .stored(&format!(
                "SELECT p.name || ' ' || COALESCE(v.label, '-') || ' ' || v.requirements AS line \
                 FROM policies p JOIN versions v \
                 ON v.policy_id = p.id AND v.version = p.active_version \
                 WHERE p.namespace = '{namespace}'"
            ))
            .await;
        let mut active = std::collections::BTreeMap::new();
        let mut requires = Vec::new();
        for row in &rows {
            let mut fields = row.splitn(3, ' ');
            let (name, label, requirements) = (
                fields.next().unwrap().to_owned(),
                fields.next().unwrap().to_owned(),
                fields.next().unwrap(),
            );
            let requirements: Vec<Value> = serde_json::from_str(requirements).unwrap();
            for requirement in requirements {
                let required = requirement["name"].as_str().unwrap().to_owned();
                let range = requirement["range"].as_str().unwrap().to_owned();
                requires.push((name.clone(), required, range));
            }
            active.insert(name, label);
        }
        requires
            .into_iter()
            .filter(|(_, required, range)| {
                let range = semver::VersionReq::parse(range).unwrap();
                !active
                    .get(required)
                    .and_then(|label| semver::Version::parse(label).ok())
                    .is_some_and(|label| range.matches(&label))
            })
            .map(|(name, required, range)| format!("{name} requires {required} {range}"))
            .collect()
    }
}

fn draft_request(
    namespace: &str,
    name: &str,
    body: Value,
    requirements: &[(&str, &str)],
) -> proto::DraftRequest {
    proto::DraftRequest {
        namespace: namespace.into(),
        name: name.into(),
        body: Some(json_to_struct(&body)),
        requirements: requirements
            .iter()
            .map(|(name, range)| proto::Requirement {
                name: (*name).into(),
                range: (*range).into(),
            })
            .collect(),
        ..Default::default()
    }
}

fn publish_request(
    namespace: &str,
    name: &str,
    label: &str,
    activate: bool,
) -> proto::PublishRequest {
    proto::PublishRequest {
        label: label.into(),
        ..crate::helpers::publish_request(namespace, name, "", activate)
    }
}

fn start_request(namespace: &str, name: &str, version: u32) -> proto::StartRolloutRequest {
    proto::StartRolloutRequest {
        namespace: namespace.into(),
        targets: vec![proto::RolloutTargetRequest {
            name: name.into(),
            selector: Some(Selector::Version(version)),
            expected_active_version: None,
        }],
        steps: vec![step(100, std::time::Duration::from_secs(3600))],
        reason: "race".into(),
        ..Default::default()
    }
}

fn activate_request(namespace: &str, name: &str, version: u32) -> proto::ActivateRequest {
    proto::ActivateRequest {
        targets: vec![target(namespace, name, version)],
        reason: "race".into(),
        idempotency_key: String::new(),
    }
}

fn control_request(namespace: &str, id: &str) -> proto::RolloutControlRequest {
    proto::RolloutControlRequest {
        namespace: namespace.into(),
        id: id.into(),
        reason: "race".into(),
    }
}

/// A call to a replica that owns its client, so it can run on a task of
/// its own: `call!(race, replica, method, request, token)`.
macro_rules! call {
    ($race:expr, $replica:expr, $method:ident, $request:expr, $token:expr) => {{
        let mut client = $race.policy($replica);
        let request = authorized($request, $token);
        async move {
            client
                .$method(request)
                .await
                .map(tonic::Response::into_inner)
        }
    }};
}

/// Runs `first` and `second` on two tasks released together by a barrier.
async fn at_once<A, B>(first: A, second: B) -> (A::Output, B::Output)
where
    A: Future + Send + 'static,
    A::Output: Send + 'static,
    B: Future + Send + 'static,
    B::Output: Send + 'static,
{
    let barrier = Arc::new(Barrier::new(2));
    let released = barrier.clone();
    let first = tokio::spawn(async move {
        released.wait().await;
        first.await
    });
    let released = barrier.clone();
    let second = tokio::spawn(async move {
        released.wait().await;
        second.await
    });
    (first.await.unwrap(), second.await.unwrap())
}

/// An Activate of `namespace`/`name` version `version` on `replica`, by
/// the admin.
fn activate_on(
    race: &Race,
    replica: usize,
    namespace: &str,
    name: &str,
    version: u32,
) -> impl Future<Output = Result<proto::ActivateResponse, Status>> + Send + 'static {
    call!(
        race,
        replica,
        activate,
        activate_request(namespace, name, version),
        &race.admin
    )
}

/// Releases two calls that each keep requirements met alone but not
/// together, and asserts what serial execution allows: one wins, the other
/// is refused for REQUIREMENTS, and the stored active set of `namespace`
/// meets every requirement. Whether the second won.
async fn requirement_race<A, B, T, U>(
    race: &Race,
    round: usize,
    namespace: &str,
    first: A,
    second: B,
) -> bool
where
    A: Future<Output = Result<T, Status>> + Send + 'static,
    B: Future<Output = Result<U, Status>> + Send + 'static,
    T: std::fmt::Debug + Send + 'static,
    U: std::fmt::Debug + Send + 'static,
{
    let (first, second) = at_once(first, second).await;
    let winner = one_wins(round, &first, &second, "REQUIREMENTS");
    let unmet = race.unmet_requirements(namespace).await;
    assert_eq!(unmet, Vec::<String>::new(), "round {round}");
    winner == 1
}

/// The rule a FAILED_PRECONDITION names.
fn rule(status: &Status) -> String {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    status
        .get_details_precondition_failure()
        .and_then(|failure| failure.violations.first().map(|v| v.r#type.clone()))
        .unwrap_or_default()
}

/// Asserts that exactly one of two results succeeded and the other was
/// refused for `expected_rule`; returns which one succeeded.
#[track_caller]
fn one_wins<A: std::fmt::Debug, B: std::fmt::Debug>(
    round: usize,
    first: &Result<A, Status>,
    second: &Result<B, Status>,
    expected_rule: &str,
) -> usize {
    match (first, second) {
        (Ok(_), Err(refused)) | (Err(refused), Ok(_)) => {
            assert_eq!(
                rule(refused),
                expected_rule,
                "round {round}: the refusal names its rule: {refused:?}"
            );
            if first.is_ok() { 0 } else { 1 }
        }
        _ => panic!("round {round}: exactly one call may win: {first:?} / {second:?}"),
    }
}

/// `x` and `y` at 1.0.0 (active) and 2.0.0 in `namespace`, `y` 2.0.0
/// requiring `x` `range`; with `activate_x2`, `x` 2.0.0 is active.
async fn seed_pair(race: &Race, namespace: &str, range: &str, activate_x2: bool) {
    race.release(namespace, "x", "1.0.0", &[], true).await;
    race.release(namespace, "x", "2.0.0", &[], activate_x2)
        .await;
    race.release(namespace, "y", "1.0.0", &[], true).await;
    race.release(namespace, "y", "2.0.0", &[("x", range)], false)
        .await;
}

macro_rules! races {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Race::start(crate::helpers::Backend::Sqlite).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Race::start(crate::helpers::Backend::Postgres).await).await;
                }
            )*
        }
    };
}

races!(
    activations_that_break_a_requirement_together_are_judged_in_turn,
    publish_and_activate_racing_an_activation_keeps_requirements_met,
    a_rollback_racing_an_activation_keeps_requirements_met,
    a_rollout_start_racing_an_activation_is_judged_on_the_state_it_follows,
    a_rollout_completion_racing_an_activation_keeps_requirements_met,
    drafts_that_close_a_cycle_together_are_judged_in_turn,
    a_rollout_and_an_activation_of_one_policy_never_both_hold_it,
    approvals_sent_together_both_count_toward_the_threshold,
    one_runtime_id_opened_by_two_subjects_at_once_has_one_holder,
    a_schema_set_racing_an_activation_never_leaves_an_unreported_violation,
    one_idempotency_key_on_two_replicas_activates_once,
    an_import_racing_a_new_policy_of_its_namespace_is_judged_in_turn,
    a_revocation_racing_a_rollout_of_what_the_key_signed_is_judged_in_turn,
    activations_giving_one_data_path_are_judged_in_turn,
);

/// On PostgreSQL alone: on SQLite both callers are one replica, whose own
/// signing key it refuses to revoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_racing_the_revocation_of_its_signing_key_is_judged_in_turn() {
    publish_racing_the_revocation_of_its_key(Race::start(crate::helpers::Backend::Postgres).await)
        .await;
}

/// X 2.0.0 alone is fine, Y 2.0.0 (requiring X ^1) alone is fine; both
/// together break Y's requirement.
async fn activations_that_break_a_requirement_together_are_judged_in_turn(race: Race) {
    for round in 0..ROUNDS {
        let namespace = format!("activate-{round}");
        seed_pair(&race, &namespace, "^1", false).await;
        let x = activate_on(&race, 0, &namespace, "x", 2);
        let y = activate_on(&race, 1, &namespace, "y", 2);
        requirement_race(&race, round, &namespace, x, y).await;
    }
}

/// Publishing Y 2.0.0 with activation, while X 2.0.0 is activated.
async fn publish_and_activate_racing_an_activation_keeps_requirements_met(race: Race) {
    for round in 0..ROUNDS {
        let namespace = format!("publish-{round}");
        race.release(&namespace, "x", "1.0.0", &[], true).await;
        race.release(&namespace, "x", "2.0.0", &[], false).await;
        race.release(&namespace, "y", "1.0.0", &[], true).await;
        race.draft(0, &namespace, "y", &[("x", "^1")])
            .await
            .expect("draft");
        let x = activate_on(&race, 0, &namespace, "x", 2);
        let y = call!(
            race,
            1,
            publish,
            publish_request(&namespace, "y", "2.0.0", true),
            &race.admin
        );
        let published_won = requirement_race(&race, round, &namespace, x, y).await;
        let published = race
            .stored(&format!(
                "SELECT v.state AS line FROM versions v JOIN policies p ON p.id = v.policy_id \
                 WHERE p.namespace = '{namespace}' AND p.name = 'y' AND v.version = 2"
            ))
            .await;
        let expected = if published_won { "PUBLISHED" } else { "DRAFT" };
        assert_eq!(
            published,
            [expected],
            "round {round}: a refused publish with activation publishes nothing"
        );
    }
}

/// X rolls back from 2.0.0 to 1.0.0 while Y 2.0.0 (requiring X ^2) is
/// activated.
async fn a_rollback_racing_an_activation_keeps_requirements_met(race: Race) {
    for round in 0..ROUNDS {
        let namespace = format!("rollback-{round}");
        seed_pair(&race, &namespace, "^2", true).await;
        let rollback = proto::RollbackRequest {
            namespace: namespace.clone(),
            name: "x".into(),
            reason: "race".into(),
            ..Default::default()
        };
        let x = call!(race, 0, rollback, rollback, &race.admin);
        let y = activate_on(&race, 1, &namespace, "y", 2);
        requirement_race(&race, round, &namespace, x, y).await;
    }
}

/// A rollout of Y 2.0.0 (requiring X ^1) starts while X 2.0.0 is
/// activated. In turn both may pass, but only in one order: the rollout
/// judged X 1.0.0 active, so its start revision precedes the activation's.
async fn a_rollout_start_racing_an_activation_is_judged_on_the_state_it_follows(race: Race) {
    for round in 0..ROUNDS {
        let namespace = format!("start-{round}");
        seed_pair(&race, &namespace, "^1", false).await;
        let x = activate_on(&race, 0, &namespace, "x", 2);
        let y = call!(
            race,
            1,
            start_rollout,
            start_request(&namespace, "y", 2),
            &race.admin
        );
        let (x, y) = at_once(x, y).await;
        let activated = x.expect("activating x alone breaks nothing");
        match y {
            Ok(rollout) => {
                assert!(
                    rollout.step_revisions[0] < activated.revision,
                    "round {round}: the rollout passed on X 1.0.0, so it started before X moved: \
                     {rollout:?} / {activated:?}"
                );
            }
            Err(refused) => assert_eq!(rule(&refused), "REQUIREMENTS", "round {round}"),
        }
    }
}

/// The rollout of Y 2.0.0 (requiring X ^1) is promoted (completed) while X
/// 2.0.0 is activated.
async fn a_rollout_completion_racing_an_activation_keeps_requirements_met(race: Race) {
    for round in 0..ROUNDS {
        let namespace = format!("complete-{round}");
        seed_pair(&race, &namespace, "^1", false).await;
        let rollout = race.start_rollout(&namespace, "y", 2).await.expect("start");
        let x = activate_on(&race, 0, &namespace, "x", 2);
        let y = call!(
            race,
            1,
            promote_rollout,
            control_request(&namespace, &rollout.id),
            &race.admin
        );
        requirement_race(&race, round, &namespace, x, y).await;
    }
}

/// `a` drafted requiring `b` on one replica, `b` requiring `a` on the
/// other.
async fn drafts_that_close_a_cycle_together_are_judged_in_turn(race: Race) {
    for round in 0..ROUNDS {
        let namespace = format!("cycle-{round}");
        for name in ["a", "b"] {
            race.release(&namespace, name, "1.0.0", &[], true).await;
        }
        let a = call!(
            race,
            0,
            draft,
            draft_request(&namespace, "a", json!({"v": 2}), &[("b", "^1")]),
            &race.admin
        );
        let b = call!(
            race,
            1,
            draft,
            draft_request(&namespace, "b", json!({"v": 2}), &[("a", "^1")]),
            &race.admin
        );
        let (a, b) = at_once(a, b).await;
        one_wins(round, &a, &b, "REQUIREMENTS");
        let latest = race
            .stored(&format!(
                "SELECT p.name || ' ' || v.requirements AS line \
                 FROM versions v JOIN policies p ON p.id = v.policy_id \
                 WHERE p.namespace = '{namespace}' AND v.version = \
                 (SELECT MAX(w.version) FROM versions w WHERE w.policy_id = v.policy_id) \
                 ORDER BY p.name"
            ))
            .await;
        let requiring = latest.iter().filter(|line| !line.ends_with("[]")).count();
        assert_eq!(
            requiring, 1,
            "round {round}: no cycle is stored: {latest:?}"
        );
    }
}

/// A rollout of P 2 starts while P 3 is activated: either the activation
/// is refused (the rollout holds P), or it came first and the rollout's
/// stable version is the one it activated.
async fn a_rollout_and_an_activation_of_one_policy_never_both_hold_it(race: Race) {
    for round in 0..ROUNDS {
        let namespace = format!("hold-{round}");
        for label in ["1.0.0", "2.0.0", "3.0.0"] {
            race.release(&namespace, "p", label, &[], label == "1.0.0")
                .await;
        }
        let start = call!(
            race,
            0,
            start_rollout,
            start_request(&namespace, "p", 2),
            &race.admin
        );
        let activate = activate_on(&race, 1, &namespace, "p", 3);
        let (start, activate) = at_once(start, activate).await;
        let rollout = start.expect("a free policy's rollout starts");
        match activate {
            Ok(activated) => {
                assert_eq!(
                    rollout.targets[0].stable_version, 3,
                    "round {round}: the activation came first, so the rollout keeps it stable"
                );
                assert!(
                    rollout.step_revisions[0] > activated.revision,
                    "round {round}"
                );
            }
            Err(refused) => {
                assert_eq!(rule(&refused), "ROLLOUT", "round {round}");
                assert_eq!(rollout.targets[0].stable_version, 1, "round {round}");
            }
        }
        let stored = race
            .stored(&format!(
                "SELECT CAST(active_version AS TEXT) AS line FROM policies \
                 WHERE namespace = '{namespace}' AND name = 'p'"
            ))
            .await;
        assert_eq!(
            stored,
            [rollout.targets[0].stable_version.to_string()],
            "round {round}: nothing moves the pointer of a held policy"
        );
    }
}

/// Two approvers approve a rollout that needs two approvals, at once on
/// two replicas: both count, and the rollout starts once.
async fn approvals_sent_together_both_count_toward_the_threshold(race: Race) {
    for round in 0..ROUNDS {
        let namespace = format!("{GATED}{round}");
        race.release(&namespace, "p", "1.0.0", &[], true).await;
        race.release(&namespace, "p", "2.0.0", &[], false).await;
        let pending = race.start_rollout(&namespace, "p", 2).await.expect("start");
        assert_eq!(pending.state, RolloutState::PendingApproval as i32);
        let [bob, carol] = &race.approvers;
        let first = call!(
            race,
            0,
            approve_rollout,
            control_request(&namespace, &pending.id),
            bob
        );
        let second = call!(
            race,
            1,
            approve_rollout,
            control_request(&namespace, &pending.id),
            carol
        );
        let (first, second) = at_once(first, second).await;
        first.expect("bob's approval counts");
        second.expect("carol's approval counts");
        let rollout = race.get_rollout(&namespace, &pending.id).await;
        let mut approvers: Vec<&str> = rollout.approvals.iter().map(|a| a.by.as_str()).collect();
        approvers.sort();
        assert_eq!(approvers, ["bob", "carol"], "round {round}");
        assert_eq!(
            rollout.state,
            RolloutState::Running as i32,
            "round {round}: two approvals of two start the rollout: {rollout:?}"
        );
        let started = race
            .events(&namespace, "p", proto::EventKind::RolloutStarted)
            .await;
        assert_eq!(started, 1, "round {round}: the rollout starts once");
    }
}

/// Two subjects open a stream under one runtime id at once, one on each
/// replica: one holds it, the other is refused.
async fn one_runtime_id_opened_by_two_subjects_at_once_has_one_holder(race: Race) {
    race.release("fleet", "p", "1.0.0", &[], true).await;
    for round in 0..ROUNDS {
        let id = format!("rt-{round}");
        let open = |replica: usize, token: &String| {
            let mut bundle = race.replicas[replica].bundle.clone();
            let request = authorized(
                proto::WatchActiveRequest {
                    namespace: "fleet".into(),
                    runtime: Some(proto::RuntimeIdentity {
                        id: id.clone(),
                        labels: Default::default(),
                    }),
                    ..Default::default()
                },
                token,
            );
            async move {
                let mut stream = bundle.watch_active(request).await?.into_inner();
                let first = stream.message().await?;
                Ok::<_, Status>((stream, first))
            }
        };
        let [dave, erin] = &race.readers;
        let (first, second) = at_once(open(0, dave), open(1, erin)).await;
        let (_held, refused) = match (first, second) {
            (Ok(held), Err(refused)) | (Err(refused), Ok(held)) => (held, refused),
            (first, second) => panic!(
                "round {round}: exactly one subject may hold {id}: {:?} / {:?}",
                first.map(|(_, message)| message.is_some()),
                second.map(|(_, message)| message.is_some())
            ),
        };
        let message = expect_code::<()>(Err(refused), Code::PermissionDenied);
        assert!(message.contains("is held by subject"), "{message}");
    }
}

/// A schema that P 2 violates is set while P 2 is activated: either the
/// activation is refused by the schema, or it came first and SetSchema
/// reports the active version's violation.
async fn a_schema_set_racing_an_activation_never_leaves_an_unreported_violation(race: Race) {
    for round in 0..ROUNDS {
        let namespace = format!("schema-{round}");
        for max in [1, 500] {
            let request = draft_request(&namespace, "p", json!({ "max": max }), &[]);
            call!(race, 0, draft, request, &race.admin)
                .await
                .expect("draft");
            race.publish(&namespace, "p", "", max == 1).await;
        }
        let schema = json!({"type": "object", "properties": {"max": {"maximum": 100}}});
        let set = call!(
            race,
            0,
            set_schema,
            proto::SetSchemaRequest {
                namespace: namespace.clone(),
                name: "p".into(),
                schema: Some(json_to_struct(&schema)),
                reason: "race".into(),
                dry_run: false,
            },
            &race.admin
        );
        let activate = activate_on(&race, 1, &namespace, "p", 2);
        let (set, activate) = at_once(set, activate).await;
        let set = set.expect("a schema is always set");
        match activate {
            Ok(_) => assert!(
                !set.active_version_violations.is_empty(),
                "round {round}: the activation came first, so SetSchema reports it"
            ),
            Err(refused) => {
                assert_eq!(rule(&refused), "SCHEMA", "round {round}");
                assert_eq!(set.active_version_violations, Vec::<String>::new());
            }
        }
    }
}

/// The same Activate with one key reaches both replicas at once: one
/// activation, one revision, the same answer twice; another request under
/// the key is refused.
async fn one_idempotency_key_on_two_replicas_activates_once(race: Race) {
    for round in 0..ROUNDS {
        let namespace = format!("retry-{round}");
        for label in ["1.0.0", "2.0.0", "3.0.0"] {
            race.release(&namespace, "p", label, &[], label == "1.0.0")
                .await;
        }
        // Keys are deployment-wide: each round has its own.
        let keyed = |version: u32, key: &str| proto::ActivateRequest {
            idempotency_key: format!("{key}-{round}"),
            ..activate_request(&namespace, "p", version)
        };
        let first = call!(race, 0, activate, keyed(2, "same"), &race.admin);
        let second = call!(race, 1, activate, keyed(2, "same"), &race.admin);
        let (first, second) = at_once(first, second).await;
        let (first, second) = (first.unwrap(), second.unwrap());
        assert_eq!(first, second, "round {round}: one outcome, replayed");
        let other = call!(race, 0, activate, keyed(3, "other"), &race.admin);
        let conflicting = call!(race, 1, activate, keyed(2, "other"), &race.admin);
        let (other, conflicting) = at_once(other, conflicting).await;
        match (&other, &conflicting) {
            (Ok(_), Err(refused)) | (Err(refused), Ok(_)) => {
                assert_eq!(
                    refused.code(),
                    Code::AlreadyExists,
                    "round {round}: {refused:?}"
                )
            }
            _ => panic!("round {round}: one request per key: {other:?} / {conflicting:?}"),
        }
        let activations = race
            .events(&namespace, "p", proto::EventKind::Activated)
            .await;
        let expected = if other.is_ok() { 3 } else { 2 };
        assert_eq!(
            activations, expected,
            "round {round}: version 1, the keyed activation once, and the other key's winner \
             if it moved the pointer"
        );
    }
}

/// An import of namespace N on one replica while the other creates a new
/// policy in N: the import judges N empty under N's lock, which creating a
/// policy takes too. Either the new policy came first and the import is
/// refused, or the import came first and the new policy was created after
/// every imported one.
async fn an_import_racing_a_new_policy_of_its_namespace_is_judged_in_turn(race: Race) {
    let source = crate::helpers::spawn_app(Backend::Sqlite).await;
    let mut archives = Vec::new();
    for round in 0..ROUNDS {
        let namespace = format!("imported-{round}");
        source
            .release(&namespace, "limits", json!({"v": round}), true)
            .await;
        let exported = crate::cli::policyhub(&source, &["export", &namespace]);
        archives.push(exported.success().as_bytes().to_vec());
    }
    let (mut imported, mut refused) = (0, 0);
    for (round, archive) in archives.into_iter().enumerate() {
        let namespace = format!("imported-{round}");
        let mut client = race.policy(0);
        let chunks = vec![proto::ImportChunk { data: archive }];
        let import = authorized(futures::stream::iter(chunks), &race.admin);
        let import = async move { client.import(import).await.map(tonic::Response::into_inner) };
        let create = call!(
            race,
            1,
            draft,
            draft_request(&namespace, "other", json!({"v": 1}), &[]),
            &race.admin
        );
        let (import, create) = at_once(import, create).await;
        create.unwrap_or_else(|status| panic!("round {round}: the new policy: {status:?}"));
        let ids = race
            .stored(&format!(
                "SELECT name || ' ' || CAST(id AS TEXT) AS line FROM policies \
                 WHERE namespace = '{namespace}'"
            ))
            .await;
        let id_of = |name: &str| -> Option<i64> {
            ids.iter()
                .find_map(|line| line.strip_prefix(&format!("{name} ")))
                .map(|id| id.parse().unwrap())
        };
        match import {
            Ok(_) => {
                imported += 1;
                assert!(
                    id_of("other") > id_of("limits"),
                    "round {round}: the import judged the namespace empty, yet a policy \
                     created before it committed: {ids:?}"
                );
            }
            Err(status) => {
                refused += 1;
                assert_eq!(
                    status.code(),
                    Code::FailedPrecondition,
                    "round {round}: {status:?}"
                );
                assert!(status.message().contains("is not empty"), "{status:?}");
                assert_eq!(id_of("limits"), None, "round {round}: nothing imported");
            }
        }
    }
    println!("{imported} imports went first, {refused} were refused");
}

/// The revocation of the key that signed a version, racing a rollout of
/// that version on the other replica. Serially, either the revocation
/// comes first (the rollout starts with the version signed again) or the
/// rollout does (the revocation is refused, naming it); never the rollout
/// first and the revocation after it.
async fn a_revocation_racing_a_rollout_of_what_the_key_signed_is_judged_in_turn(race: Race) {
    for round in 0..ROUNDS {
        let namespace = format!("revoke-{round}");
        for label in ["1.0.0", "2.0.0"] {
            race.release(&namespace, "p", label, &[], label == "1.0.0")
                .await;
        }
        let signed_by = race.replicas[0]
            .bundle
            .clone()
            .get_signing_keys(authorized(proto::GetSigningKeysRequest {}, &race.admin))
            .await
            .expect("keys")
            .into_inner()
            .signing_key_id;
        let rotate = proto::RotateSigningKeyRequest {
            reason: "race".into(),
        };
        race.policy(0)
            .rotate_signing_key(authorized(rotate, &race.admin))
            .await
            .expect("rotate");
        let revoke = proto::RevokeSigningKeyRequest {
            key_id: signed_by,
            reason: "race".into(),
        };
        let revoke = call!(race, 0, revoke_signing_key, revoke, &race.admin);
        let start = call!(
            race,
            1,
            start_rollout,
            start_request(&namespace, "p", 2),
            &race.admin
        );
        let (revoked, started) = at_once(revoke, start).await;
        let rollout = started.expect("the rollout starts, before or after the revocation");
        match revoked {
            Ok(revoked) => assert!(
                rollout.step_revisions[0] > revoked.revision,
                "round {round}: the revocation ({}) came after the rollout ({}) started",
                revoked.revision,
                rollout.step_revisions[0]
            ),
            Err(refused) => {
                assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
                assert!(
                    refused.message().contains(&rollout.id),
                    "round {round}: {refused:?}"
                );
            }
        }
        call!(
            race,
            0,
            abort_rollout,
            control_request(&namespace, &rollout.id),
            &race.admin
        )
        .await
        .expect("abort");
    }
}

/// Replica 1 publishes while replica 0 revokes replica 1's signing key. In
/// turn: the publish first, and the revocation signs its version again; or
/// the revocation first, and the publish is refused. Never a version left
/// signed by the revoked key.
async fn publish_racing_the_revocation_of_its_key(race: Race) {
    for round in 0..ROUNDS {
        let namespace = format!("signs-{round}");
        race.release(&namespace, "p", "1.0.0", &[], true).await;
        // Replica 1 signs with a key of its own, new each round.
        let rotate = proto::RotateSigningKeyRequest {
            reason: "race".into(),
        };
        let key_id = race
            .policy(1)
            .rotate_signing_key(authorized(rotate, &race.admin))
            .await
            .expect("rotate")
            .into_inner()
            .signing_key_id;
        race.draft(1, &namespace, "p", &[]).await.expect("draft");
        let revoke = proto::RevokeSigningKeyRequest {
            key_id: key_id.clone(),
            reason: "race".into(),
        };
        let revoke = call!(race, 0, revoke_signing_key, revoke, &race.admin);
        let publish = call!(
            race,
            1,
            publish,
            publish_request(&namespace, "p", "2.0.0", false),
            &race.admin
        );
        let (revoked, published) = at_once(revoke, publish).await;
        revoked.expect("the revocation passes, before or after the publish");
        if let Err(refused) = published {
            assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
            assert!(
                refused.message().contains(&key_id),
                "round {round}: {refused:?}"
            );
        }
        let left = race
            .stored(&format!(
                "SELECT CAST(id AS TEXT) AS line FROM versions WHERE key_id = '{key_id}'"
            ))
            .await;
        assert!(
            left.is_empty(),
            "round {round}: versions {left:?} left signed by the revoked key"
        );
    }
}

/// Two policies of a namespace served to OPA that give one data path,
/// each activated on a replica of its own: one wins, the other is refused
/// (each replica judges on the active set as committed, not as its index
/// has heard of it yet), and the namespace's bundle is still built.
async fn activations_giving_one_data_path_are_judged_in_turn(race: Race) {
    for round in 0..ROUNDS {
        let namespace = format!("{OPA}{round}");
        for (name, limit) in [("x", 1), ("y", 2)] {
            let mut data = serde_json::Map::new();
            data.insert(namespace.clone(), json!({ "limit": limit }));
            let body = json!({ "data": data });
            let request = draft_request(&namespace, name, body, &[]);
            race.policy(0)
                .draft(authorized(request, &race.admin))
                .await
                .expect("draft");
            race.publish(&namespace, name, "", false).await;
        }
        let x = activate_on(&race, 0, &namespace, "x", 1);
        let y = activate_on(&race, 1, &namespace, "y", 1);
        let (x, y) = at_once(x, y).await;
        one_wins(round, &x, &y, "STATE");
        for replica in &race.replicas {
            let request = proto::GetOpaBundleRequest {
                namespace: namespace.clone(),
                ..Default::default()
            };
            replica
                .bundle
                .clone()
                .get_opa_bundle(authorized(request, &race.readers[0]))
                .await
                .unwrap_or_else(|status| panic!("round {round}: the bundle: {status:?}"));
        }
    }
}
