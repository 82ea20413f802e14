use super::*;
use crate::domain::runtime::{ApplyState, PolicyOutcome};

fn namespace() -> Namespace {
    Namespace::parse("namespace", "team").unwrap()
}

fn policy() -> PolicyName {
    PolicyName::parse("name", "limits").unwrap()
}

/// The one replica of a SQLite file in `dir`.
async fn fleet(dir: &std::path::Path) -> Fleet {
    alone(dir, RuntimeSettings::default()).await.0
}

/// The one replica of a SQLite file in `dir` with `settings`, and the
/// file's repository.
async fn alone(dir: &std::path::Path, settings: RuntimeSettings) -> (Fleet, Repository) {
    let repository = crate::storage::sqlite_repository(&dir.join("fleet.db")).await;
    let writers = Writers::of(&repository);
    assert_eq!(writers, Writers::ThisReplica);
    let fleet = Fleet::new(
        repository.clone(),
        writers,
        &settings,
        Instruments::default(),
    );
    (fleet, repository)
}

/// Makes replicas sharing one SQLite file in `dir` as they would share a
/// PostgreSQL database, each flushing every `flush_interval`.
async fn replicas(dir: &std::path::Path, flush_interval: Duration) -> impl Fn() -> Fleet {
    let repository = crate::storage::sqlite_repository(&dir.join("fleet.db")).await;
    let settings = RuntimeSettings {
        flush_interval,
        ..RuntimeSettings::default()
    };
    move || {
        Fleet::new(
            repository.clone(),
            Writers::EveryReplica,
            &settings,
            Instruments::default(),
        )
    }
}

fn applied(version: u32) -> StatusReport {
    StatusReport {
        namespace: namespace(),
        runtime: RuntimeId::parse("runtime.id", "rt-1").unwrap(),
        revision: u64::from(version),
        outcomes: vec![(
            policy(),
            PolicyOutcome {
                version,
                state: ApplyState::Applied,
                error: String::new(),
                revision: u64::from(version),
                reported_at: None,
            },
        )],
    }
}

/// Reads share one view of a namespace until a connect, a report or a
/// disconnect here; each of those shows in the next read.
#[tokio::test]
async fn a_view_is_shared_until_something_changes_here() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path()).await;
    let connection = fleet
        .connect(Arrival {
            namespace: namespace(),
            id: RuntimeId::parse("runtime.id", "rt-1").unwrap(),
            labels: RuntimeLabels::default(),
            names: Vec::new(),
            subject: "alice".into(),
        })
        .await
        .unwrap();
    let first = fleet.runtimes(&namespace()).await.unwrap();
    assert_eq!(first.runtimes().len(), 1);
    assert_eq!(first.runtimes()[0].1, RuntimeState::Connected);
    let again = fleet.runtimes(&namespace()).await.unwrap();
    assert!(Arc::ptr_eq(&first, &again), "nothing changed: one view");

    fleet.report("alice", applied(1)).await.unwrap();
    let reported = fleet.runtimes(&namespace()).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &reported));
    assert_eq!(reported.runtimes()[0].0.policies[&policy()].version, 1);
    fleet.report("alice", applied(2)).await.unwrap();
    let newer = fleet.runtimes(&namespace()).await.unwrap();
    assert_eq!(newer.runtimes()[0].0.policies[&policy()].version, 2);

    drop(connection);
    let gone = fleet.runtimes(&namespace()).await.unwrap();
    assert_eq!(gone.runtimes()[0].1, RuntimeState::Disconnected);
    assert_eq!(gone.not_stale().count(), 1);
}

