//! The kit catches broken runtimes, one obligation of the contract broken
//! at a time, and fails the kit's tests of that obligation:
//!
//! - the Rust library's test service, made to break one (`--break`);
//! - the Go library with one line of its own code changed (a check left
//!   out, a bound ignored), built into its test service.
//!
//! Every variant's service is started once; each test that must catch it
//! runs in a kit process of its own, several at a time, since a broken
//! runtime often fails by never doing what a test waits for (up to 20 s).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use serde_json::Value;

/// A broken runtime and the tests that must fail against it.
struct Variant {
    /// The test service's `--break` value.
    name: &'static str,
    /// The obligation it breaks.
    obligation: &'static str,
    /// The kit's tests that catch it, each of which checks `obligation`.
    caught_by: &'static [&'static str],
    /// What a test that caught it says (one of these), so that a test
    /// failing for another reason, such as a machine too slow for it, is
    /// not taken for a catch.
    because: &'static [&'static str],
}

/// The tests of a bundle altered on the way, one per alteration.
const TAMPERED: &[&str] = &[
    "verification.altered-body",
    "verification.bad-signature",
    "verification.unknown-key",
    "verification.alg-none",
    "verification.digest-mismatch",
];

const VARIANTS: &[Variant] = &[
    Variant {
        name: "first-snapshot-in-parts",
        obligation: "D1",
        caught_by: &["delivery.first-snapshot"],
        because: &["the first state in force is the snapshot"],
    },
    Variant {
        name: "apply-twice",
        obligation: "D2",
        caught_by: &[
            "delivery.every-change-once-in-order",
            "delivery.large-namespace",
            "resume.over-a-slow-link",
        ],
        because: &["was applied after revision", "not in parts"],
    },
    Variant {
        name: "reapply-after-reconnect",
        obligation: "D3",
        caught_by: &[
            "resume.after-a-cut",
            "resume.after-a-quiet-cut",
            "resume.after-a-black-hole",
            "resume.after-kill-9",
            "resume.after-a-reset-mid-message",
        ],
        because: &["was applied after revision"],
    },
    Variant {
        name: "ignore-heartbeats",
        obligation: "D4",
        caught_by: &["resume.after-a-black-hole"],
        because: &["the change made while black-holed, on a new link: not within"],
    },
    Variant {
        name: "no-jitter",
        obligation: "D5",
        caught_by: &["reconnect.a-fleet-cut-at-once-comes-back-spread"],
        because: &["a burst"],
    },
    Variant {
        name: "large-in-parts",
        obligation: "D7",
        caught_by: &["delivery.large-namespace"],
        because: &["not in parts"],
    },
    Variant {
        name: "skip-verification",
        obligation: "V1",
        caught_by: TAMPERED,
        because: &["refused with a reason: not within"],
    },
    Variant {
        name: "no-key-refetch",
        obligation: "V2",
        caught_by: &["verification.rotated-key"],
        because: &["unknown signing key"],
    },
    Variant {
        name: "keep-refused",
        obligation: "V3",
        caught_by: TAMPERED,
        because: &["was put in force"],
    },
    Variant {
        name: "ignore-revocation",
        obligation: "V4",
        caught_by: &["verification.revoked-key"],
        because: &["naming the revocation: not within", "moved from revision"],
    },
    Variant {
        name: "forget-cache",
        obligation: "C1",
        caught_by: &["cache.restart-with-the-server-down"],
        because: &["the cached state in force with the server down: not within"],
    },
    Variant {
        name: "no-reports",
        obligation: "P1",
        caught_by: &["reports.applied-and-rejected-reach-the-fleet-view"],
        because: &["the fleet view has no outcome of runtime"],
    },
    Variant {
        name: "accept-wound-back",
        obligation: "H1",
        caught_by: &["history.wound-back"],
        because: &["the state in force moved from revision"],
    },
    Variant {
        name: "accept-fork",
        obligation: "H2",
        caught_by: &["history.forked"],
        because: &["the state in force moved from revision"],
    },
    Variant {
        name: "restore-twice",
        obligation: "H3",
        caught_by: &["history.declared-restore-taken-once"],
        because: &["the declared restore taken and the restored state in force: not within"],
    },
    Variant {
        name: "ignore-stale-checkpoints",
        obligation: "H4",
        caught_by: &["history.stale-checkpoint"],
        because: &["said stale: not within"],
    },
    Variant {
        name: "ignore-witnesses",
        obligation: "W1",
        caught_by: &["witnesses.k-of-n-cosignatures"],
        because: &["the state in force moved from revision"],
    },
    Variant {
        name: "one-endpoint",
        obligation: "E1",
        caught_by: &["endpoints.moves-when-its-replica-dies"],
        because: &["not within"],
    },
    Variant {
        name: "never-move-back",
        obligation: "E2",
        caught_by: &["endpoints.drifts-back-when-its-replica-returns"],
        because: &["not within"],
    },
];

