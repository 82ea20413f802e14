//! `policyhub.v1.BundleService`: what runtimes call.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use prost::{
    Message,
    bytes::{Bytes, BytesMut},
};
use tonic::{Request, Response, Status, Streaming, metadata::MetadataValue};

use super::auth::{Identified, Rpc, identify};
use super::convert;
use super::decisions::{DecisionInstruments, opa_decision_upload};
use super::opa::{opa_bundle_wanted, opa_discovery_wanted, opa_reply, opa_status_report};
use super::policy_replies::inclusion_proof;
use super::policy_requests::tree_wanted;
use super::proto::{self, bundle_service_server::BundleService};
use super::quotas::{Quotas, StreamKind};
use super::runtimes::{arrival as arrival_of, status_report, watcher};
use crate::domain::log::TreeSize;
use crate::domain::{AsOf, Revision};
use crate::domain::{Error, Namespace, PolicyName, PolicyRef, Result as DomainResult};
use crate::fleet::Arrival;
use crate::hub::{ActiveView, PolicyHub};
use crate::signing::OPA_ALGORITHM;
use crate::watch::{Closed, Ending, Selector, WatchMessage, Watcher};

/// Serves `BundleService` on top of the hub.
#[derive(Clone)]
pub struct BundleApi {
    hub: PolicyHub,
    /// A PROGRESS message goes out after this long without an update.
    heartbeat: Duration,
    quotas: Arc<Quotas>,
    /// What decision uploads count.
    decisions: DecisionInstruments,
}

impl BundleApi {
    /// The service over `hub`.
    pub fn new(
        hub: PolicyHub,
        heartbeat: Duration,
        quotas: Arc<Quotas>,
        decisions: DecisionInstruments,
    ) -> Self {
        BundleApi {
            hub,
            heartbeat,
            quotas,
            decisions,
        }
    }
}

/// Most policy names one watch may select.
const MAX_WATCHED_NAMES: usize = 1000;

fn selector(request: &proto::WatchActiveRequest) -> DomainResult<Selector> {
    let namespace = Namespace::parse("namespace", &request.namespace)?;
    if request.names.len() > MAX_WATCHED_NAMES {
        return Err(Error::invalid(
            "names",
            format!(
                "{} names, at most {MAX_WATCHED_NAMES} are allowed: watch the namespace instead",
                request.names.len()
            ),
        ));
    }
    let mut names = request
        .names
        .iter()
        .enumerate()
        .map(|(index, name)| PolicyName::parse(&format!("names[{index}]"), name))
        .collect::<DomainResult<Vec<_>>>()?;
    names.sort();
    names.dedup();
    let watcher = request.runtime.as_ref().map(watcher).transpose()?;
    Ok(Selector {
        namespace,
        names,
        watcher,
    })
}

/// Why a stream ended, and where to resume.
fn ended(reason: Ending, revision: u64) -> Error {
    Error::Unavailable(match reason {
        Ending::CutOff => format!(
            "this replica cannot read its database and no longer vouches for revision \
             {revision}: reconnect (to another replica) with since_revision {revision}"
        ),
        Ending::Shutdown | Ending::Serving => {
            format!("the server is shutting down: reconnect with since_revision {revision}")
        }
    })
}

fn as_of(value: Option<proto::get_active_request::AsOf>) -> crate::domain::Result<Option<AsOf>> {
    use proto::get_active_request::AsOf as Wire;
    Ok(match value {
        None => None,
        Some(Wire::AsOfRevision(revision)) => {
            Some(AsOf::Revision(Revision::parse("as_of_revision", revision)?))
        }
        Some(Wire::AsOfTime(at)) => Some(AsOf::Time(convert::from_timestamp("as_of_time", at)?)),
    })
}

