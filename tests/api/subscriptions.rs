//! Webhook subscriptions through the API: created with a secret shown
//! once, read, changed and deleted; every bad input refused as
//! INVALID_ARGUMENT naming its field, with nothing saved.

use policyhub::grpc::proto::{
    self, EventKind, SubscriptionFormat, subscription_service_client::SubscriptionServiceClient,
};
use sea_orm::{ConnectionTrait, Statement};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

use crate::helpers::TestApp;

crate::on_both_backends!(
    a_subscription_is_created_read_changed_and_deleted_and_its_secret_shown_once,
    bad_subscriptions_are_invalid_argument_naming_the_field_and_save_nothing,
);

/// A client of the subscription service of `app`.
pub async fn subscriptions(app: &TestApp) -> SubscriptionServiceClient<Channel> {
    SubscriptionServiceClient::connect(format!("http://{}", app.address))
        .await
        .expect("connect to the server")
}

/// A request for a subscription of `namespace` named `name` to `url`.
pub fn create_request(
    namespace: &str,
    name: &str,
    url: &str,
    kinds: &[EventKind],
) -> proto::CreateSubscriptionRequest {
    proto::CreateSubscriptionRequest {
        namespace: namespace.into(),
        name: name.into(),
        url: url.into(),
        event_kinds: kinds.iter().map(|kind| *kind as i32).collect(),
        format: SubscriptionFormat::Unspecified as i32,
        secret: String::new(),
    }
}

async fn subscription_rows(app: &TestApp) -> i64 {
    let db = app.sql().await;
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM subscriptions",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

async fn a_subscription_is_created_read_changed_and_deleted_and_its_secret_shown_once(
    app: TestApp,
) {
    let mut client = subscriptions(&app).await;
    let created = client
        .create_subscription(create_request(
            "payments",
            "approvers",
            "https://hooks.example.com/policyhub",
            &[EventKind::RolloutScheduled, EventKind::Activated],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(created.secret.starts_with("whsec_"), "{}", created.secret);
    let subscription = created.subscription.unwrap();
    assert!(subscription.enabled);
    assert_eq!(subscription.format, SubscriptionFormat::Cloudevents as i32);

    let got = client
        .get_subscription(proto::GetSubscriptionRequest {
            namespace: "payments".into(),
            name: "approvers".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, subscription);
    let listed = format!(
        "{:?}",
        client
            .list_subscriptions(proto::ListSubscriptionsRequest {
                namespace: "payments".into(),
            })
            .await
            .unwrap()
            .into_inner()
    );
    assert!(listed.contains("approvers"));
    assert!(
        !listed.contains(&created.secret),
        "a listing shows no secret"
    );

    let again = client
        .create_subscription(create_request(
            "payments",
            "approvers",
            "https://hooks.example.com/other",
            &[EventKind::Activated],
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);

    let updated = client
        .update_subscription(proto::UpdateSubscriptionRequest {
            namespace: "payments".into(),
            name: "approvers".into(),
            url: String::new(),
            event_kinds: vec![EventKind::RolloutScheduled as i32],
            format: SubscriptionFormat::Chat as i32,
            enabled: Some(false),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.url, "https://hooks.example.com/policyhub");
    assert_eq!(updated.event_kinds, [EventKind::RolloutScheduled as i32]);
    assert_eq!(updated.format, SubscriptionFormat::Chat as i32);
    assert!(!updated.enabled);
    assert_eq!(updated.disabled_reason, "disabled by an operator");

    let given = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let deployment_wide = client
        .create_subscription(proto::CreateSubscriptionRequest {
            secret: given.into(),
            ..create_request(
                "",
                "siem",
                "https://siem.example.com/in",
                &[EventKind::Activated],
            )
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deployment_wide.secret, given);
    assert_eq!(deployment_wide.subscription.unwrap().namespace, "");

    client
        .delete_subscription(proto::DeleteSubscriptionRequest {
            namespace: "payments".into(),
            name: "approvers".into(),
        })
        .await
        .unwrap();
    let gone = client
        .get_subscription(proto::GetSubscriptionRequest {
            namespace: "payments".into(),
            name: "approvers".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(subscription_rows(&app).await, 1);
}

async fn bad_subscriptions_are_invalid_argument_naming_the_field_and_save_nothing(app: TestApp) {
    let mut client = subscriptions(&app).await;
    let kinds = [EventKind::Activated];
    let good = || create_request("payments", "hooks", "https://hooks.example.com/x", &kinds);
    let cases = [
        (
            create_request("payments", "hooks", "http://hooks.example.com/x", &kinds),
            "url",
        ),
        (
            create_request("payments", "hooks", "https://10.0.0.7/x", &kinds),
            "url",
        ),
        (
            create_request("payments", "hooks", "https://localhost/x", &kinds),
            "url",
        ),
        (
            create_request("payments", "hooks", "not a url", &kinds),
            "url",
        ),
        (
            proto::CreateSubscriptionRequest {
                event_kinds: vec![999],
                ..good()
            },
            "event_kinds[0]",
        ),
        (
            proto::CreateSubscriptionRequest {
                event_kinds: vec![],
                ..good()
            },
            "event_kinds",
        ),
        (
            proto::CreateSubscriptionRequest {
                event_kinds: vec![EventKind::Activated as i32; 33],
                ..good()
            },
            "event_kinds",
        ),
        (
            proto::CreateSubscriptionRequest {
                secret: "whsec_c2hvcnQ=".into(),
                ..good()
            },
            "secret",
        ),
        (
            proto::CreateSubscriptionRequest {
                secret: "hunter2".into(),
                ..good()
            },
            "secret",
        ),
        (
            proto::CreateSubscriptionRequest {
                format: 7,
                ..good()
            },
            "format",
        ),
        (
            create_request("Payments", "hooks", "https://hooks.example.com/x", &kinds),
            "namespace",
        ),
        (
            create_request(
                "payments",
                "Bad Name",
                "https://hooks.example.com/x",
                &kinds,
            ),
            "name",
        ),
    ];
    for (request, field) in cases {
        let described = format!("{request:?}");
        let status = client.create_subscription(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{described}");
        let violations = status
            .get_details_bad_request()
            .expect("field violations")
            .field_violations;
        assert_eq!(violations[0].field, field, "{described}");
        assert!(
            !status.message().contains("hunter2"),
            "{}",
            status.message()
        );
    }
    let status = client
        .update_subscription(proto::UpdateSubscriptionRequest {
            namespace: "payments".into(),
            name: "hooks".into(),
            url: "http://hooks.example.com/x".into(),
            event_kinds: vec![],
            format: 0,
            enabled: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "url"
    );
    assert_eq!(subscription_rows(&app).await, 0);
}