/// A report that repeats what a connected runtime's record holds is not
/// written to its row: its replica's heartbeat vouches for it. One that
/// changes an outcome is, and so is the runtime's leaving, with when it
/// was last seen.
#[tokio::test]
async fn only_reports_that_change_something_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path()).await;
    let id = RuntimeId::parse("runtime.id", "rt-1").unwrap();
    let stored = async || {
        let repository = &fleet.inner.repository;
        repository
            .load_runtime(&namespace(), &id)
            .await
            .unwrap()
            .unwrap()
    };
    let connection = fleet.connect(arrival("rt-1")).await.unwrap();
    fleet.report("alice", applied(1)).await.unwrap();
    fleet.flush().await.unwrap();
    let first = stored().await;

    tokio::time::sleep(Duration::from_millis(20)).await;
    fleet.report("alice", applied(1)).await.unwrap();
    fleet.flush().await.unwrap();
    assert_eq!(stored().await, first, "nothing but the time moved");
    let view = fleet.runtimes(&namespace()).await.unwrap();
    assert!(view.runtimes()[0].0.last_seen > first.last_seen);
    assert_eq!(view.runtimes()[0].1, RuntimeState::Connected);

    fleet.report("alice", applied(2)).await.unwrap();
    fleet.flush().await.unwrap();
    let changed = stored().await;
    assert_eq!(changed.policies[&policy()].version, 2);
    assert!(changed.last_seen > first.last_seen);

    tokio::time::sleep(Duration::from_millis(20)).await;
    fleet.report("alice", applied(2)).await.unwrap();
    let reported = fleet.local()[&(namespace(), id.clone())].record.last_seen;
    drop(connection);
    fleet.flush().await.unwrap();
    let left = stored().await;
    assert!(!left.connected);
    assert!(
        left.last_seen >= reported,
        "leaving writes the last sign of life"
    );
}

/// A runtime that reports another outcome at the revision it reported
/// before (it applied, then rejected what it holds) is seen with the
/// outcome it reported last, in the view and in its row, before and after
/// each flush: the stored row's older word does not win the tie.
#[tokio::test]
async fn the_last_outcome_at_one_revision_stands() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path()).await;
    let id = RuntimeId::parse("runtime.id", "rt-1").unwrap();
    let _connection = fleet.connect(arrival("rt-1")).await.unwrap();
    let state = async || {
        let view = fleet.runtimes(&namespace()).await.unwrap();
        view.runtimes()[0].0.policies[&policy()].state
    };
    let stored = async || {
        let repository = &fleet.inner.repository;
        let row = repository.load_runtime(&namespace(), &id).await.unwrap();
        row.unwrap().policies[&policy()].state
    };
    fleet.report("alice", applied(1)).await.unwrap();
    fleet.flush().await.unwrap();
    assert_eq!(stored().await, ApplyState::Applied);

    let mut rejected = applied(1);
    rejected.outcomes[0].1.state = ApplyState::Rejected;
    fleet.report("alice", rejected).await.unwrap();
    assert_eq!(state().await, ApplyState::Rejected, "before the flush");
    fleet.flush().await.unwrap();
    assert_eq!(stored().await, ApplyState::Rejected);
    assert_eq!(state().await, ApplyState::Rejected, "after the flush");

    fleet.report("alice", applied(1)).await.unwrap();
    fleet.flush().await.unwrap();
    assert_eq!(stored().await, ApplyState::Applied);
    assert_eq!(state().await, ApplyState::Applied, "and back");
}

fn arrival(id: &str) -> Arrival {
    Arrival {
        namespace: namespace(),
        id: RuntimeId::parse("runtime.id", id).unwrap(),
        labels: RuntimeLabels::default(),
        names: Vec::new(),
        subject: "alice".into(),
    }
}

