//! Requests that are not what the method takes: bytes that are not
//! protobuf, invalid UTF-8, bodies nested too deeply. Each is the caller's
//! fault, INVALID_ARGUMENT with a message naming the problem, never
//! INTERNAL, and changes nothing.

use policyhub::{domain::MAX_JSON_DEPTH, grpc::convert::json_to_struct};
use prost::bytes::{Buf, BufMut};
use serde_json::{Value, json};
use tonic::{
    Code,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

use crate::helpers::{TestApp, expect_code};

crate::on_both_backends!(
    undecodable_requests_are_invalid_argument_on_every_method,
    bodies_nested_too_deeply_are_refused_naming_the_limit,
    errors_quote_a_prefix_of_huge_values_and_stay_small,
    values_the_database_cannot_store_are_refused_alike_on_both_backends,
    page_tokens_belong_to_their_listing_and_filter,
);

/// Sends raw bytes as the request message.
#[derive(Clone, Default)]
struct Raw;

#[derive(Clone, Default)]
struct RawCoder;

impl Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;

    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }

    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

async fn call_raw(
    channel: &Channel,
    path: &str,
    body: Vec<u8>,
    streaming: bool,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = path.parse().unwrap();
    let request = tonic::Request::new(body);
    if streaming {
        let mut stream = grpc
            .server_streaming(request, path, Raw)
            .await?
            .into_inner();
        stream.message().await.map(|_| ())
    } else {
        grpc.unary(request, path, Raw).await.map(|_| ())
    }
}

async fn undecodable_requests_are_invalid_argument_on_every_method(app: TestApp) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    let before = app.db_state().await;
    let channel = Channel::from_shared(format!("http://{}", app.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let methods = [
        "PolicyService/Draft",
        "PolicyService/DiscardDraft",
        "PolicyService/Publish",
        "PolicyService/Activate",
        "PolicyService/Rollback",
        "PolicyService/GetVersion",
        "PolicyService/ListVersions",
        "PolicyService/GetPolicy",
        "PolicyService/ListPolicies",
        "PolicyService/ListEvents",
        "PolicyService/DiffVersions",
        "PolicyService/SetSchema",
        "PolicyService/RotateSigningKey",
        "PolicyService/ListRuntimes",
        "PolicyService/GetPolicyStatus",
        "BundleService/GetActive",
        "BundleService/GetSigningKeys",
        "BundleService/ReportStatus",
        "BundleService/WatchActive",
    ];
    let garbage: [(&str, Vec<u8>); 2] = [
        // Field 1 with a varint that never ends.
        ("an invalid varint", vec![0x08, 0xff, 0xff, 0xff]),
        // Field 1 (a string in every request that has one) as invalid UTF-8.
        ("invalid UTF-8", vec![0x0a, 0x02, 0xff, 0xfe]),
    ];
    for method in methods {
        for (what, bytes) in &garbage {
            let status = call_raw(
                &channel,
                &format!("/policyhub.v1.{method}"),
                bytes.clone(),
                method.ends_with("WatchActive"),
            )
            .await;
            // GetSigningKeys has no fields: it skips what it does not know.
            if method.ends_with("GetSigningKeys") {
                if let Err(status) = status {
                    assert_ne!(
                        status.code(),
                        Code::Internal,
                        "{method}, {what}: {status:?}"
                    );
                }
                continue;
            }
            let status = status.expect_err("the call fails");
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{method}, {what}: {status:?}"
            );
            assert!(
                status.message().contains("not a valid protobuf encoding")
                    && status.message().len() < 512,
                "{method}, {what}: {}",
                status.message()
            );
        }
    }
    assert_eq!(app.db_state().await, before);
}

/// `{"a": {"a": … {"a": 1}}}`, `levels` objects deep.
fn nested(levels: usize) -> Value {
    (1..levels).fold(json!({"a": 1}), |inner, _| json!({ "a": inner }))
}

