//! The kit catches broken runtimes: the Rust library's test service, made
//! to break one obligation of the contract at a time (`--break`), fails
//! the kit's tests of that obligation.
//!
//! Every variant's service is started once; each test that must catch it
//! runs in a kit process of its own, several at a time, since a broken
//! runtime often fails by never doing what a test waits for (up to 20 s).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
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
        name: "go-back",
        obligation: "D6",
        caught_by: &["resume.a-replayed-message-is-not-applied"],
        because: &["moved from revision"],
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

/// A test service started with `--break`, stopped when dropped.
struct BrokenService {
    child: Child,
    address: String,
}

impl BrokenService {
    fn start(variant: &str) -> Self {
        let mut child = Command::new(SERVICE)
            .args(["--listen", "127.0.0.1:0", "--break", variant])
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
    let server = server_binary();
    let tests = listed();
    let checked: BTreeSet<&String> = tests.values().flatten().collect();
    for obligation in checked {
        assert!(
            VARIANTS
                .iter()
                .any(|variant| variant.obligation == obligation.as_str()),
            "no broken variant breaks {obligation}: add one to the test service's `Break` \
             and to VARIANTS here"
        );
    }
    for variant in VARIANTS {
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

    let started = Instant::now();
    let services: Vec<BrokenService> = VARIANTS
        .iter()
        .map(|variant| BrokenService::start(variant.name))
        .collect();
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let (storms, jobs): (Vec<Job>, Vec<Job>) = VARIANTS
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
                let verdict = run_kit(&services[n].address, id, &server, &report);
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
                    let verdict = run_kit(&services[n].address, id, &server, &report);
                    verdicts.lock().unwrap().push((n, id, verdict));
                }
            });
        }
    });
    drop(services);

    let mut verdicts = verdicts.into_inner().unwrap();
    verdicts.sort_by_key(|(n, id, _)| (*n, *id));
    let mut escaped = Vec::new();
    for (n, id, verdict) in &verdicts {
        let variant = &VARIANTS[*n];
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
        VARIANTS.len(),
        verdicts.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(escaped.is_empty(), "{}", escaped.join("\n"));
}
