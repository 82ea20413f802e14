//! `policyhub.v1.BundleService`: what runtimes call.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::convert;
use super::proto::{self, bundle_service_server::BundleService};
use super::status::to_status;
use crate::domain::PolicyRef;
use crate::hub::{ActiveView, PolicyHub};
use crate::storage::AsOf;

/// Serves `BundleService` on top of the hub.
#[derive(Clone)]
pub struct BundleApi {
    hub: PolicyHub,
}

impl BundleApi {
    /// The service over `hub`.
    pub fn new(hub: PolicyHub) -> Self {
        BundleApi { hub }
    }
}

fn as_of(value: Option<proto::get_active_request::AsOf>) -> crate::domain::Result<Option<AsOf>> {
    use proto::get_active_request::AsOf as Wire;
    Ok(match value {
        None => None,
        Some(Wire::AsOfRevision(revision)) => Some(AsOf::Revision(revision)),
        Some(Wire::AsOfTime(at)) => Some(AsOf::Time(convert::from_timestamp("as_of_time", at)?)),
    })
}

#[tonic::async_trait]
impl BundleService for BundleApi {
    async fn get_active(
        &self,
        request: Request<proto::GetActiveRequest>,
    ) -> Result<Response<proto::Bundle>, Status> {
        let request = request.into_inner();
        let (policy, as_of) = PolicyRef::parse(&request.namespace, &request.name)
            .and_then(|policy| Ok((policy, as_of(request.as_of)?)))
            .map_err(to_status)?;
        let view = self
            .hub
            .get_active(&policy, as_of, request.allow_draft_fallback)
            .await
            .map_err(to_status)?;
        Ok(Response::new(match view {
            ActiveView::Signed(bundle) => convert::bundle(&bundle),
            ActiveView::UnsignedDraft(draft) => convert::draft_bundle(&draft),
        }))
    }

    type WatchActiveStream =
        Pin<Box<dyn Stream<Item = Result<proto::WatchActiveResponse, Status>> + Send>>;

    async fn watch_active(
        &self,
        _request: Request<proto::WatchActiveRequest>,
    ) -> Result<Response<Self::WatchActiveStream>, Status> {
        Err(Status::unimplemented(
            "WatchActive is not available yet; poll GetActive",
        ))
    }

    async fn get_signing_keys(
        &self,
        _request: Request<proto::GetSigningKeysRequest>,
    ) -> Result<Response<proto::GetSigningKeysResponse>, Status> {
        let (keys, signing_kid) = self.hub.signing_keys();
        Ok(Response::new(proto::GetSigningKeysResponse {
            keys: keys
                .iter()
                .map(|key| proto::Jwk {
                    kty: key.kty.clone(),
                    crv: key.crv.clone(),
                    x: key.x.clone(),
                    kid: key.kid.clone(),
                    alg: key.alg.clone(),
                    r#use: key.use_.clone(),
                })
                .collect(),
            signing_key_id: signing_kid.to_owned(),
        }))
    }
}