async fn bodies_nested_too_deeply_are_refused_naming_the_limit(app: TestApp) {
    let before = app.db_state().await;
    app.try_draft("team", "deep-ok", nested(MAX_JSON_DEPTH))
        .await
        .expect("the limit itself is accepted");
    let before_refusals = app.db_state().await;
    assert_ne!(before, before_refusals);
    for levels in [MAX_JSON_DEPTH + 1, 40, 64, 200] {
        let message = expect_code(
            app.policy
                .clone()
                .draft(policyhub::grpc::proto::DraftRequest {
                    namespace: "team".into(),
                    name: "deep".into(),
                    body: Some(json_to_struct(&nested(levels))),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
        assert!(
            message.contains(&format!("at most {MAX_JSON_DEPTH} levels")),
            "{levels} levels: {message}"
        );
    }
    assert_eq!(app.db_state().await, before_refusals);
}

/// A 100,000-character namespace and a schema violation on a 20,000-character
/// string: the status quotes a prefix with the length, and the whole status
/// stays far below the 16 KiB of metadata stock gRPC clients accept.
async fn errors_quote_a_prefix_of_huge_values_and_stay_small(app: TestApp) {
    let huge = "n".repeat(100_000);
    let status = app
        .try_draft(&huge, "limits", json!({"max": 1}))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("(100000 bytes)"),
        "{}",
        status.message()
    );
    assert!(
        status.message().len() + status.details().len() < 4096,
        "{} + {}",
        status.message().len(),
        status.details().len()
    );

    app.policy
        .clone()
        .set_schema(policyhub::grpc::proto::SetSchemaRequest {
            namespace: "team".into(),
            name: "limits".into(),
            schema: Some(json_to_struct(
                &json!({"type": "object", "properties": {"note": {"type": "string", "maxLength": 10}}}),
            )),
            reason: "limits".into(),
            dry_run: false,
        })
        .await
        .expect("schema set");
    app.draft("team", "limits", json!({"note": "x".repeat(20_000)}))
        .await;
    let violation = app
        .try_publish(crate::helpers::publish_request("team", "limits", "", false))
        .await
        .expect_err("the schema refuses it");
    assert_eq!(violation.code(), Code::FailedPrecondition);
    assert!(
        violation.message().len() + violation.details().len() < 4096,
        "{} + {}",
        violation.message().len(),
        violation.details().len()
    );
}

/// A 200-character label and a NUL in change notes, idempotency keys and
/// reasons: INVALID_ARGUMENT on both backends (PostgreSQL would fail to
/// store them), and nothing changes.
async fn values_the_database_cannot_store_are_refused_alike_on_both_backends(app: TestApp) {
    use policyhub::grpc::proto;
    app.release("team", "limits", json!({"max": 1}), true).await;
    app.draft("team", "limits", json!({"max": 2})).await;
    let before = app.db_state().await;
    let long_label = format!("1.0.0-{}", "a".repeat(194));
    let mut publish = crate::helpers::publish_request("team", "limits", &long_label, false);
    let message = expect_code(
        app.try_publish(publish.clone()).await,
        Code::InvalidArgument,
    );
    assert!(message.contains("at most 128"), "{message}");
    publish.label = String::new();
    publish.reason = "bad\0reason".into();
    let message = expect_code(
        app.try_publish(publish.clone()).await,
        Code::InvalidArgument,
    );
    assert!(message.contains("U+0000"), "{message}");
    publish.reason = String::new();
    publish.idempotency_key = "key\0".into();
    expect_code(app.try_publish(publish).await, Code::InvalidArgument);
    let draft = app
        .policy
        .clone()
        .draft(proto::DraftRequest {
            requirements: Vec::new(),
            namespace: "team".into(),
            name: "limits".into(),
            body: Some(json_to_struct(&json!({"max": 3}))),
            change_notes: "notes\0".into(),
            idempotency_key: String::new(),
        })
        .await;
    expect_code(draft, Code::InvalidArgument);
    assert_eq!(app.db_state().await, before);
}

/// A page token works only for the listing and filter that issued it.
async fn page_tokens_belong_to_their_listing_and_filter(app: TestApp) {
    use policyhub::grpc::proto;
    for n in 0..3 {
        app.release("team", "limits", json!({ "max": n }), true)
            .await;
    }
    let events = |name: &str, page_token: String| proto::ListEventsRequest {
        namespace: "team".into(),
        name: name.into(),
        kinds: Vec::new(),
        page_size: 2,
        page_token,
        ..Default::default()
    };
    let first = app
        .policy
        .clone()
        .list_events(events("limits", String::new()))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    // The same listing and filter: the next page.
    let second = app
        .policy
        .clone()
        .list_events(events("limits", first.next_page_token.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(second.events[0].id < first.events[1].id);
    // Another filter, another listing, or made up: refused.
    expect_code(
        app.policy
            .clone()
            .list_events(events("other", first.next_page_token.clone()))
            .await,
        Code::InvalidArgument,
    );
    let versions = app
        .policy
        .clone()
        .list_versions(proto::ListVersionsRequest {
            namespace: "team".into(),
            name: "limits".into(),
            page_size: 1,
            page_token: first.next_page_token.clone(),
        })
        .await;
    let message = expect_code(versions, Code::InvalidArgument);
    assert!(
        message.contains("not a page token of this listing"),
        "{message}"
    );
    expect_code(
        app.policy
            .clone()
            .list_events(events("limits", "12".into()))
            .await,
        Code::InvalidArgument,
    );
}
