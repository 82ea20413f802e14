//! SeaORM entities, one module per table of `migrations/`.

pub mod policies {
    use sea_orm::entity::prelude::*;

    /// A policy and its active pointer.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "policies")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub namespace: String,
        pub name: String,
        /// Canonical JSON of the JSON Schema, if any.
        pub schema: Option<String>,
        pub active_version: Option<i32>,
        /// Revision of the transaction that last moved `active_version`.
        pub active_revision: Option<i64>,
        pub created_at: DateTimeUtc,
        /// The live rollout that holds the policy.
        pub rollout_id: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod versions {
    use sea_orm::entity::prelude::*;

    /// One version row; only a DRAFT row ever changes, and only its state
    /// and publish stamp (enforced by triggers).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "versions")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub policy_id: i64,
        pub version: i32,
        pub state: String,
        /// Canonical JSON of the body.
        pub body: String,
        pub digest: String,
        pub label: Option<String>,
        pub change_notes: String,
        pub created_by: String,
        pub created_at: DateTimeUtc,
        pub published_by: Option<String>,
        pub published_at: Option<DateTimeUtc>,
        pub jws: Option<String>,
        pub key_id: Option<String>,
        /// JSON list of `{name, range}`.
        pub requirements: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod events {
    use sea_orm::entity::prelude::*;

    /// One entry of the append-only audit log.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "events")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub kind: String,
        pub policy_id: Option<i64>,
        pub namespace: Option<String>,
        pub name: Option<String>,
        pub actor: String,
        pub at: DateTimeUtc,
        pub reason: String,
        pub request_id: String,
        pub previous_version: Option<i32>,
        pub new_version: Option<i32>,
        pub revision: Option<i64>,
        pub key_id: Option<String>,
        pub rollout_id: Option<String>,
        /// Its link in the hash chain; `None` until sealed.
        pub hash: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod signing_keys {
    use sea_orm::entity::prelude::*;

    /// Every public key that ever signed, so old bundles stay verifiable.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "signing_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub key_id: String,
        /// The raw Ed25519 public key, base64url.
        pub public_key: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod idempotency_records {
    use sea_orm::entity::prelude::*;

    /// The outcome of a mutation made with an idempotency key.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "idempotency_records")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub method: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        /// Digest of the canonical request.
        pub fingerprint: String,
        pub actor: String,
        /// The outcome, as JSON.
        pub response: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod runtimes {
    use sea_orm::entity::prelude::*;

    /// One runtime of a namespace, as last flushed by the replica holding
    /// its stream. `labels`, `names` and `policies` are JSON.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "runtimes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub namespace: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub runtime_id: String,
        pub subject: String,
        pub labels: String,
        pub names: String,
        pub connected: bool,
        pub replica: String,
        pub last_seen: DateTimeUtc,
        pub applied_revision: i64,
        pub policies: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod replicas {
    use sea_orm::entity::prelude::*;

    /// A serving replica and its latest heartbeat.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "replicas")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub last_seen: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod rollouts {
    use sea_orm::entity::prelude::*;

    /// A rollout: its plan and progress as a JSON document.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "rollouts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub namespace: String,
        pub state: String,
        /// `domain::rollout::Rollout` as JSON.
        pub spec: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod decisions {
    use sea_orm::entity::prelude::*;

    /// A decision an OPA uploaded.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "decisions")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub namespace: String,
        pub decision_id: String,
        pub runtime_id: String,
        pub path: String,
        /// Canonical JSON.
        pub input: Option<String>,
        /// Canonical JSON; `None` for an undefined decision.
        pub result: Option<String>,
        pub revision: Option<i64>,
        pub decided_at: DateTimeUtc,
        pub received_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod decision_counts {
    use sea_orm::entity::prelude::*;

    /// How many decisions a namespace keeps.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "decision_counts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub namespace: String,
        pub kept: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod rollout_measurements {
    use sea_orm::entity::prelude::*;

    /// One measurement of a rollout's analysis.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "rollout_measurements")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub rollout_id: String,
        pub analysis: String,
        pub step: i32,
        /// `domain::rollout::MeasurementPhase` by name.
        pub phase: String,
        pub value: Option<f64>,
        pub success_condition: String,
        pub message: String,
        pub taken_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod schedules {
    use sea_orm::entity::prelude::*;

    /// A schedule: its entries and state as a JSON document.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "schedules")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub namespace: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// `domain::schedule::Schedule` as JSON.
        pub spec: String,
        /// When it fires next; `None` while paused.
        pub next_fire_at: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod checkpoints {
    use sea_orm::entity::prelude::*;

    /// A signed checkpoint of the event log's chain.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "checkpoints")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub revision: i64,
        pub last_event_id: i64,
        pub chain_head: String,
        pub at: DateTimeUtc,
        pub key_id: String,
        pub jws: String,
        /// The Merkle tree it signs (null on checkpoints from before it).
        pub tree_size: Option<i64>,
        pub root_hash: Option<String>,
        /// The C2SP signed note of the tree.
        pub note: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod checkpoint_cosignatures {
    use sea_orm::entity::prelude::*;

    /// A witness's cosignature of a checkpoint, verified when stored.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "checkpoint_cosignatures")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub checkpoint_id: i64,
        /// The witness's key name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub witness: String,
        /// Its signature line (`— <name> <base64>`, with the newline).
        pub line: String,
        pub at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod log_hashes {
    use sea_orm::entity::prelude::*;

    /// A stored hash of the event log's Merkle tree, at its C2SP
    /// tlog-tiles stored hash index.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "log_hashes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        pub hash: Vec<u8>,
        /// The event whose leaf this is (null for a subtree's hash).
        pub event_id: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod log_origin {
    use sea_orm::entity::prelude::*;

    /// The origin line naming this deployment's log, made with it.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "log_origin")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub origin: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod subscriptions {
    use sea_orm::entity::prelude::*;

    /// A webhook subscription and its place in the outbox.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "subscriptions")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        /// Empty for a deployment-wide subscription.
        pub namespace: String,
        pub name: String,
        pub url: String,
        /// Event kinds, comma-separated.
        pub event_kinds: String,
        pub format: String,
        pub secret: String,
        pub enabled: bool,
        pub disabled_reason: String,
        /// The last outbox event id delivered or passed over.
        pub delivered_through: i64,
        pub consecutive_failures: i32,
        pub next_attempt_at: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod outbox {
    use sea_orm::entity::prelude::*;

    /// An event to announce, written in the event's transaction.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: i64,
        pub kind: String,
        /// The event's namespace; none for a deployment-wide event.
        pub namespace: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod deliveries {
    use sea_orm::entity::prelude::*;

    /// One delivery attempt of a subscription.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "deliveries")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub subscription_id: i64,
        /// 0 for a test message.
        pub event_id: i64,
        pub attempt: i32,
        pub outcome: String,
        pub status_code: i32,
        pub latency_ms: i32,
        pub error: String,
        pub at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