/// The counts a fleet read answers from, after any mix of connects,
/// reports, disconnects and flushes on two replicas, equal counts made
/// anew: from the replica's own view of the runtimes, and from a third
/// replica that read every row once both flushed.
#[tokio::test]
async fn counts_kept_up_to_date_equal_counts_made_anew() {
    use crate::domain::runtime::PolicyTally;

    let dir = tempfile::tempdir().unwrap();
    let replica = replicas(dir.path(), Duration::from_millis(4)).await;
    let (a, b) = (replica(), replica());
    let ids: Vec<String> = (0..24).map(|n| format!("rt-{n}")).collect();
    let holder = |n: usize| if n.is_multiple_of(3) { &b } else { &a };
    let mut streams: Vec<Option<Connection>> = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        streams.push(Some(holder(n).connect(arrival(id)).await.unwrap()));
    }
    a.policy_status(&namespace(), &policy(), 2).await.unwrap();
    // A fixed pseudo-random walk: every step picks a runtime and a move.
    let mut seed: u64 = 7;
    for revision in 1..=300u64 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let n = (seed >> 33) as usize % ids.len();
        match (seed >> 20) % 6 {
            0 => streams[n] = None,
            1 if streams[n].is_none() => {
                streams[n] = Some(holder(n).connect(arrival(&ids[n])).await.unwrap());
            }
            2 => holder(n).flush().await.unwrap(),
            _ => {
                let rejected = (seed >> 40).is_multiple_of(3);
                let report = StatusReport {
                    namespace: namespace(),
                    runtime: RuntimeId::parse("runtime.id", &ids[n]).unwrap(),
                    revision,
                    outcomes: vec![(
                        policy(),
                        PolicyOutcome {
                            version: 1 + (seed >> 44) as u32 % 3,
                            state: if rejected {
                                ApplyState::Rejected
                            } else {
                                ApplyState::Applied
                            },
                            error: if rejected {
                                format!("e{}", seed % 2)
                            } else {
                                String::new()
                            },
                            revision,
                            reported_at: None,
                        },
                    )],
                };
                // Through either replica: the one not holding the
                // stream keeps it until it flushes.
                let through = if (seed >> 50).is_multiple_of(4) {
                    &a
                } else {
                    holder(n)
                };
                through.report("alice", report).await.unwrap();
            }
        }
        if revision.is_multiple_of(50) {
            // The view and the counts as of one moment: a refresh of the
            // stored rows may land between two reads.
            let (view, counted) = a
                .with_roster(&namespace(), |_, roster| {
                    let view = roster.view(Duration::ZERO, |record, _| record.clone());
                    let counted: Vec<_> = (1..=3)
                        .map(|active| roster.policy_status(&policy(), active))
                        .collect();
                    (view, counted)
                })
                .await
                .unwrap();
            let mut anew = PolicyTally::default();
            for (runtime, state) in view.runtimes() {
                anew.add(runtime, *state);
            }
            for (active, counted) in (1..=3).zip(counted) {
                assert_eq!(
                    counted,
                    anew.status(&policy(), active),
                    "after {revision} moves, version {active}"
                );
            }
        }
    }
    for _ in 0..2 {
        b.flush().await.unwrap();
        a.flush().await.unwrap();
    }
    let third = replica();
    let expected = third
        .policy_status(&namespace(), &policy(), 2)
        .await
        .unwrap();
    assert!(expected.runtimes == 24 && !expected.versions.is_empty());
    let mut seen = a.policy_status(&namespace(), &policy(), 2).await.unwrap();
    for _ in 0..200 {
        if seen == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen = a.policy_status(&namespace(), &policy(), 2).await.unwrap();
    }
    assert_eq!(seen, expected, "a replica's counts equal the stored rows'");
}

/// Reading ever more namespaces keeps at most `MAX_ROSTERS` rosters,
/// letting go of the one read least lately.
#[tokio::test]
async fn rosters_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path()).await;
    let namespace = |n: usize| Namespace::parse("namespace", &format!("team-{n}")).unwrap();
    for n in 0..=MAX_ROSTERS {
        fleet
            .policy_status(&namespace(n), &policy(), 1)
            .await
            .unwrap();
    }
    let rosters = fleet.rosters();
    assert_eq!(rosters.len(), MAX_ROSTERS);
    assert!(!rosters.contains_key(&namespace(0)));
    assert!(rosters.contains_key(&namespace(MAX_ROSTERS)));
}

/// A read after a pause longer than the flush interval answers from the
/// stored rows as they are now, not as the last read found them: a
/// runtime another replica flushed meanwhile is counted at once.
#[tokio::test]
async fn a_read_after_a_pause_reads_the_stored_rows_first() {
    let dir = tempfile::tempdir().unwrap();
    let replica = replicas(dir.path(), Duration::from_millis(50)).await;
    let (a, b) = (replica(), replica());
    let read = async || a.policy_status(&namespace(), &policy(), 1).await.unwrap();
    assert_eq!(read().await.runtimes, 0);
    let _stream = b.connect(arrival("rt-b")).await.unwrap();
    b.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50) * (ANSWER_WITHIN_FLUSHES + 1)).await;
    assert_eq!(read().await.runtimes, 1, "the first read after the pause");
}