/// A broken Go library: one line of `sdk/go` changed, and the tests that
/// must catch it.
struct Mutation {
    variant: Variant,
    /// The file, under `sdk/go`.
    file: &'static str,
    /// The line changed, which the file holds once.
    line: &'static str,
    /// What it becomes.
    becomes: &'static str,
}

const GO_MUTATIONS: &[Mutation] = &[
    Mutation {
        variant: Variant {
            name: "apply-part-of-a-revision",
            obligation: "D1",
            caught_by: &["delivery.first-snapshot"],
            because: &["expected {\"limits\": 1, \"routes\": 2}"],
        },
        file: "policyhub/follower.go",
        line: "\t\tfor _, good := range verified {",
        becomes: "\t\tfor _, good := range verified[:min(1, len(verified))] {",
    },
    Mutation {
        variant: Variant {
            name: "apply-twice",
            obligation: "D2",
            caught_by: &["delivery.every-change-once-in-order"],
            because: &["was applied after revision"],
        },
        file: "policyhub/session.go",
        line: "\t\tif event := f.decide(d.ctx, whole, o.client); event != nil {",
        becomes: "\t\tif event := f.decide(d.ctx, whole, o.client); event != nil && d.emit(event) {",
    },
    Mutation {
        variant: Variant {
            name: "apply-part-of-an-activation",
            obligation: "D2",
            caught_by: &["delivery.every-change-once-in-order"],
            because: &[
                "holds half of the activation",
                "expected {\"a\": 10, \"b\": 2}",
            ],
        },
        file: "policyhub/follower.go",
        line: "\t\tverified = append(verified, good)",
        becomes: "\t\tverified = append(verified[:0], good)",
    },
    Mutation {
        variant: Variant {
            name: "resume-from-zero",
            obligation: "D3",
            caught_by: &["resume.after-a-quiet-cut"],
            because: &["did not resume from the revision it holds"],
        },
        file: "policyhub/session.go",
        line: "\trequest := &pb.WatchActiveRequest{Namespace: s.namespace, Names: s.names, SinceRevision: f.decided}",
        becomes: "\trequest := &pb.WatchActiveRequest{Namespace: s.namespace, Names: s.names, SinceRevision: 0}",
    },
    Mutation {
        variant: Variant {
            name: "ignore-heartbeats",
            obligation: "D4",
            caught_by: &["resume.after-a-black-hole"],
            because: &["the change made while black-holed, on a new link: not within"],
        },
        file: "policyhub/session.go",
        line: "\to := &opened{client: c, reporter: report, deadline: 3 * every, messages: messages, cancel: cancel}",
        becomes: "\to := &opened{client: c, reporter: report, deadline: 3 * time.Hour, messages: messages, cancel: cancel}",
    },
    Mutation {
        variant: Variant {
            name: "no-jitter",
            obligation: "D5",
            caught_by: &["reconnect.a-fleet-cut-at-once-comes-back-spread"],
            because: &["a burst"],
        },
        file: "policyhub/replicas.go",
        line: "\treturn time.Duration(rand.Int64N(int64(bound) + 1))",
        becomes: "\treturn bound",
    },
    Mutation {
        variant: Variant {
            name: "go-back",
            obligation: "D6",
            caught_by: &["resume.a-replayed-message-is-not-applied"],
            because: &["moved from revision", "was applied after revision"],
        },
        file: "policyhub/follower.go",
        line: "\tif f.isStale(r) {",
        becomes: "\tif false {",
    },
    Mutation {
        variant: Variant {
            name: "apply-the-same-again",
            obligation: "D6",
            caught_by: &["resume.a-replayed-message-is-not-applied"],
            because: &["was applied after revision"],
        },
        file: "policyhub/follower.go",
        line: "\tagain := r.revision == f.applied.Revision && f.applied.Revision > 0 && f.applied.Source == SourceServer",
        becomes: "\tagain := false",
    },
    Mutation {
        variant: Variant {
            name: "parts-as-wholes",
            obligation: "D7",
            caught_by: &["delivery.large-namespace"],
            because: &["of the 20 policies"],
        },
        file: "policyhub/revision.go",
        line: "\tif message.Complete {",
        becomes: "\tif true {",
    },
    Mutation {
        variant: Variant {
            name: "skip-verification",
            obligation: "V1",
            caught_by: TAMPERED,
            because: &["refused with a reason: not within"],
        },
        file: "policyhub/follower.go",
        line: "\t\tgood, err := f.verify(ctx, b, c)",
        becomes: "\t\tgood, err := f.verify(ctx, b, c); good, err = Bundle{Name: b.Name, Version: b.Version, Digest: b.Digest, Revision: b.Revision, JWS: b.Jws}, nil",
    },
    Mutation {
        variant: Variant {
            name: "any-subject",
            obligation: "V1",
            caught_by: &["verification.another-policys-bundle"],
            because: &["refused with a reason: not within"],
        },
        file: "bundle/verify.go",
        line: "\tif claims.Subject != expected {",
        becomes: "\tif false {",
    },
    Mutation {
        variant: Variant {
            name: "keys-fetched-once",
            obligation: "V2",
            caught_by: &["verification.rotated-key"],
            because: &["revision 2 in force: not within"],
        },
        file: "policyhub/follower.go",
        line: "\tf.jwks, f.revoked = jwks, revoked",
        becomes: "\tif f.jwks.Len() == 0 { f.jwks = jwks }; f.revoked = revoked",
    },
    Mutation {
        variant: Variant {
            name: "apply-the-rest",
            obligation: "V3",
            caught_by: TAMPERED,
            because: &["was put in force", "refused with a reason: not within"],
        },
        file: "policyhub/follower.go",
        line: "\t\t\t\treason = fmt.Sprintf(\"%s/%s version %d does not verify: %v\", f.settings.namespace, b.Name, b.Version, err)",
        becomes: "\t\t\t\t_ = fmt.Sprintf(\"%s/%s version %d does not verify: %v\", f.settings.namespace, b.Name, b.Version, err)",
    },
    Mutation {
        variant: Variant {
            name: "refuse-silently",
            obligation: "V3",
            caught_by: &["verification.altered-body", "verification.bad-signature"],
            because: &["refused with a reason: not within"],
        },
        file: "policyhub/follower.go",
        line: "\treturn Rejected{Revision: r.revision, Reason: reason}",
        becomes: "\treturn Rejected{Revision: r.revision}",
    },
    Mutation {
        variant: Variant {
            name: "forget-revocations",
            obligation: "V4",
            caught_by: &["verification.revoked-key"],
            because: &["naming the revocation: not within", "moved from revision"],
        },
        file: "policyhub/follower.go",
        line: "\tf.jwks, f.revoked = jwks, revoked",
        becomes: "\tf.jwks = jwks",
    },
    Mutation {
        variant: Variant {
            name: "no-key-refetch-for-a-re-signed-version",
            obligation: "V4",
            caught_by: &["verification.revoked-key"],
            because: &["naming the revocation: not within"],
        },
        file: "policyhub/follower.go",
        line: "\tif f.reSignsHeld(r) {",
        becomes: "\tif false {",
    },
    Mutation {
        variant: Variant {
            name: "revocation-not-cached",
            obligation: "V4",
            caught_by: &["cache.signed-by-a-revoked-key-is-refused"],
            because: &["the cached state signed by a revoked key was put in force"],
        },
        file: "policyhub/follower.go",
        line: "\tif concerns {",
        becomes: "\tif false {",
    },
    Mutation {
        variant: Variant {
            name: "forget-cache",
            obligation: "C1",
            caught_by: &["cache.restart-with-the-server-down"],
            because: &["the cached state in force with the server down: not within"],
        },
        file: "policyhub/follower.go",
        line: "\tif s.cacheDir != \"\" {",
        becomes: "\tif false {",
    },
    Mutation {
        variant: Variant {
            name: "cache-written-in-place",
            obligation: "C1",
            caught_by: &["cache.written-whole"],
            because: &["the cache was read cut short"],
        },
        file: "policyhub/cache.go",
        line: "\treturn writeAtomically(c.path, contents)",
        becomes: "\treturn os.WriteFile(c.path, contents, 0o644)",
    },
    Mutation {
        variant: Variant {
            name: "keep-what-verifies",
            obligation: "C1",
            caught_by: &["cache.altered-on-disk-is-refused"],
            because: &["the cache altered on disk was put in force"],
        },
        file: "policyhub/cache.go",
        line: "\t\t\treturn nil, nil, nil, fmt.Errorf(\"%w: a bundle does not verify: %v\", errCache, err)",
        becomes: "\t\t\tcontinue",
    },
    Mutation {
        variant: Variant {
            name: "cached-state-said-from-the-server",
            obligation: "C1",
            caught_by: &["cache.restart-with-the-server-down"],
            because: &["expected revision", "from the cache"],
        },
        file: "policyhub/cache.go",
        line: "\t\tSource:     SourceCache,",
        becomes: "\t\tSource:     SourceServer,",
    },
    Mutation {
        variant: Variant {
            name: "no-reports",
            obligation: "P1",
            caught_by: &["reports.applied-and-rejected-reach-the-fleet-view"],
            because: &["the fleet view has no outcome of runtime"],
        },
        file: "policyhub/reports.go",
        line: "\tif q.settings.runtimeID == \"\" {",
        becomes: "\tif true {",
    },
    Mutation {
        variant: Variant {
            name: "accept-wound-back",
            obligation: "H1",
            caught_by: &["history.wound-back"],
            because: &["the state in force moved from revision"],
        },
        file: "tree/remembered.go",
        line: "\t\treturn Diverges, fmt.Sprintf(\"the server's log of %d events is smaller than the %d this runtime verified: its history was wound back\",",
        becomes: "\t\treturn Same, fmt.Sprintf(\"the server's log of %d events is smaller than the %d this runtime verified: its history was wound back\",",
    },
    Mutation {
        variant: Variant {
            name: "forget-the-tree-once-refused",
            obligation: "H1",
            caught_by: &["history.wound-back"],
            because: &["the state in force moved from revision"],
        },
        file: "policyhub/history.go",
        line: "\t\t\treturn nil, history(\"%s\", diverges)",
        becomes: "\t\t\tf.tree.Head = nil; return nil, history(\"%s\", diverges)",
    },
    Mutation {
        variant: Variant {
            name: "tree-not-read-from-the-cache",
            obligation: "H1",
            caught_by: &["history.wound-back-while-stopped"],
            because: &["the state in force moved from revision"],
        },
        file: "policyhub/follower.go",
        line: "\t\tf.cachedTree = note",
        becomes: "\t\tf.cachedTree = note[:0]",
    },
    Mutation {
        variant: Variant {
            name: "accept-fork",
            obligation: "H2",
            caught_by: &["history.forked"],
            because: &["the state in force moved from revision"],
        },
        file: "policyhub/history.go",
        line: "\t\treturn f.takeRestore(ctx, offered, err.Error(), c)",
        becomes: "\t\treturn nil, nil",
    },
    Mutation {
        variant: Variant {
            name: "trust-the-carried-proof",
            obligation: "H2",
            caught_by: &["history.forked"],
            because: &["the state in force moved from revision"],
        },
        file: "policyhub/history.go",
        line: "\t\tif !carried {",
        becomes: "\t\tif carried { f.tree.Head = offered; return nil, nil }; if !carried {",
    },
    Mutation {
        variant: Variant {
            name: "restore-twice",
            obligation: "H3",
            caught_by: &["history.declared-restore-taken-once"],
            because: &["the state in force moved from revision"],
        },
        file: "tree/remembered.go",
        line: "\tif r.RestoredThrough != nil && proof.LeafIndex <= *r.RestoredThrough {",
        becomes: "\tif false {",
    },
    Mutation {
        variant: Variant {
            name: "restore-not-read-from-the-cache",
            obligation: "H3",
            caught_by: &["history.declared-restore-taken-once"],
            because: &[
                "the state in force moved from revision",
                "the restore taken already was taken again",
            ],
        },
        file: "policyhub/follower.go",
        line: "\t\tf.tree.RestoredThrough, err = f.cache.loadRestore()",
        becomes: "\t\t_, err = f.cache.loadRestore()",
    },
    Mutation {
        variant: Variant {
            name: "restore-from-the-cursor",
            obligation: "H3",
            caught_by: &["history.declared-restore-past-the-cursor"],
            because: &["expected {\"p\": 1, \"r\": 3}"],
        },
        file: "policyhub/session.go",
        line: "\t\t\t\t\tf.decided = 0",
        becomes: "\t\t\t\t\tf.decided += 0",
    },
    Mutation {
        variant: Variant {
            name: "ignore-stale-checkpoints",
            obligation: "H4",
            caught_by: &["history.stale-checkpoint"],
            because: &["said stale: not within"],
        },
        file: "policyhub/history.go",
        line: "\tif f.maxAge == 0 || f.newest == nil || f.stale {",
        becomes: "\tif true {",
    },
    Mutation {
        variant: Variant {
            name: "stale-too-early",
            obligation: "H4",
            caught_by: &["history.stale-checkpoint"],
            because: &["before it was"],
        },
        file: "policyhub/history.go",
        line: "\treturn f.newest.SignedAt.Add(f.maxAge)",
        becomes: "\treturn f.newest.SignedAt.Add(f.maxAge / 2)",
    },
    Mutation {
        variant: Variant {
            name: "never-fresh-again",
            obligation: "H4",
            caught_by: &["history.stale-checkpoint"],
            because: &["a current checkpoint said fresh: not within"],
        },
        file: "policyhub/history.go",
        line: "\tif f.stale && fresh {",
        becomes: "\tif false && fresh {",
    },
    Mutation {
        variant: Variant {
            name: "ignore-witnesses",
            obligation: "W1",
            caught_by: &["witnesses.k-of-n-cosignatures"],
            because: &["the state in force moved from revision"],
        },
        file: "tree/remembered.go",
        line: "\tif r.Cosignatures > 0 {",
        becomes: "\tif false {",
    },
    Mutation {
        variant: Variant {
            name: "one-endpoint",
            obligation: "E1",
            caught_by: &["endpoints.moves-when-its-replica-dies"],
            because: &["not within"],
        },
        file: "policyhub/replicas.go",
        line: "\tr.at = (r.at + 1) % len(r.ranked)",
        becomes: "\tr.at = (r.at + 0) % len(r.ranked)",
    },
    Mutation {
        variant: Variant {
            name: "never-move-back",
            obligation: "E2",
            caught_by: &["endpoints.drifts-back-when-its-replica-returns"],
            because: &["not within"],
        },
        file: "policyhub/session.go",
        line: "\tif d.replicas.onPreferred() {",
        becomes: "\tif true {",
    },
    Mutation {
        variant: Variant {
            name: "tls-whenever-a-ca-is-given",
            obligation: "T1",
            caught_by: &["transport.http-stays-plaintext"],
            because: &["revision 1 in force: not within"],
        },
        file: "policyhub/client.go",
        line: "\tsecure := parsed.Scheme == \"https\"",
        becomes: "\tsecure := parsed.Scheme == \"https\" || s.tls != nil",
    },
    Mutation {
        variant: Variant {
            name: "trust-any-certificate",
            obligation: "T1",
            caught_by: &["transport.https-verified-against-the-given-ca"],
            because: &["the state in force moved from revision 0"],
        },
        file: "policyhub/client.go",
        line: "\t\tconfig := s.tls",
        becomes: "\t\tconfig := &tls.Config{InsecureSkipVerify: true}",
    },
    Mutation {
        variant: Variant {
            name: "token-read-once",
            obligation: "T2",
            caught_by: &["transport.token-file-rotated-under-a-running-subscription"],
            because: &["in force: not within"],
        },
        file: "policyhub/token.go",
        line: "\t\tif readAs != nil && *readAs == current {",
        becomes: "\t\tif last != \"\" || readAs != nil && *readAs == current {",
    },
];

