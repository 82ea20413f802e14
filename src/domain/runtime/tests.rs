use super::*;

/// A connected runtime of team with `outcome` for policy limits.
pub(crate) fn record(id: &str, outcome: Option<(u32, ApplyState, &str)>) -> RuntimeRecord {
    let name = PolicyName::parse("name", "limits").unwrap();
    RuntimeRecord {
        namespace: Namespace::parse("namespace", "team").unwrap(),
        id: RuntimeId::parse("id", id).unwrap(),
        subject: "runtime".into(),
        labels: RuntimeLabels::default(),
        names: Vec::new(),
        connected: true,
        replica: "r".into(),
        last_seen: Utc::now(),
        applied_revision: 0,
        policies: outcome
            .map(|(version, state, error)| {
                (
                    name,
                    PolicyOutcome {
                        version,
                        state,
                        error: error.into(),
                        revision: 1,
                        reported_at: None,
                    },
                )
            })
            .into_iter()
            .collect(),
    }
}

#[test]
fn runtime_ids_are_dns_like_and_bounded() {
    assert!(RuntimeId::parse("id", "pod-7.eu-west").is_ok());
    for bad in ["", "Pod", "-a", "a-", "a_b", &"a".repeat(129)] {
        assert!(RuntimeId::parse("id", bad).is_err(), "{bad:?} is refused");
    }
}

#[test]
fn pages_follow_ids_and_tokens_belong_to_the_listing() {
    let runtimes: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|id| (record(id, None), RuntimeState::Connected))
        .collect();
    let filter = RuntimeFilter::default();
    let first = runtimes_page(&runtimes, &filter, 2, "").unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.next_page_token.unwrap();
    let second = runtimes_page(&runtimes, &filter, 2, &token).unwrap();
    assert_eq!(second.items[0].0.id.as_str(), "c");
    assert_eq!(second.next_page_token, None);
    assert!(runtimes_page(&runtimes, &filter, 2, "42").is_err());
}

#[test]
fn the_newest_revision_wins_per_policy() {
    let mut runtime = record("a", None);
    let name = PolicyName::parse("name", "limits").unwrap();
    let (namespace, id) = (runtime.namespace.clone(), runtime.id.clone());
    let report = |revision, version| StatusReport {
        namespace: namespace.clone(),
        runtime: id.clone(),
        revision,
        outcomes: vec![(
            name.clone(),
            PolicyOutcome {
                version,
                state: ApplyState::Applied,
                error: String::new(),
                revision,
                reported_at: None,
            },
        )],
    };
    let merged = |ignored, changed| Merged {
        ignored,
        changed,
        rejected: Vec::new(),
    };
    assert_eq!(runtime.merge(&report(5, 3), Utc::now()), merged(0, true));
    assert_eq!(runtime.merge(&report(4, 2), Utc::now()), merged(1, false));
    let seen = runtime.last_seen;
    assert_eq!(runtime.merge(&report(5, 3), Utc::now()), merged(0, false));
    assert!(
        runtime.last_seen >= seen,
        "a repeated report is still a sign of life"
    );
    let mut rejected = report(5, 3);
    rejected.outcomes[0].1.state = ApplyState::Rejected;
    rejected.outcomes[0].1.error = "unknown field".into();
    let refusal = Rejection {
        namespace: runtime.namespace.clone(),
        runtime: runtime.id.clone(),
        subject: runtime.subject.clone(),
        policy: name.clone(),
        version: 3,
        error: "unknown field".into(),
    };
    assert_eq!(
        runtime.merge(&rejected, Utc::now()),
        Merged {
            rejected: vec![refusal],
            ..merged(0, true)
        },
        "another state at the same revision is a change, and a refusal to record"
    );
    assert_eq!(runtime.policies[&name].version, 3);
    assert_eq!(runtime.applied_revision, 5);
    let mut again = report(6, 3);
    again.outcomes[0].1.state = ApplyState::Rejected;
    assert_eq!(
        runtime.merge(&again, Utc::now()),
        merged(0, true),
        "refusing the same version again is recorded once"
    );
}