/// A background refresh cancelled before it ran (its runtime shut down)
/// does not leave its roster marked as refreshing: the next read past a
/// quarter interval starts another, which brings a runtime another
/// replica flushed meanwhile long before the rows are old enough for a
/// read to read them itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_refresh_does_not_stop_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let flush_interval = Duration::from_secs(1);
    let replica = replicas(dir.path(), flush_interval).await;
    let (a, b) = (replica(), replica());
    let read = async |fleet: &Fleet| {
        fleet
            .policy_status(&namespace(), &policy(), 1)
            .await
            .unwrap()
            .runtimes
    };
    assert_eq!(read(&a).await, 0);
    let rows_read = std::time::Instant::now();
    tokio::time::sleep(flush_interval / 3).await;
    // The read starts a refresh on a runtime of its own, which goes before
    // the refresh gets its turn at the stored rows.
    let turn = a.inner.stored_turn.lock().await;
    let cancelled = a.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            cancelled
                .policy_status(&namespace(), &policy(), 1)
                .await
                .unwrap()
        });
    })
    .join()
    .unwrap();
    drop(turn);

    let _stream = b.connect(arrival("rt-b")).await.unwrap();
    b.flush().await.unwrap();
    while read(&a).await == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer_within = flush_interval * ANSWER_WITHIN_FLUSHES;
    assert!(
        rows_read.elapsed() < answer_within / 2,
        "a background refresh read the rows, after {:?}",
        rows_read.elapsed()
    );
}

/// A replica alone on its store reads the stored rows once: its flushes
/// keep them as the database holds them, so no later read reads every
/// row again, however long the pause. (A row no flush of its wrote is
/// the probe: on SQLite nothing else writes one.)
#[tokio::test]
async fn a_replica_alone_reads_the_stored_rows_once() {
    let dir = tempfile::tempdir().unwrap();
    let flush_interval = Duration::from_millis(20);
    let settings = RuntimeSettings {
        flush_interval,
        ..RuntimeSettings::default()
    };
    let (fleet, repository) = alone(dir.path(), settings.clone()).await;
    let read = async || {
        fleet
            .policy_status(&namespace(), &policy(), 1)
            .await
            .unwrap()
    };
    let _held = fleet.connect(arrival("rt-held")).await.unwrap();
    fleet.flush().await.unwrap();
    assert_eq!(read().await.runtimes, 1);

    let probe = RuntimeRecord {
        namespace: namespace(),
        id: RuntimeId::parse("runtime.id", "rt-probe").unwrap(),
        subject: "alice".into(),
        labels: RuntimeLabels::default(),
        names: Vec::new(),
        connected: false,
        replica: "another-replica".into(),
        last_seen: Utc::now(),
        applied_revision: 0,
        policies: Default::default(),
    };
    let forget_after = chrono::TimeDelta::hours(1);
    repository
        .save_runtimes(
            "another-replica",
            vec![(probe, Flush::StreamHere)],
            forget_after,
        )
        .await
        .unwrap();
    tokio::time::sleep(flush_interval * (ANSWER_WITHIN_FLUSHES + 1)).await;
    fleet.flush().await.unwrap();
    assert_eq!(read().await.runtimes, 1, "read from memory");
    // A replica that starts reads them.
    let (restarted, _) = alone(dir.path(), settings).await;
    let read = restarted
        .policy_status(&namespace(), &policy(), 1)
        .await
        .unwrap();
    assert_eq!(read.runtimes, 2);
}

/// Where a replica alone writes the rows, a record its flush wrote is
/// written again as it is, without reading its row back: an outcome
/// written to the row behind its back (the probe; on SQLite nothing else
/// writes one) is not merged in. The first flush of a runtime that
/// connects anew reads its row, which may hold outcomes from before.
#[tokio::test]
async fn a_replica_alone_writes_what_it_flushed_without_reading_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, repository) = alone(dir.path(), RuntimeSettings::default()).await;
    let other = PolicyName::parse("name", "other").unwrap();
    let id = RuntimeId::parse("runtime.id", "rt-1").unwrap();
    let stored = async || {
        let row = repository.load_runtime(&namespace(), &id).await.unwrap();
        row.unwrap()
    };
    let write_behind = async || {
        let mut probe = stored().await;
        probe.policies.insert(
            other.clone(),
            PolicyOutcome {
                version: 7,
                state: ApplyState::Applied,
                error: String::new(),
                revision: 9,
                reported_at: None,
            },
        );
        let forget_after = chrono::TimeDelta::hours(1);
        let probe = vec![(probe, Flush::StreamHere)];
        repository
            .save_runtimes("another-replica", probe, forget_after)
            .await
            .unwrap();
    };
    let connection = fleet.connect(arrival("rt-1")).await.unwrap();
    fleet.report("alice", applied(1)).await.unwrap();
    fleet.flush().await.unwrap();
    write_behind().await;
    fleet.report("alice", applied(2)).await.unwrap();
    // A runtime new to the flush shares its transaction, and its row is read.
    let _beside = fleet.connect(arrival("rt-2")).await.unwrap();
    fleet.flush().await.unwrap();
    let row = stored().await;
    assert_eq!(row.policies[&policy()].version, 2);
    assert!(!row.policies.contains_key(&other), "not read back");
    let beside = RuntimeId::parse("runtime.id", "rt-2").unwrap();
    let beside = repository
        .load_runtime(&namespace(), &beside)
        .await
        .unwrap();
    assert!(beside.is_some_and(|row| row.connected));

    // Once its leaving is flushed, the replica lets the record go; the
    // next connect starts from the row.
    drop(connection);
    fleet.flush().await.unwrap();
    write_behind().await;
    let _connection = fleet.connect(arrival("rt-1")).await.unwrap();
    fleet.flush().await.unwrap();
    assert_eq!(stored().await.policies[&other].version, 7, "read back");
}