/// Kit processes at once, besides the reconnect storm: most of a broken
/// runtime's tests wait for what never comes.
const AT_ONCE: usize = 6;

const KIT: &str = env!("CARGO_BIN_EXE_policyhub-conformance");
const SERVICE: &str = env!("CARGO_BIN_EXE_policyhub-runtime-test-service");

/// The `policyhub` server beside the kit, as the workspace builds it.
fn server_binary() -> PathBuf {
    let server = Path::new(KIT).with_file_name("policyhub");
    assert!(
        server.exists(),
        "{} is missing: the kit starts the server binary beside it; build it with \
         `cargo build --bin policyhub` (`cargo test --workspace` does)",
        server.display()
    );
    server
}

/// The PostgreSQL cluster the kit makes the replicas' databases in, for
/// the tests of several endpoints.
fn database_url() -> String {
    std::env::var("POLICYHUB_TEST_DATABASE_URL").expect(
        "POLICYHUB_TEST_DATABASE_URL is not set: run the tests with ./scripts/test, \
         which starts a throwaway PostgreSQL cluster",
    )
}

/// A broken runtime's test service, stopped when dropped.
struct BrokenService {
    child: Child,
    address: String,
}

impl BrokenService {
    fn start(program: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the test service starts");
        let mut address = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut address)
            .expect("the test service prints its address");
        BrokenService {
            child,
            address: address.trim().to_owned(),
        }
    }
}