/// Two views of one runtime that hold different outcomes at one revision
/// combine, in either order, to the one reported later; a stored outcome
/// without a report time yields to one with.
#[test]
fn of_two_outcomes_at_one_revision_the_later_report_stands() {
    let name = PolicyName::parse("name", "limits").unwrap();
    let report = |state| StatusReport {
        namespace: Namespace::parse("namespace", "team").unwrap(),
        runtime: RuntimeId::parse("id", "a").unwrap(),
        revision: 1,
        outcomes: vec![(
            name.clone(),
            PolicyOutcome {
                version: 1,
                state,
                error: String::new(),
                revision: 1,
                reported_at: None,
            },
        )],
    };
    let earlier = Utc::now();
    let later = earlier + chrono::TimeDelta::milliseconds(1);
    let mut applied = record("a", None);
    applied.merge(&report(ApplyState::Applied), earlier);
    let mut rejected = applied.clone();
    assert!(rejected.merge(&report(ApplyState::Rejected), later).changed);
    let state = |record: RuntimeRecord| record.policies[&name].state;
    assert_eq!(
        state(applied.clone().absorbing(&rejected)),
        ApplyState::Rejected
    );
    assert_eq!(
        state(rejected.clone().absorbing(&applied)),
        ApplyState::Rejected
    );

    let unstamped = record("a", Some((1, ApplyState::Applied, "")));
    assert_eq!(
        state(rejected.clone().absorbing(&unstamped)),
        ApplyState::Rejected
    );
    assert_eq!(state(unstamped.absorbing(&rejected)), ApplyState::Rejected);

    let stamped = rejected.policies[&name].reported_at;
    rejected.merge(
        &report(ApplyState::Rejected),
        later + chrono::TimeDelta::seconds(1),
    );
    assert_eq!(
        rejected.policies[&name].reported_at, stamped,
        "a repeated report keeps when its outcome was first reported"
    );
}

#[test]
fn the_tally_counts_each_runtime_once_and_groups_errors() {
    use ApplyState::*;
    let runtimes: Vec<_> = [
        record("a", Some((2, Applied, ""))),
        record("b", Some((2, Applied, ""))),
        record("c", Some((2, Rejected, "bad signature"))),
        record("d", Some((2, Rejected, "bad signature"))),
        record("e", Some((2, Rejected, "too big"))),
        record("f", Some((1, Applied, ""))),
        record("g", None),
    ]
    .into_iter()
    .map(|record| (record, RuntimeState::Connected))
    .collect();
    let mut tally = PolicyTally::default();
    for (runtime, state) in &runtimes {
        tally.add(runtime, *state);
    }
    let status = tally.status(&PolicyName::parse("n", "limits").unwrap(), 2);
    assert_eq!(
        (
            status.runtimes,
            status.applied,
            status.rejected,
            status.pending
        ),
        (7, 2, 3, 2)
    );
    assert_eq!(status.versions[0].version, 2);
    assert_eq!(status.versions[0].rejections[0].error, "bad signature");
    assert_eq!(status.versions[0].rejections[0].runtimes, 2);
    assert_eq!(status.versions[1].version, 1);
}

/// Counting a runtime out undoes counting it in, whatever else was
/// counted between: the tally after a change equals a tally made anew.
#[test]
fn counting_out_undoes_counting_in() {
    use ApplyState::*;
    let limits = PolicyName::parse("n", "limits").unwrap();
    let mut by_name = record("h", Some((2, Rejected, "too big")));
    by_name.names = vec![limits.clone()];
    let runtimes = [
        (record("a", Some((2, Applied, ""))), RuntimeState::Connected),
        (
            record("b", Some((2, Rejected, "too big"))),
            RuntimeState::Stale,
        ),
        (record("c", None), RuntimeState::Disconnected),
        (by_name, RuntimeState::Connected),
    ];
    let mut tally = PolicyTally::default();
    for (runtime, state) in &runtimes {
        tally.add(runtime, *state);
    }
    let all = tally.status(&limits, 2);
    assert_eq!(
        (all.runtimes, all.applied, all.rejected, all.stale),
        (4, 1, 2, 1)
    );
    assert_eq!(all.versions[0].rejections[0].runtimes, 2);
    for (runtime, state) in &runtimes[1..] {
        tally.remove(runtime, *state);
    }
    let mut fresh = PolicyTally::default();
    fresh.add(&runtimes[0].0, runtimes[0].1);
    assert_eq!(tally.status(&limits, 2), fresh.status(&limits, 2));
    tally.remove(&runtimes[0].0, runtimes[0].1);
    assert!(tally.names.is_empty(), "nothing is left counted");
    assert_eq!(tally.status(&limits, 2), PolicyStatus::default());
}
