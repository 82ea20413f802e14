//! Who may do what.
//!
//! Authentication happens once per request, in a layer in front of both
//! services ([`Authenticated`]): a bearer JWT in the `authorization` header
//! is verified with the keys of the trusted issuer its `iss` names
//! (signature, `iss`, `aud`, `exp`/`nbf` with leeway, and an algorithm
//! allow-list), or, without one, a client certificate's SPIFFE ID is taken,
//! and becomes a [`Caller`] in the request's extensions. The verified `sub`
//! is the actor of every event; nothing else the client says about itself
//! is trusted.
//!
//! Authorization happens in the handlers, which know the namespaces a request
//! touches: [`Rpc::role`] is the one table of the role each RPC needs, and
//! [`Caller::authorize`] checks it against the caller's grants. Grants are
//! `"<namespace>:<role>"` or `"*:<role>"`, from an issuer's roles claim or
//! from the role bindings ([`bindings`]); roles are ordered `reader < author < publisher < operator < admin`, each including
//! the ones before it.

use tonic::{Request, metadata::MetadataMap};

use super::quotas::Quotas;
use crate::domain::{Error, Namespace, NamespaceScope, RequestContext, Result};

pub mod bindings;
mod certificates;
mod events;
mod keys;
mod layer;
mod roles;
mod tokens;

pub use certificates::spiffe_id;
pub use events::EventAccess;
pub use keys::{FetchLabels, Instruments, IssuerLabel, Remote};
pub use layer::{Authenticated, PeerIdentity};
pub use roles::{Grant, Role, Rpc};
pub use tokens::{Authenticator, SignIn};

/// The verified identity of a caller and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Recorded as the actor of every event the request causes.
    pub subject: String,
    /// Who vouched for it: a token's issuer, or `client certificate`.
    pub issuer: String,
    /// The roles it holds, each with what gave it.
    pub grants: Vec<HeldGrant>,
}

/// A grant a caller holds and what gave it: `claim "roles"`, `binding
/// "payments-operators"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldGrant {
    pub grant: Grant,
    pub by: String,
}

/// Where a caller needs an RPC's role.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    /// In this namespace.
    In(&'a Namespace),
    /// In at least one namespace.
    Anywhere,
    /// In every namespace: a `*` grant.
    Everywhere,
}

/// Namespaces a caller may read, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readable {
    /// Every namespace.
    All,
    /// Only these.
    Only(Vec<Namespace>),
}

/// The subject recorded for requests served with authentication disabled.
pub const ANONYMOUS: &str = "anonymous";

impl Caller {
    /// The caller of `--insecure` mode: anonymous, admin everywhere.
    pub fn anonymous() -> Self {
        Caller {
            subject: ANONYMOUS.to_owned(),
            issuer: "--insecure".into(),
            grants: vec![HeldGrant {
                grant: Grant {
                    namespace: None,
                    role: Role::Admin,
                },
                by: "--insecure".into(),
            }],
        }
    }

    /// Refuses unless the caller may call `rpc` in `namespace`.
    pub fn authorize(&self, rpc: Rpc, namespace: &Namespace) -> Result<()> {
        self.require(rpc, Scope::In(namespace))
    }

    /// Refuses unless the caller holds `rpc`'s role in some namespace (for
    /// calls that touch no namespace in particular).
    pub fn authorize_anywhere(&self, rpc: Rpc) -> Result<()> {
        self.require(rpc, Scope::Anywhere)
    }

    /// Refuses unless the caller holds `rpc`'s role in every namespace (a
    /// `*` grant), for deployment-wide operations.
    pub fn authorize_everywhere(&self, rpc: Rpc) -> Result<()> {
        self.require(rpc, Scope::Everywhere)
    }

    /// Refuses unless the caller holds the `*:admin` grant: `rpc` on a
    /// deployment-wide resource of an RPC otherwise namespaced (a
    /// deployment-wide subscription).
    pub fn authorize_admin(&self, rpc: Rpc) -> Result<()> {
        self.require_role(rpc, Role::Admin, Scope::Everywhere)
    }

    fn require(&self, rpc: Rpc, scope: Scope<'_>) -> Result<()> {
        self.require_role(rpc, rpc.role(), scope)
    }

    fn require_role(&self, rpc: Rpc, role: Role, scope: Scope<'_>) -> Result<()> {
        let covers = |grant: &Grant| match (scope, &grant.namespace) {
            (_, None) | (Scope::Anywhere, Some(_)) => true,
            (Scope::In(namespace), Some(granted)) => granted == namespace,
            (Scope::Everywhere, Some(_)) => false,
        };
        if self
            .grants()
            .any(|grant| grant.role.includes(role) && covers(grant))
        {
            return Ok(());
        }
        let needed = match scope {
            Scope::In(namespace) => {
                format!("in namespace {namespace}: it needs the {role} role there")
            }
            Scope::Anywhere => format!(": it needs the {role} role in some namespace"),
            Scope::Everywhere => format!(": it needs the \"*:{role}\" grant"),
        };
        let separator = if matches!(scope, Scope::In(_)) {
            " "
        } else {
            ""
        };
        Err(Error::PermissionDenied(format!(
            "{} may not call {rpc:?}{separator}{needed}",
            self.subject
        )))
    }