/// The policy a GetActive names, as of when, for which runtime, and
/// whether a draft may answer.
fn active_wanted(
    request: proto::GetActiveRequest,
) -> DomainResult<(PolicyRef, Option<AsOf>, Option<Watcher>, bool)> {
    let policy = PolicyRef::parse(&request.namespace, &request.name)?;
    let watcher = request.runtime.as_ref().map(watcher).transpose()?;
    let as_of = as_of(request.as_of)?;
    Ok((policy, as_of, watcher, request.allow_draft_fallback))
}

/// The bundle a GetBundleProof names: its policy, its version and the
/// revision at which it became active.
fn bundle_wanted(
    request: &proto::GetBundleProofRequest,
) -> DomainResult<(PolicyRef, u32, Revision, Option<TreeSize>)> {
    let policy = PolicyRef::parse(&request.namespace, &request.name)?;
    if request.version == 0 {
        return Err(Error::invalid(
            "version",
            "must be at least 1: the bundle's version",
        ));
    }
    if request.revision == 0 {
        return Err(Error::invalid(
            "revision",
            "must be at least 1: the revision at which the bundle became active",
        ));
    }
    let revision = Revision::parse("revision", request.revision)?;
    let tree = tree_wanted(request.tree_size);
    Ok((policy, request.version, revision, tree))
}

/// The two trees a GetConsistencyProof names: the older one has a leaf at
/// least, the newer none for the newest checkpoint's.
fn consistency_wanted(
    request: &proto::GetConsistencyProofRequest,
) -> DomainResult<(TreeSize, Option<TreeSize>)> {
    let Some(old_size) = TreeSize::new(request.old_size) else {
        return Err(Error::invalid(
            "old_size",
            "must be at least 1: RFC 9162 proves no tree consistent with the empty one",
        ));
    };
    Ok((old_size, tree_wanted(request.new_size)))
}

/// `policyhub.v1.Bundle`'s field number of its checkpoint.
const BUNDLE_CHECKPOINT_FIELD: u32 = 11;

/// The reply to a GetActive, an encoded `policyhub.v1.Bundle`, in pieces.
/// The bundle active now is the index's bytes as they are (encoded once per
/// version), followed by the checkpoint field with the index's encoded
/// checkpoint: protobuf fields may come in any order, so a read converts
/// and encodes no bundle (the route copies the pieces once, into its frame).
fn encoded_active(view: ActiveView) -> Vec<Bytes> {
    let encoded = |bundle: proto::Bundle| vec![Bytes::from(bundle.encode_to_vec())];
    match view {
        ActiveView::Current(indexed, None) => vec![indexed.encoded.clone()],
        ActiveView::Current(indexed, Some(checkpoint)) => {
            let mut field = BytesMut::new();
            prost::encoding::encode_key(
                BUNDLE_CHECKPOINT_FIELD,
                prost::encoding::WireType::LengthDelimited,
                &mut field,
            );
            prost::encoding::encode_varint(checkpoint.len() as u64, &mut field);
            vec![indexed.encoded.clone(), field.freeze(), checkpoint]
        }
        ActiveView::Signed(bundle, proof) => encoded(proto::Bundle {
            checkpoint: proof.as_ref().map(convert::checkpoint),
            ..convert::bundle(&bundle)
        }),
        ActiveView::UnsignedDraft(draft) => encoded(convert::draft_bundle(&draft)),
    }
}

impl BundleApi {
    /// Answers a GetOpaBundle from `caller`: what the HTTP port's OPA polls
    /// call directly. The caller is let go once admitted, before the poll
    /// is held.
    pub async fn opa_bundle(
        &self,
        caller: Identified,
        request: &proto::GetOpaBundleRequest,
    ) -> Result<proto::OpaBundle, Status> {
        let (namespace, watcher, wait) = opa_bundle_wanted(request)?;
        let context = caller.admit(Rpc::GetOpaBundle, [&namespace], &self.quotas)?;
        drop(caller);
        // An OPA that names itself is in the fleet while it asks.
        let _connection = match &watcher {
            Some(watcher) => {
                let arrival = self.hub.opa_arrival(&namespace, watcher, &context.actor)?;
                Some(self.hub.connect_runtime(arrival).await?)
            }
            None => None,
        };
        let held = Some(request.if_none_match.as_str()).filter(|etag| !etag.is_empty());
        let bundle = self
            .hub
            .opa_bundle(&namespace, watcher.as_ref(), held, wait)
            .await?;
        Ok(opa_reply(bundle, &request.if_none_match))
    }