/// A replica alone whose roster shows `rt-kept`, connected, and
/// `rt-gone`, disconnected long enough for the next heartbeat to forget it.
async fn forgetting(dir: &std::path::Path) -> (Fleet, Connection) {
    let forget_after = Duration::from_millis(100);
    let settings = RuntimeSettings {
        forget_after,
        ..RuntimeSettings::default()
    };
    let (fleet, _) = alone(dir, settings).await;
    let gone = fleet.connect(arrival("rt-gone")).await.unwrap();
    let kept = fleet.connect(arrival("rt-kept")).await.unwrap();
    drop(gone);
    fleet.flush().await.unwrap();
    let read = fleet.policy_status(&namespace(), &policy(), 1).await;
    assert_eq!(read.unwrap().runtimes, 2);
    tokio::time::sleep(forget_after * 2).await;
    (fleet, kept)
}

/// What the heartbeat forgets leaves the rosters of the replica that
/// forgot it, without a read of every row.
#[tokio::test]
async fn a_forgotten_runtime_leaves_the_roster() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _kept) = forgetting(dir.path()).await;
    fleet.flush().await.unwrap();
    let view = fleet.runtimes(&namespace()).await.unwrap();
    let ids: Vec<&str> = view
        .runtimes()
        .iter()
        .map(|(record, _)| record.id.as_str())
        .collect();
    assert_eq!(ids, ["rt-kept"], "the disconnected runtime is forgotten");
}

/// A flush that fails after the heartbeat forgot a runtime leaves the
/// rosters to read the stored rows again: the next read shows what was
/// committed, not what the rosters held before.
#[tokio::test]
async fn after_a_failed_flush_a_read_reads_the_stored_rows_again() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _kept) = forgetting(dir.path()).await;
    // A revision no row can store: the records' write fails after the
    // heartbeat's transaction forgot `rt-gone`.
    let mut unstorable = applied(1);
    unstorable.runtime = RuntimeId::parse("runtime.id", "rt-kept").unwrap();
    unstorable.revision = u64::MAX;
    fleet.report("alice", unstorable).await.unwrap();
    fleet.flush().await.unwrap_err();
    let read = fleet.policy_status(&namespace(), &policy(), 1).await;
    assert_eq!(read.unwrap().runtimes, 1, "the forgotten runtime is gone");
}

/// A step counted ahead (while its transaction commits) is the tally the
/// reply's read answers from, and it follows the runtimes from then on.
#[tokio::test]
async fn a_step_counted_ahead_is_the_tally_reads_answer_from() {
    use crate::domain::rollout::tests::{rollout, step};

    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path()).await;
    let mut streams = Vec::new();
    for n in 0..10 {
        streams.push(fleet.connect(arrival(&format!("rt-{n}"))).await.unwrap());
    }
    fleet.prepare(&namespace()).await.unwrap();
    let rollout = rollout(vec![step(100, 0)]);
    fleet.count_ahead(&rollout).await.unwrap();
    assert_eq!(fleet.rosters()[&namespace()].tallies(), 1);

    let version = rollout.targets[0].version;
    fleet.report("alice", applied(version)).await.unwrap();
    let progress = fleet.progress(&rollout).await.unwrap();
    assert_eq!(
        fleet.rosters()[&namespace()].tallies(),
        1,
        "no second count"
    );
    let view = fleet.runtimes(&namespace()).await.unwrap();
    assert_eq!(
        progress,
        crate::domain::rollout::progress(&rollout, view.not_stale())
    );
    assert_eq!((progress.cohort, progress.applied), (10, 1));
}