impl Drop for BrokenService {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// One test to run against one variant: the variant's index, the test's id.
type Job = (usize, &'static str);

/// What one kit run said of one test.
struct Verdict {
    outcome: String,
    message: String,
    seconds: f64,
}

/// Runs the kit's test `id` (alone) against the service at `address`.
fn run_kit(address: &str, id: &str, server: &Path, report: &Path) -> Verdict {
    let output = Command::new(KIT)
        .args(["--service", address, "--run", id, "--report"])
        .arg(report)
        .arg("--server-binary")
        .arg(server)
        .arg("--database-url")
        .arg(database_url())
        .output()
        .expect("the kit runs");
    let report: Value = serde_json::from_slice(&std::fs::read(report).unwrap_or_else(|error| {
        panic!(
            "no report of {id} ({error}); the kit said: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }))
    .expect("the report is JSON");
    let ran: Vec<&Value> = report["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .filter(|test| test["id"] == id)
        .collect();
    assert_eq!(ran.len(), 1, "the kit ran {id} once: {report}");
    Verdict {
        outcome: ran[0]["outcome"].as_str().unwrap_or_default().to_owned(),
        message: ran[0]["message"].as_str().unwrap_or_default().to_owned(),
        seconds: ran[0]["seconds"].as_f64().unwrap_or_default(),
    }
}

/// The kit's tests and the obligations each checks (`--list`).
fn listed() -> BTreeMap<String, BTreeSet<String>> {
    let output = Command::new(KIT)
        .arg("--list")
        .output()
        .expect("the kit lists");
    let list: Value = serde_json::from_slice(&output.stdout).expect("--list prints JSON");
    list.as_array()
        .expect("a list")
        .iter()
        .map(|test| {
            let id = test["id"].as_str().expect("an id").to_owned();
            let obligations = test["obligations"]
                .as_array()
                .expect("obligations")
                .iter()
                .map(|obligation| obligation.as_str().expect("an id").to_owned())
                .collect();
            (id, obligations)
        })
        .collect()
}

#[test]
fn every_broken_variant_fails_the_tests_of_the_obligation_it_breaks() {
    let _alone = alone();
    let server = server_binary();
    check_table(VARIANTS.iter());
    let services: Vec<BrokenService> = VARIANTS
        .iter()
        .map(|variant| BrokenService::start(SERVICE.as_ref(), &["--break", variant.name]))
        .collect();
    catch(&VARIANTS.iter().collect::<Vec<_>>(), &services, &server);
}

#[test]
fn every_broken_go_library_fails_the_tests_of_the_obligation_it_breaks() {
    let _alone = alone();
    let server = server_binary();
    check_table(GO_MUTATIONS.iter().map(|mutation| &mutation.variant));
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/go");
    let builds = tempfile::tempdir().expect("a scratch directory");
    let services: Vec<BrokenService> = GO_MUTATIONS
        .iter()
        .map(|mutation| {
            let copy = builds.path().join(mutation.variant.name);
            let service = mutated(&module, &copy, mutation);
            BrokenService::start(&service, &[])
        })
        .collect();
    let variants: Vec<&Variant> = GO_MUTATIONS
        .iter()
        .map(|mutation| &mutation.variant)
        .collect();
    catch(&variants, &services, &server);
}

/// The Go library's test service, built from a copy of `module` at `copy`
/// with the mutation's line changed.
fn mutated(module: &Path, copy: &Path, mutation: &Mutation) -> PathBuf {
    let copied = Command::new("cp")
        .arg("-r")
        .arg(module)
        .arg(copy)
        .status()
        .expect("cp runs");
    assert!(copied.success(), "copying {}", module.display());
    let file = copy.join(mutation.file);
    let source = std::fs::read_to_string(&file).expect("the mutated file");
    let mut lines: Vec<&str> = source.split('\n').collect();
    let at: Vec<usize> = (0..lines.len())
        .filter(|&n| lines[n] == mutation.line)
        .collect();
    assert_eq!(
        at.len(),
        1,
        "{}: sdk/go/{} holds the line {:?} once",
        mutation.variant.name,
        mutation.file,
        mutation.line
    );
    lines[at[0]] = mutation.becomes;
    std::fs::write(&file, lines.join("\n")).expect("the mutated file written");
    let service = copy.join("conformance-service");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&service)
        .arg("./internal/conformance-service")
        .current_dir(copy)
        .status()
        .expect("go runs: the Go toolchain is on PATH");
    assert!(built.success(), "{}: go build", mutation.variant.name);
    service
}

/// Every obligation the kit checks is broken by a real runtime, the Go
/// library with one line changed; the Rust library's test service breaks
/// most of them too, at its boundary.
#[test]
fn every_obligation_the_kit_checks_has_a_broken_runtime() {
    let tests = listed();
    for obligation in tests.values().flatten() {
        assert!(
            GO_MUTATIONS
                .iter()
                .any(|mutation| mutation.variant.obligation == obligation.as_str()),
            "no broken Go library breaks {obligation}: add a line of sdk/go to change to \
             GO_MUTATIONS here"
        );
    }
}

/// Each variant is caught by tests that check its obligation.
fn check_table<'a>(variants: impl Iterator<Item = &'a Variant>) {
    let tests = listed();
    for variant in variants {
        assert!(!variant.caught_by.is_empty(), "{} is caught", variant.name);
        for id in variant.caught_by {
            let obligations = tests
                .get(*id)
                .unwrap_or_else(|| panic!("{}: {id} is no test of the kit", variant.name));
            assert!(
                obligations.contains(variant.obligation),
                "{}: {id} does not check {}",
                variant.name,
                variant.obligation
            );
        }
    }
}

/// Held by the one table at work, from building its runtimes to the last
/// verdict: the Go builds or kit processes of one table beside the kit
/// processes of the other would starve them, and a test that waits for a
/// large namespace could then fail by its deadline instead of by its check.
fn alone() -> MutexGuard<'static, ()> {
    static ALONE: Mutex<()> = Mutex::new(());
    ALONE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs each test that must catch each variant against the variant's
/// service (`services[n]` is `variants[n]`'s), and fails unless every one
/// caught it.
fn catch(variants: &[&Variant], services: &[BrokenService], server: &Path) {
    let started = Instant::now();
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let (storms, jobs): (Vec<Job>, Vec<Job>) = variants
        .iter()
        .enumerate()
        .flat_map(|(n, variant)| variant.caught_by.iter().map(move |id| (n, *id)))
        .partition(|(_, id)| id.starts_with("reconnect."));
    let verdicts = Mutex::new(Vec::new());
    let queue = Mutex::new(jobs.into_iter().enumerate());
    std::thread::scope(|scope| {
        // The storm beside the others, which mostly wait for what never
        // comes; one at a time, since each works the machine hard.
        scope.spawn(|| {
            for (job, (n, id)) in storms.into_iter().enumerate() {
                let report = scratch.path().join(format!("storm-{job}.json"));
                let verdict = run_kit(&services[n].address, id, server, &report);
                verdicts.lock().unwrap().push((n, id, verdict));
            }
        });
        for _ in 0..AT_ONCE {
            scope.spawn(|| {
                loop {
                    let Some((job, (n, id))) = queue.lock().unwrap().next() else {
                        return;
                    };
                    let report = scratch.path().join(format!("{job}.json"));
                    let verdict = run_kit(&services[n].address, id, server, &report);
                    verdicts.lock().unwrap().push((n, id, verdict));
                }
            });
        }
    });

    let mut verdicts = verdicts.into_inner().unwrap();
    verdicts.sort_by_key(|(n, id, _)| (*n, *id));
    let mut escaped = Vec::new();
    for (n, id, verdict) in &verdicts {
        let variant = variants[*n];
        println!(
            "{:<24} {}  {:<50} {:<6} {:>5.1} s  {}",
            variant.name,
            variant.obligation,
            id,
            verdict.outcome,
            verdict.seconds,
            verdict.message.chars().take(100).collect::<String>()
        );
        let caught = verdict.outcome == "failed"
            && variant
                .because
                .iter()
                .any(|because| verdict.message.contains(because));
        if !caught {
            escaped.push(format!(
                "{} ({}) was not caught by {id}: {} {}",
                variant.name, variant.obligation, verdict.outcome, verdict.message
            ));
        }
    }
    println!(
        "{} variants, {} runs, {:.1} s",
        variants.len(),
        verdicts.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(escaped.is_empty(), "{}", escaped.join("\n"));
}