    /// Answers a GetOpaDiscovery from `caller`, as [`Self::opa_bundle`].
    pub async fn opa_discovery(
        &self,
        caller: Identified,
        request: &proto::GetOpaDiscoveryRequest,
    ) -> Result<proto::OpaBundle, Status> {
        let (namespace, watcher, wait) = opa_discovery_wanted(request)?;
        caller.admit(Rpc::GetOpaDiscovery, [&namespace], &self.quotas)?;
        drop(caller);
        let held = Some(request.if_none_match.as_str()).filter(|etag| !etag.is_empty());
        let discovery = self
            .hub
            .opa_discovery(&namespace, watcher.as_ref(), held, wait)
            .await?;
        Ok(opa_reply(discovery, &request.if_none_match))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchMessage, Status>> + Send>>;

type ReportStream = Pin<Box<dyn Stream<Item = Result<proto::ReportStatusResponse, Status>> + Send>>;

impl BundleApi {
    /// Answers a GetActive with its reply encoded, in pieces: what
    /// `super::bundle_route` writes.
    pub async fn active_reply(
        &self,
        request: Request<proto::GetActiveRequest>,
    ) -> Result<Vec<Bytes>, Status> {
        let caller = identify(&request)?;
        let full = request.get_ref().view() == proto::BundleView::Full;
        let (policy, as_of, watcher, draft) = active_wanted(request.into_inner())?;
        caller.admit(Rpc::GetActive, [&policy.namespace], &self.quotas)?;
        let view = self
            .hub
            .get_active(&policy, as_of, draft, watcher.as_ref())
            .await?;
        let mut pieces = encoded_active(view);
        if full {
            pieces.push(self.verified_body(&pieces)?);
        }
        Ok(pieces)
    }

    /// The body field of a signed bundle, decoded from its JWS once that
    /// verified with this server's keys; nothing for a draft, which holds
    /// its body already. Appended to the encoded bundle: protobuf fields may
    /// come in any order.
    fn verified_body(&self, pieces: &[Bytes]) -> Result<Bytes, Status> {
        let bundle = proto::Bundle::decode(pieces.concat().as_slice())
            .map_err(|error| Status::internal(format!("an encoded bundle: {error}")))?;
        if bundle.jws.is_empty() {
            return Ok(Bytes::new());
        }
        let jwks = policyhub_runtime::bundle::Jwks {
            keys: self.hub.signing_keys().0,
        };
        let claims = policyhub_runtime::bundle::verify(&bundle.jws, &jwks).map_err(|error| {
            Status::internal(format!("a stored bundle does not verify: {error}"))
        })?;
        let body = proto::Bundle {
            body: Some(convert::json_to_struct(&claims.body)),
            ..Default::default()
        };
        Ok(Bytes::from(body.encode_to_vec()))
    }

    /// Opens a watch stream for an admitted caller: refused while this
    /// replica does not vouch for its revision, counted against the
    /// caller's streams, and registered in the fleet when it names a
    /// runtime. The next message is computed only when the transport asks
    /// for it, so a slow client leaves nothing queued here.
    async fn open_watch(
        &self,
        selector: Selector,
        since_revision: u64,
        arrival: Option<Arrival>,
        actor: &str,
    ) -> DomainResult<WatchStream> {
        if self.hub.index().ending() == Ending::CutOff {
            return Err(ended(Ending::CutOff, since_revision));
        }
        let permit = self.quotas.open_stream(StreamKind::Watch, actor)?;
        let connection = match arrival {
            Some(arrival) => Some(self.hub.connect_runtime(arrival).await?),
            None => None,
        };
        let subscriber = self
            .hub
            .index()
            .subscribe(selector, since_revision, self.heartbeat);
        // The permit and the runtime's connection live as long as the stream.
        let held = (permit, connection);
        let stream = futures::stream::unfold(Some((subscriber, held)), |state| async move {
            let (mut subscriber, held) = state?;
            match subscriber.next().await {
                Ok(message) => Some((Ok(message), Some((subscriber, held)))),
                Err(Closed { revision, reason }) => {
                    Some((Err(ended(reason, revision).into()), None))
                }
            }
        });
        Ok(Box::pin(stream))
    }

    /// A watch reply, announcing the heartbeat interval clients derive their
    /// missed-heartbeat deadline from.
    fn announcing_heartbeat(&self, stream: WatchStream) -> Response<WatchStream> {
        let mut response = Response::new(stream);
        let interval = u64::try_from(self.heartbeat.as_millis()).unwrap_or(u64::MAX);
        response.metadata_mut().insert(
            policyhub_runtime::HEARTBEAT_INTERVAL_HEADER,
            MetadataValue::from(interval),
        );
        response
    }

    /// Admits one status report of `caller` to `rpc` and folds it into the
    /// fleet view.
    async fn report(
        &self,
        caller: &Identified,
        rpc: Rpc,
        request: &proto::ReportStatusRequest,
    ) -> Result<proto::ReportStatusResponse, Status> {
        let report = status_report(request)?;
        let context = caller.admit(rpc, [&report.namespace], &self.quotas)?;
        let ignored = self.hub.report_status(&context.actor, report).await?;
        Ok(proto::ReportStatusResponse { ignored })
    }
}

#[tonic::async_trait]
impl BundleService for BundleApi {
    /// The route answers GetActive with [`BundleApi::active_reply`]'s
    /// pieces as they are; this is the same reply decoded, for the service
    /// mounted without the route.
    async fn get_active(
        &self,
        request: Request<proto::GetActiveRequest>,
    ) -> Result<Response<proto::Bundle>, Status> {
        let encoded = self.active_reply(request).await?.concat();
        let reply = proto::Bundle::decode(encoded.as_slice())
            .map_err(|error| Status::internal(format!("an encoded bundle: {error}")))?;
        Ok(Response::new(reply))
    }

    type WatchActiveStream = WatchStream;

    async fn watch_active(
        &self,
        request: Request<proto::WatchActiveRequest>,
    ) -> Result<Response<Self::WatchActiveStream>, Status> {
        let caller = identify(&request)?;
        let request = request.into_inner();
        let selector = selector(&request)?;
        let context = caller.admit(Rpc::WatchActive, [&selector.namespace], &self.quotas)?;
        let (names, actor) = (&selector.names, &context.actor);
        let arrival = request.runtime.as_ref();
        let arrival = arrival
            .map(|runtime| arrival_of(runtime, &selector.namespace, names, actor))
            .transpose()?;
        let since = request.since_revision;
        let stream = self.open_watch(selector, since, arrival, actor).await?;
        Ok(self.announcing_heartbeat(stream))
    }

    async fn get_signing_keys(
        &self,
        request: Request<proto::GetSigningKeysRequest>,
    ) -> Result<Response<proto::GetSigningKeysResponse>, Status> {
        identify(&request)?
            .caller()
            .authorize_anywhere(Rpc::GetSigningKeys)?;
        let (keys, signing_key_id) = self.hub.signing_keys();
        Ok(Response::new(proto::GetSigningKeysResponse {
            keys: keys.iter().map(convert::jwk).collect(),
            signing_key_id,
            revoked_key_ids: self.hub.revoked_key_ids(),
        }))
    }

    async fn get_opa_bundle(
        &self,
        request: Request<proto::GetOpaBundleRequest>,
    ) -> Result<Response<proto::OpaBundle>, Status> {
        let caller = identify(&request)?;
        self.opa_bundle(caller, request.get_ref())
            .await
            .map(Response::new)
    }

    async fn get_opa_discovery(
        &self,
        request: Request<proto::GetOpaDiscoveryRequest>,
    ) -> Result<Response<proto::OpaBundle>, Status> {
        let caller = identify(&request)?;
        self.opa_discovery(caller, request.get_ref())
            .await
            .map(Response::new)
    }

    async fn report_opa_status(
        &self,
        request: Request<proto::ReportOpaStatusRequest>,
    ) -> Result<Response<proto::ReportStatusResponse>, Status> {
        let caller = identify(&request)?;
        let (namespace, runtime, report) = opa_status_report(request.get_ref())?;
        let context = caller.admit(Rpc::ReportOpaStatus, [&namespace], &self.quotas)?;
        let ignored = self
            .hub
            .report_opa_status(&context.actor, &namespace, &runtime, &report)
            .await?;
        Ok(Response::new(proto::ReportStatusResponse { ignored }))
    }

    async fn upload_opa_decisions(
        &self,
        request: Request<proto::UploadOpaDecisionsRequest>,
    ) -> Result<Response<proto::UploadOpaDecisionsResponse>, Status> {
        let caller = identify(&request)?;
        let (namespace, runtime, decisions) = opa_decision_upload(request.into_inner())?;
        let context = caller.admit(Rpc::UploadOpaDecisions, [&namespace], &self.quotas)?;
        let kept = self
            .hub
            .upload_opa_decisions(&context.actor, &namespace, &runtime, &decisions)
            .await?;
        self.decisions.count(&kept);
        Ok(Response::new(proto::UploadOpaDecisionsResponse {
            kept: u32::try_from(kept.kept).unwrap_or(u32::MAX),
        }))
    }

    async fn get_opa_signing_keys(
        &self,
        request: Request<proto::GetOpaSigningKeysRequest>,
    ) -> Result<Response<proto::GetOpaSigningKeysResponse>, Status> {
        identify(&request)?
            .caller()
            .authorize_anywhere(Rpc::GetOpaSigningKeys)?;
        let keys = self.hub.opa_signing_keys();
        Ok(Response::new(proto::GetOpaSigningKeysResponse {
            keys: keys
                .iter()
                .map(|key| proto::OpaSigningKey {
                    key_id: key.key_id().to_owned(),
                    algorithm: OPA_ALGORITHM.to_owned(),
                    public_key_pem: key.public_pem().to_owned(),
                })
                .collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<proto::GetConsistencyProofRequest>,
    ) -> Result<Response<proto::GetConsistencyProofResponse>, Status> {
        identify(&request)?
            .caller()
            .authorize_anywhere(Rpc::GetConsistencyProof)?;
        let (old_size, new_size) = consistency_wanted(request.get_ref())?;
        let proof = self.hub.consistency_proof(old_size, new_size).await?;
        Ok(Response::new(proto::GetConsistencyProofResponse {
            old_size: proof.old_size.get(),
            new_size: proof.new_size.get(),
            hashes: convert::proof_hashes(&proof.hashes),
            checkpoint: proof.checkpoint.as_ref().map(convert::checkpoint),
        }))
    }

    async fn get_restore_proof(
        &self,
        request: Request<proto::GetRestoreProofRequest>,
    ) -> Result<Response<proto::GetRestoreProofResponse>, Status> {
        identify(&request)?
            .caller()
            .authorize_anywhere(Rpc::GetRestoreProof)?;
        let tree = tree_wanted(request.get_ref().tree_size);
        let proof = self.hub.restore_proof(tree).await?;
        Ok(Response::new(proto::GetRestoreProofResponse {
            proof: Some(inclusion_proof(&proof)),
        }))
    }

    async fn get_bundle_proof(
        &self,
        request: Request<proto::GetBundleProofRequest>,
    ) -> Result<Response<proto::GetBundleProofResponse>, Status> {
        let caller = identify(&request)?;
        let (policy, version, revision, tree) = bundle_wanted(request.get_ref())?;
        caller.admit(Rpc::GetBundleProof, [&policy.namespace], &self.quotas)?;
        let proof = self
            .hub
            .bundle_proof(&policy, version, revision, tree)
            .await?;
        Ok(Response::new(proto::GetBundleProofResponse {
            published: Some(inclusion_proof(&proof.published)),
            activated: Some(inclusion_proof(&proof.activated)),
        }))
    }

    async fn report_status(
        &self,
        request: Request<proto::ReportStatusRequest>,
    ) -> Result<Response<proto::ReportStatusResponse>, Status> {
        let caller = identify(&request)?;
        let reply = self.report(&caller, Rpc::ReportStatus, request.get_ref());
        Ok(Response::new(reply.await?))
    }

    type ReportStatusStreamStream = ReportStream;

    /// Answers each report in order; the first refusal ends the stream with
    /// its status (tonic ends a server's stream at its first error), and so
    /// does a shutdown, with UNAVAILABLE, as it ends watch streams.
    async fn report_status_stream(
        &self,
        request: Request<Streaming<proto::ReportStatusRequest>>,
    ) -> Result<Response<Self::ReportStatusStreamStream>, Status> {
        let caller = identify(&request)?;
        let permit = self
            .quotas
            .open_stream(StreamKind::Report, &caller.caller().subject)?;
        let state = (request.into_inner(), self.clone(), caller, permit);
        let replies = futures::stream::unfold(state, |(mut reports, api, caller, permit)| async {
            let message = tokio::select! {
                message = reports.message() => message,
                () = api.hub.index().closed() => {
                    Err(Status::unavailable("the server is shutting down: report on another connection"))
                }
            };
            let reply = match message {
                Ok(None) => return None,
                Ok(Some(request)) => api.report(&caller, Rpc::ReportStatusStream, &request).await,
                Err(status) => Err(status),
            };
            Some((reply, (reports, api, caller, permit)))
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{ActiveBundle, Digest};
    use crate::watch::IndexedBundle;

    #[test]
    fn the_active_reply_is_the_indexed_bytes_and_the_checkpoint_field() {
        let bundle = ActiveBundle {
            policy: PolicyRef::parse("team", "limits").unwrap(),
            version: 3,
            label: None,
            digest: Digest::of_canonical(b"{}"),
            jws: Arc::from("h.p.s"),
            key_id: "kid".into(),
            revision: 9,
        };
        let indexed = Arc::new(IndexedBundle {
            encoded: convert::encoded_bundle(&bundle),
            bundle,
        });
        let checkpoint = proto::Checkpoint {
            jws: "c.p.s".into(),
            revision: 9,
            last_event_id: 40,
            chain_head: "sha256:00".into(),
            time: Some(prost_types::Timestamp::default()),
            key_id: "kid".into(),
            note: String::new(),
            consistency_proof: None,
        };
        let view = ActiveView::Current(
            indexed.clone(),
            Some(Bytes::from(checkpoint.encode_to_vec())),
        );
        let pieces = encoded_active(view);
        // The bundle goes out as the index's shared bytes, not a copy.
        assert_eq!(pieces[0].as_ptr(), indexed.encoded.as_ptr());
        let reply = proto::Bundle::decode(pieces.concat().as_slice()).unwrap();
        let expected = proto::Bundle {
            checkpoint: Some(checkpoint),
            ..convert::bundle(&indexed.bundle)
        };
        assert_eq!(reply, expected);

        let without = encoded_active(ActiveView::Current(indexed.clone(), None));
        let reply = proto::Bundle::decode(without.concat().as_slice()).unwrap();
        assert_eq!(reply, convert::bundle(&indexed.bundle));
    }
}