    /// The grants it holds.
    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.iter().map(|held| &held.grant)
    }

    /// What gives the caller `rpc` in `namespace` (`None`: everywhere), or
    /// why it may not call it.
    pub fn check(&self, rpc: Rpc, namespace: Option<&Namespace>) -> Result<&HeldGrant> {
        match namespace {
            Some(namespace) => self.authorize(rpc, namespace)?,
            None => self.authorize_everywhere(rpc)?,
        }
        let role = rpc.role();
        Ok(self
            .grants
            .iter()
            .find(|held| {
                held.grant.role.includes(role)
                    && (held.grant.namespace.is_none()
                        || held.grant.namespace.as_ref() == namespace)
            })
            .expect("an authorized caller holds a grant that covers the call"))
    }

    /// The namespaced RPCs the caller may call in `namespace`.
    pub fn allowed_in(&self, namespace: &Namespace) -> Vec<Rpc> {
        Rpc::ALL
            .into_iter()
            .filter(|rpc| rpc.is_namespaced() && self.authorize(*rpc, namespace).is_ok())
            .collect()
    }

    /// The namespaces the caller may read.
    pub fn readable(&self) -> Readable {
        if self.grants().any(|grant| grant.namespace.is_none()) {
            return Readable::All;
        }
        let mut namespaces: Vec<Namespace> = self
            .grants()
            .filter_map(|grant| grant.namespace.clone())
            .collect();
        namespaces.sort();
        namespaces.dedup();
        Readable::Only(namespaces)
    }
}

/// Longest `x-request-id` taken from a caller; a longer one is replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The header (and metadata key) a caller names its request with.
const REQUEST_ID: &str = "x-request-id";

fn request_id(metadata: &MetadataMap) -> String {
    request_id_of(
        metadata
            .get(REQUEST_ID)
            .and_then(|value| value.to_str().ok()),
    )
}

/// The request id a caller gave, or a new one.
fn request_id_of(given: Option<&str>) -> String {
    given
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// A request's verified caller and request id, before authorization.
#[derive(Debug, Clone)]
pub struct Identified {
    caller: Caller,
    request_id: String,
}

/// The caller of a request, as the authentication interceptor verified it.
pub fn identify<T>(request: &Request<T>) -> Result<Identified> {
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Error::Unauthenticated("no authenticated caller".into()))?;
    Ok(Identified {
        caller,
        request_id: request_id(request.metadata()),
    })
}

impl Identified {
    /// `caller`, of a request with `headers`, found as the gRPC port's
    /// layer finds one: for a request handled without that layer.
    pub fn direct(caller: Caller, headers: &http::HeaderMap) -> Self {
        Identified {
            caller,
            request_id: request_id_of(
                headers
                    .get(REQUEST_ID)
                    .and_then(|value| value.to_str().ok()),
            ),
        }
    }

    /// Checks a deployment-wide `rpc`; the context records the caller.
    pub fn authorize_everywhere(&self, rpc: Rpc) -> Result<RequestContext> {
        self.caller.authorize_everywhere(rpc)?;
        Ok(self.context())
    }

    fn context(&self) -> RequestContext {
        RequestContext {
            actor: self.caller.subject.clone(),
            request_id: self.request_id.clone(),
        }
    }

    /// The caller.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Checks `rpc` in `namespace`; the context records the caller as actor.
    pub fn authorize(&self, rpc: Rpc, namespace: &Namespace) -> Result<RequestContext> {
        self.caller.authorize(rpc, namespace)?;
        Ok(self.context())
    }

