//! The roles, the RPCs and the one table of the role each RPC needs.

use std::{fmt, str::FromStr};

use crate::domain::Namespace;

/// A role, granted per namespace. Reader, author, publisher, operator and
/// admin each include the ones before; approver stands apart (it includes
/// reader), so approving a rollout is never implied by the power to start
/// one; admin includes every role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Get, list, watch.
    Reader,
    /// Draft and discard.
    Author,
    /// Publish.
    Publisher,
    /// Activate, roll back, run rollouts.
    Operator,
    /// Approve other principals' rollouts.
    Approver,
    /// Everything, including schemas and signing keys.
    Admin,
}

impl Role {
    /// Whether holding this role grants `needed`.
    pub fn includes(self, needed: Role) -> bool {
        use Role::*;
        let rank = |role| match role {
            Reader => Some(0),
            Author => Some(1),
            Publisher => Some(2),
            Operator => Some(3),
            Approver | Admin => None,
        };
        match (self, needed) {
            (Admin, _) => true,
            (held, needed) if held == needed => true,
            (Approver, Reader) => true,
            (held, needed) => {
                matches!((rank(held), rank(needed)), (Some(held), Some(needed)) if held >= needed)
            }
        }
    }
}

impl Role {
    /// Every role, in the order of the authentication guide's table.
    pub const ALL: [Role; 6] = [
        Role::Reader,
        Role::Author,
        Role::Publisher,
        Role::Operator,
        Role::Admin,
        Role::Approver,
    ];
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "reader" => Role::Reader,
            "author" => Role::Author,
            "publisher" => Role::Publisher,
            "operator" => Role::Operator,
            "approver" => Role::Approver,
            "admin" => Role::Admin,
            other => {
                let roles: Vec<String> = Role::ALL.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "unknown role {other:?}: use one of {}",
                    roles.join(", ")
                ));
            }
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Reader => "reader",
            Role::Author => "author",
            Role::Publisher => "publisher",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        })
    }
}

/// Every RPC that needs a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Draft,
    DiscardDraft,
    Publish,
    Activate,
    Rollback,
    GetVersion,
    ListVersions,
    GetPolicy,
    ListPolicies,
    ListEvents,
    ListCheckpoints,
    GetInclusionProof,
    DiffVersions,
    SetSchema,
    GetActive,
    WatchActive,
    GetSigningKeys,
    GetOpaBundle,
    GetOpaDiscovery,
    GetOpaSigningKeys,
    GetConsistencyProof,
    GetRestoreProof,
    GetBundleProof,
    RotateSigningKey,
    RevokeSigningKey,
    ReportStatus,
    ReportStatusStream,
    ReportOpaStatus,
    UploadOpaDecisions,
    ListRuntimes,
    ListDecisions,
    AnalyzeImpact,
    GetPolicyStatus,
    StartRollout,
    GetRollout,
    ListRollouts,
    PauseRollout,
    ResumeRollout,
    PromoteRollout,
    AbortRollout,
    ApproveRollout,
    ReceiveAlerts,
    SetSchedule,
    GetSchedule,
    ListSchedules,
    PauseSchedule,
    ResumeSchedule,
    DeleteSchedule,
    Backup,
    RecordRestore,
    Export,
    Import,
    CreateSubscription,
    GetSubscription,
    ListSubscriptions,
    UpdateSubscription,
    DeleteSubscription,
    TestSubscription,
    ListDeliveries,
}

