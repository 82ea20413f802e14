//! Who is calling: the seam between authentication and the handlers.
//!
//! An authentication layer verifies the caller and puts a [`Caller`] into the
//! request's extensions; handlers read it back with [`request_context`].
//! Nothing a client says about itself outside that layer is trusted.

use tonic::{Request, Status, metadata::MetadataMap};

use crate::domain::RequestContext;

/// The verified identity of a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Recorded as the actor of every event the request causes.
    pub subject: String,
}

/// The subject recorded for requests served with authentication disabled.
pub const ANONYMOUS: &str = "anonymous";

/// Interceptor for `--insecure` mode: every caller is [`ANONYMOUS`].
pub fn anonymous(mut request: Request<()>) -> Result<Request<()>, Status> {
    request.extensions_mut().insert(Caller {
        subject: ANONYMOUS.to_owned(),
    });
    Ok(request)
}

/// Longest `x-request-id` taken from a caller; a longer one is replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

fn request_id(metadata: &MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The actor and request id of a request.
pub fn request_context<T>(request: &Request<T>) -> Result<RequestContext, Status> {
    let caller = request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))?;
    Ok(RequestContext {
        actor: caller.subject.clone(),
        request_id: request_id(request.metadata()),
    })
}
