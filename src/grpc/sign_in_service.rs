//! `policyhub.v1.SignInService`: the identity providers people sign in
//! with, answered without a token.

use tonic::{Request, Response, Status};

use super::auth::SignIn;
use super::proto::{
    self, ListIdentityProvidersRequest, ListIdentityProvidersResponse,
    sign_in_service_server::SignInService,
};

/// The providers of the configuration, fixed for the process's life.
#[derive(Clone)]
pub struct SignInApi {
    providers: ListIdentityProvidersResponse,
}

impl SignInApi {
    pub fn new(providers: &[SignIn]) -> Self {
        SignInApi {
            providers: ListIdentityProvidersResponse {
                identity_providers: providers
                    .iter()
                    .map(|provider| proto::IdentityProvider {
                        issuer: provider.issuer.clone(),
                        client_id: provider.client_id.clone(),
                        scopes: provider.scopes.clone(),
                    })
                    .collect(),
            },
        }
    }
}

#[tonic::async_trait]
impl SignInService for SignInApi {
    async fn list_identity_providers(
        &self,
        _: Request<ListIdentityProvidersRequest>,
    ) -> Result<Response<ListIdentityProvidersResponse>, Status> {
        Ok(Response::new(self.providers.clone()))
    }
}