impl Rpc {
    /// Every RPC.
    pub const ALL: [Rpc; 59] = [
        Rpc::Draft,
        Rpc::DiscardDraft,
        Rpc::Publish,
        Rpc::Activate,
        Rpc::Rollback,
        Rpc::GetVersion,
        Rpc::ListVersions,
        Rpc::GetPolicy,
        Rpc::ListPolicies,
        Rpc::ListEvents,
        Rpc::ListCheckpoints,
        Rpc::GetInclusionProof,
        Rpc::DiffVersions,
        Rpc::SetSchema,
        Rpc::GetActive,
        Rpc::WatchActive,
        Rpc::GetSigningKeys,
        Rpc::GetOpaBundle,
        Rpc::GetOpaDiscovery,
        Rpc::GetOpaSigningKeys,
        Rpc::GetConsistencyProof,
        Rpc::GetRestoreProof,
        Rpc::GetBundleProof,
        Rpc::RotateSigningKey,
        Rpc::RevokeSigningKey,
        Rpc::ReportStatus,
        Rpc::ReportStatusStream,
        Rpc::ReportOpaStatus,
        Rpc::UploadOpaDecisions,
        Rpc::ListRuntimes,
        Rpc::ListDecisions,
        Rpc::AnalyzeImpact,
        Rpc::GetPolicyStatus,
        Rpc::StartRollout,
        Rpc::GetRollout,
        Rpc::ListRollouts,
        Rpc::PauseRollout,
        Rpc::ResumeRollout,
        Rpc::PromoteRollout,
        Rpc::AbortRollout,
        Rpc::ApproveRollout,
        Rpc::ReceiveAlerts,
        Rpc::SetSchedule,
        Rpc::GetSchedule,
        Rpc::ListSchedules,
        Rpc::PauseSchedule,
        Rpc::ResumeSchedule,
        Rpc::DeleteSchedule,
        Rpc::Backup,
        Rpc::RecordRestore,
        Rpc::Export,
        Rpc::Import,
        Rpc::CreateSubscription,
        Rpc::GetSubscription,
        Rpc::ListSubscriptions,
        Rpc::UpdateSubscription,
        Rpc::DeleteSubscription,
        Rpc::TestSubscription,
        Rpc::ListDeliveries,
    ];

    /// Whether the RPC changes state, and so counts against the caller's
    /// mutation quota.
    pub fn mutates(self) -> bool {
        matches!(
            self,
            Rpc::Draft
                | Rpc::DiscardDraft
                | Rpc::Publish
                | Rpc::Activate
                | Rpc::Rollback
                | Rpc::SetSchema
                | Rpc::StartRollout
                | Rpc::PauseRollout
                | Rpc::ResumeRollout
                | Rpc::PromoteRollout
                | Rpc::AbortRollout
                | Rpc::ApproveRollout
                | Rpc::ReceiveAlerts
                | Rpc::SetSchedule
                | Rpc::PauseSchedule
                | Rpc::ResumeSchedule
                | Rpc::DeleteSchedule
                | Rpc::Import
                | Rpc::RecordRestore
                | Rpc::CreateSubscription
                | Rpc::UpdateSubscription
                | Rpc::DeleteSubscription
                | Rpc::TestSubscription
        )
    }

    /// Whether the RPC acts within namespaces, rather than on the whole
    /// deployment or on the caller alone.
    pub fn is_namespaced(self) -> bool {
        !matches!(
            self,
            Rpc::GetSigningKeys
                | Rpc::GetOpaSigningKeys
                | Rpc::GetConsistencyProof
                | Rpc::GetRestoreProof
                | Rpc::RotateSigningKey
                | Rpc::RevokeSigningKey
                | Rpc::Backup
                | Rpc::RecordRestore
                | Rpc::Import
                | Rpc::ListCheckpoints
        )
    }

    /// The role each RPC needs in the namespaces it touches.
    pub fn role(self) -> Role {
        match self {
            Rpc::GetVersion
            | Rpc::ListVersions
            | Rpc::GetPolicy
            | Rpc::ListPolicies
            | Rpc::ListEvents
            | Rpc::ListCheckpoints
            | Rpc::GetInclusionProof
            | Rpc::DiffVersions
            | Rpc::GetActive
            | Rpc::WatchActive
            | Rpc::GetSigningKeys
            | Rpc::GetOpaBundle
            | Rpc::GetOpaDiscovery
            | Rpc::GetOpaSigningKeys
            | Rpc::GetConsistencyProof
            | Rpc::GetRestoreProof
            | Rpc::GetBundleProof
            | Rpc::ReportStatus
            | Rpc::ReportStatusStream
            | Rpc::ReportOpaStatus
            | Rpc::UploadOpaDecisions
            | Rpc::ListRuntimes
            | Rpc::GetPolicyStatus
            | Rpc::GetRollout
            | Rpc::ListRollouts
            | Rpc::GetSchedule
            | Rpc::ListSchedules
            | Rpc::Export => Role::Reader,
            Rpc::Draft | Rpc::DiscardDraft | Rpc::ListDecisions | Rpc::AnalyzeImpact => {
                Role::Author
            }
            Rpc::Publish => Role::Publisher,
            Rpc::Activate
            | Rpc::Rollback
            | Rpc::StartRollout
            | Rpc::PauseRollout
            | Rpc::ResumeRollout
            | Rpc::PromoteRollout
            | Rpc::AbortRollout
            | Rpc::ReceiveAlerts
            | Rpc::SetSchedule
            | Rpc::PauseSchedule
            | Rpc::ResumeSchedule
            | Rpc::DeleteSchedule
            | Rpc::CreateSubscription
            | Rpc::GetSubscription
            | Rpc::ListSubscriptions
            | Rpc::UpdateSubscription
            | Rpc::DeleteSubscription
            | Rpc::TestSubscription
            | Rpc::ListDeliveries => Role::Operator,
            Rpc::ApproveRollout => Role::Approver,
            Rpc::SetSchema
            | Rpc::RotateSigningKey
            | Rpc::RevokeSigningKey
            | Rpc::Backup
            | Rpc::RecordRestore
            | Rpc::Import => Role::Admin,
        }
    }
}

