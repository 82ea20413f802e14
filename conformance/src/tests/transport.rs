//! Transport and credentials: TLS where the address says `https://`,
//! verified against the CA the runtime is given; plaintext where it says
//! `http://`, a CA given or not; a token file replaced under a running
//! subscription, its new token carried by the next stream.

use std::{path::Path, time::Duration};

use anyhow::ensure;

use super::{applied_once_in_order, holds, release, stays_at, test};
use crate::{
    harness::{Context, Test},
    protocol::RuntimeSettings,
    server::write_secret,
    tls::{Authority, TlsFront},
};

pub fn tests() -> Vec<Test> {
    vec![
        test!(
            "transport.https-verified-against-the-given-ca",
            ["T1"],
            [],
            https_verified_against_the_given_ca
        ),
        test!(
            "transport.http-stays-plaintext",
            ["T1"],
            [],
            http_stays_plaintext
        ),
        test!(
            "transport.token-file-rotated-under-a-running-subscription",
            ["T2"],
            [],
            token_file_rotated
        ),
    ]
}

/// The server behind TLS whose certificate a CA signed: a runtime given
/// that CA follows it over `https://`; one given another CA puts nothing
/// in force.
async fn https_verified_against_the_given_ca(context: Context) -> anyhow::Result<()> {
    let authority = Authority::new(&context.scratch.join("ca")).await?;
    let stranger = Authority::new(&context.scratch.join("another-ca")).await?;
    let front = TlsFront::start(&authority, context.proxy.address()).await?;
    let first = release(&context, "p", 1).await?;
    let over_https = |n: usize, trusted: &Authority| RuntimeSettings {
        endpoints: vec![front.endpoint()],
        ca_file: Some(path(&trusted.certificate_file())),
        ..context.settings(n)
    };
    let trusting = context.service.start(&over_https(1, &authority)).await?;
    let misled = context.service.start(&over_https(2, &stranger)).await?;
    trusting.until_revision(first).await?;
    stays_at(&misled, 0, Duration::from_secs(2)).await?;
    let next = release(&context, "p", 2).await?;
    let view = trusting.until_revision(next).await?;
    holds(&view, &[("p", 2)])?;
    applied_once_in_order(&view)
}

/// A runtime given a CA and an `http://` address speaks plaintext to it:
/// the scheme alone says whether TLS applies.
async fn http_stays_plaintext(context: Context) -> anyhow::Result<()> {
    let authority = Authority::new(&context.scratch.join("ca")).await?;
    let first = release(&context, "p", 1).await?;
    let settings = RuntimeSettings {
        ca_file: Some(path(&authority.certificate_file())),
        ..context.settings(1)
    };
    let runtime = context.service.start(&settings).await?;
    let view = runtime.until_revision(first).await?;
    holds(&view, &[("p", 1)])
}

/// The server requires tokens. The runtime's token file is replaced (a
/// rename, as Kubernetes swaps a projected token) by a token signed with a
/// new secret, then the server starts again verifying with that secret
/// alone: the runtime's next stream carries the new token, and the change
/// made meanwhile arrives.
async fn token_file_rotated(mut context: Context) -> anyhow::Result<()> {
    let (old_secret, new_secret) = (
        context.scratch.join("secret-1"),
        context.scratch.join("secret-2"),
    );
    context.server.require_tokens(&old_secret).await?;
    let grants = ["conformance:reader"];
    let old_token = context.server.mint(&old_secret, "runtime", &grants).await?;
    let token_file = context.scratch.join("runtime.token");
    replace(&token_file, &old_token)?;
    let first = release(&context, "p", 1).await?;
    let settings = RuntimeSettings {
        token_file: Some(path(&token_file)),
        ..context.settings(1)
    };
    let runtime = context.service.start(&settings).await?;
    runtime.until_revision(first).await?;
    write_secret(&new_secret)?;
    let new_token = context.server.mint(&new_secret, "runtime", &grants).await?;
    replace(&token_file, &new_token)?;
    context.server.require_tokens(&new_secret).await?;
    ensure!(
        !context.server.accepts(&old_token).await?,
        "the server still takes the token signed with the old secret"
    );
    ensure!(
        context.server.accepts(&new_token).await?,
        "the server refuses the token signed with the new secret"
    );
    let next = release(&context, "p", 2).await?;
    let view = runtime.until_revision(next).await?;
    holds(&view, &[("p", 2)])?;
    applied_once_in_order(&view)
}

/// Replaces `file` with `contents` whole: written beside it, renamed over.
fn replace(file: &Path, contents: &str) -> anyhow::Result<()> {
    let written = file.with_extension("next");
    std::fs::write(&written, contents)?;
    std::fs::rename(&written, file)?;
    Ok(())
}

fn path(file: &Path) -> String {
    file.to_string_lossy().into_owned()
}