    /// Admits the caller to `rpc` in every one of `namespaces` (at least
    /// one): the one step of every handler, whatever the transport. The
    /// caller needs `rpc`'s role in each, and a mutation spends its quota.
    pub fn admit<'a>(
        &self,
        rpc: Rpc,
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        quotas: &Quotas,
    ) -> Result<RequestContext> {
        let mut namespaces = namespaces.into_iter().peekable();
        if namespaces.peek().is_none() {
            return Err(Error::invalid("targets", "names no policy"));
        }
        for namespace in namespaces {
            self.caller.authorize(rpc, namespace)?;
        }
        if rpc.mutates() {
            quotas.admit_mutation(&self.caller.subject)?;
        }
        Ok(self.context())
    }

    /// Refuses unless the caller may call `rpc` in every namespace of
    /// `scope` (everywhere, for all of them).
    pub fn authorize_scope(&self, rpc: Rpc, scope: &NamespaceScope) -> Result<()> {
        match scope {
            NamespaceScope::All => self.caller.authorize_everywhere(rpc),
            NamespaceScope::One(namespace) => self.caller.authorize(rpc, namespace),
            NamespaceScope::Among(namespaces) => namespaces
                .iter()
                .try_for_each(|namespace| self.caller.authorize(rpc, namespace)),
        }
    }

    /// Admits the caller to a listing: of the namespace it asked for (when
    /// allowed), or of every namespace it may read.
    pub fn admit_listing(&self, rpc: Rpc, namespace: Option<Namespace>) -> Result<NamespaceScope> {
        if let Some(namespace) = namespace {
            self.caller.authorize(rpc, &namespace)?;
            return Ok(NamespaceScope::One(namespace));
        }
        Ok(match self.caller.readable() {
            Readable::All => NamespaceScope::All,
            Readable::Only(namespaces) => NamespaceScope::Among(namespaces),
        })
    }
}

/// How requests are authenticated.
#[derive(Clone)]
pub enum Authentication {
    /// Bearer tokens, and client certificates' SPIFFE IDs.
    Tokens(Box<Authenticator>),
    /// `--insecure`: everyone is [`Caller::anonymous`].
    Disabled,
}

impl Authentication {
    /// The caller of a request with these headers, over a connection whose
    /// client certificate proved `peer` (a SPIFFE ID).
    pub async fn caller(&self, headers: &http::HeaderMap, peer: Option<&str>) -> Result<Caller> {
        let authenticator = match self {
            Authentication::Tokens(authenticator) => authenticator,
            Authentication::Disabled => return Ok(Caller::anonymous()),
        };
        let Some(header) = headers.get(http::header::AUTHORIZATION) else {
            return match peer {
                Some(id) => Ok(authenticator.spiffe_caller(id)),
                None => Err(Error::Unauthenticated(
                    "no credentials: send \"authorization: Bearer <token>\"".into(),
                )),
            };
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                Error::Unauthenticated(
                    "the authorization metadata is not \"Bearer <token>\"".into(),
                )
            })?;
        authenticator.authenticate(token).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// alice, holding `grants` by her token's `roles` claim.
    pub(super) fn caller(grants: &[&str]) -> Caller {
        Caller {
            subject: "alice".into(),
            issuer: "issuer".into(),
            grants: grants
                .iter()
                .map(|grant| HeldGrant {
                    grant: grant.parse().unwrap(),
                    by: "claim \"roles\"".into(),
                })
                .collect(),
        }
    }

    fn ns(name: &str) -> Namespace {
        Namespace::parse("namespace", name).unwrap()
    }

    #[test]
    fn roles_include_the_ones_below() {
        let publisher = caller(&["payments:publisher"]);
        assert!(publisher.authorize(Rpc::Publish, &ns("payments")).is_ok());
        assert!(publisher.authorize(Rpc::Draft, &ns("payments")).is_ok());
        assert!(publisher.authorize(Rpc::GetActive, &ns("payments")).is_ok());
        assert!(publisher.authorize(Rpc::Activate, &ns("payments")).is_err());
        assert!(publisher.authorize(Rpc::Draft, &ns("search")).is_err());
        let admin = caller(&["*:admin"]);
        assert!(admin.authorize(Rpc::SetSchema, &ns("anything")).is_ok());
        let operator = caller(&["payments:operator"]);
        assert!(operator.authorize(Rpc::SetSchema, &ns("payments")).is_err());
        assert!(
            operator
                .authorize(Rpc::StartRollout, &ns("payments"))
                .is_ok()
        );
        assert!(
            operator
                .authorize(Rpc::ApproveRollout, &ns("payments"))
                .is_err(),
            "starting a rollout does not imply approving one"
        );
        let approver = caller(&["payments:approver"]);
        assert!(
            approver
                .authorize(Rpc::ApproveRollout, &ns("payments"))
                .is_ok()
        );
        assert!(approver.authorize(Rpc::GetRollout, &ns("payments")).is_ok());
        assert!(
            approver
                .authorize(Rpc::StartRollout, &ns("payments"))
                .is_err()
        );
        assert!(
            admin
                .authorize(Rpc::ApproveRollout, &ns("payments"))
                .is_ok()
        );
    }

    #[test]
    fn readable_namespaces() {
        assert_eq!(caller(&["*:reader"]).readable(), Readable::All);
        assert_eq!(
            caller(&["b:reader", "a:author", "b:admin"]).readable(),
            Readable::Only(vec![ns("a"), ns("b")])
        );
    }

    #[test]
    fn malformed_grants_are_refused() {
        for bad in ["payments", "payments:owner", "Pay:reader", ":reader"] {
            assert!(bad.parse::<Grant>().is_err(), "{bad}");
        }
    }
}