impl FromStr for Rpc {
    type Err = String;

    /// A method's name, as `WhoAmI` lists it.
    fn from_str(name: &str) -> Result<Self, String> {
        Rpc::ALL
            .into_iter()
            .find(|rpc| format!("{rpc:?}") == name)
            .ok_or_else(|| {
                format!("{name:?} is not a method that needs a role: name one as WhoAmI lists them, such as \"Activate\"")
            })
    }
}

/// A role in one namespace, or in all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `None` for `*`.
    pub namespace: Option<Namespace>,
    /// The role.
    pub role: Role,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{namespace}:{}", self.role),
            None => write!(f, "*:{}", self.role),
        }
    }
}

impl FromStr for Grant {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (namespace, role) = text
            .split_once(':')
            .ok_or_else(|| format!("grant {text:?} is not \"<namespace>:<role>\""))?;
        let namespace = match namespace {
            "*" => None,
            namespace => Some(
                Namespace::parse("namespace", namespace)
                    .map_err(|error| format!("grant {text:?}: {error}"))?,
            ),
        };
        Ok(Grant {
            namespace,
            role: role
                .parse()
                .map_err(|error| format!("grant {text:?}: {error}"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leading comment of every method the server serves, by name.
    fn method_comments() -> std::collections::BTreeMap<String, String> {
        use prost::Message;
        let set =
            prost_types::FileDescriptorSet::decode(super::super::super::proto::FILE_DESCRIPTOR_SET)
                .unwrap();
        let mut comments = std::collections::BTreeMap::new();
        for file in set.file {
            let locations = file.source_code_info.clone().unwrap_or_default().location;
            for (service_index, service) in file.service.iter().enumerate() {
                for (method_index, method) in service.method.iter().enumerate() {
                    // FileDescriptorProto.service = 6, ServiceDescriptorProto.method = 2.
                    let path = [6, service_index as i32, 2, method_index as i32];
                    let comment = locations
                        .iter()
                        .find(|location| location.path == path)
                        .map(|location| location.leading_comments().to_owned())
                        .unwrap_or_default();
                    comments.insert(method.name().to_owned(), comment);
                }
            }
        }
        comments
    }

    /// Each RPC's comment in the proto (what `grpcurl describe` shows) and
    /// the role table of the book's authentication guide name the role the
    /// server requires.
    #[test]
    fn the_proto_and_the_auth_guide_name_the_role_the_server_requires() {
        let comments = method_comments();
        let guide = include_str!("../../../docs/src/guides/auth.md");
        let table: Vec<(Role, &str)> = guide
            .split("| role | may |\n|---|---|\n")
            .nth(1)
            .expect("the guide has the role table")
            .lines()
            .take_while(|line| line.starts_with('|'))
            .map(|line| {
                let mut cells = line.split('|').skip(1);
                let role = cells.next().unwrap().trim().trim_matches('`');
                (role.parse().unwrap(), cells.next().unwrap())
            })
            .collect();
        for rpc in Rpc::ALL {
            let name = format!("{rpc:?}");
            let comment = &comments[&name];
            let said = comment
                .split("Role: ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_alphabetic()).next())
                .unwrap_or_else(|| panic!("the comment of {name} names no role: {comment}"));
            assert_eq!(
                said.parse::<Role>(),
                Ok(rpc.role()),
                "proto comment of {name}"
            );
            let rows: Vec<Role> = table
                .iter()
                .filter(|(_, may)| {
                    may.split(|c: char| !c.is_ascii_alphanumeric())
                        .any(|word| word == name)
                })
                .map(|(role, _)| *role)
                .collect();
            assert_eq!(rows, [rpc.role()], "README role table row of {name}");
        }
    }
}
