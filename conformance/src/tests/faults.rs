//! Faults at random, as etcd's robustness tests draw them: for a seed, a
//! stream of activations (of one policy, or of several at once) with
//! faults from the kit's catalogue drawn between them: the link cut for a
//! while, black-holed, slowed, reset in the middle of a bundle; the server
//! killed with SIGKILL and started again; a bundle altered on the way; an
//! old message replayed. Then the whole history the runtime saw is checked
//! against the server's, and once the faults heal, one activation of every
//! policy must bring the runtime to the server's state.
//!
//! The same seed draws the same faults in the same order (the timing of
//! what they meet is the machine's); a failure names its seed, which the
//! kit's `--seed` replays.

use std::{collections::BTreeMap, fmt, time::Duration};

use anyhow::{Context as _, ensure};
use serde_json::json;

use super::{applied_once_in_order, test};
use crate::{
    harness::{Context, NAMESPACE, Test},
    protocol::{RuntimeEvent, RuntimeView, Source},
    proxy::Tamper,
};

pub fn tests() -> Vec<Test> {
    vec![test!(
        "faults.at-random",
        ["D2", "D3", "D6", "V3"],
        [],
        seeded,
        at_random
    )]
}

/// The policies the activations draw from.
const POLICIES: [&str; 3] = ["p", "q", "r"];

/// The longest pause drawn between two steps.
const LONGEST_PAUSE_MS: u64 = 200;

/// How long the runtime has to reach the healing activation.
const HEALED_WITHIN: Duration = Duration::from_secs(30);

/// What the alterations draw from: those every runtime refuses alone
/// (another policy's bundle needs one of the same length on the link).
const TAMPERS: [Tamper; 5] = [
    Tamper::Body,
    Tamper::Signature,
    Tamper::UnknownKey,
    Tamper::AlgNone,
    Tamper::Digest,
];

/// One step of a run, as the failure recounts it.
#[derive(Debug)]
enum Step {
    /// These versions activated together at `revision`.
    Activated {
        revision: u64,
        versions: Vec<(&'static str, u32)>,
    },
    Cut(Duration),
    BlackHole,
    Slow(Duration),
    ResetMidMessage,
    Kill9 {
        down: Duration,
    },
    Tamper(Tamper),
    Replay,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Activated { revision, versions } => {
                write!(f, "r{revision} ")?;
                let versions: Vec<String> = versions
                    .iter()
                    .map(|(name, version)| format!("{name}@{version}"))
                    .collect();
                write!(f, "{}", versions.join("+"))
            }
            Step::Cut(span) => write!(f, "cut {}ms", span.as_millis()),
            Step::BlackHole => write!(f, "black hole"),
            Step::Slow(delay) => write!(f, "slow {}ms", delay.as_millis()),
            Step::ResetMidMessage => write!(f, "reset mid-message"),
            Step::Kill9 { down } => write!(f, "kill -9, down {}ms", down.as_millis()),
            Step::Tamper(how) => write!(f, "tamper {how:?}"),
            Step::Replay => write!(f, "replay"),
        }
    }
}

/// The server's states, by the revision of the activation that made each.
#[derive(Default)]
struct ServerHistory {
    states: BTreeMap<u64, BTreeMap<String, u32>>,
    /// The versions each activation put in force together.
    activations: BTreeMap<u64, Vec<(&'static str, u32)>>,
}

impl ServerHistory {
    fn activated(&mut self, revision: u64, versions: &[(&'static str, u32)]) {
        let mut state = self.at(revision).cloned().unwrap_or_default();
        for (name, version) in versions {
            state.insert((*name).to_owned(), *version);
        }
        self.states.insert(revision, state);
        self.activations.insert(revision, versions.to_vec());
    }

    /// The server's state at `revision`: the newest activation's at or
    /// before it.
    fn at(&self, revision: u64) -> Option<&BTreeMap<String, u32>> {
        self.states
            .range(..=revision)
            .next_back()
            .map(|(_, state)| state)
    }
}

/// Draws steps from the seed for the kit's fault duration, heals,
/// activates every policy, and checks what the runtime saw.
async fn at_random(mut context: Context) -> anyhow::Result<()> {
    let seeded = context.seeded;
    let mut draw = Draw {
        rng: fastrand::Rng::with_seed(seeded.seed),
        context: &mut context,
        history: ServerHistory::default(),
        next_version: BTreeMap::new(),
        steps: Vec::new(),
        tampers: 0,
    };
    let outcome = draw.run(seeded.duration).await;
    outcome.with_context(|| {
        let recent: Vec<String> = draw.steps[draw.steps.len().saturating_sub(30)..]
            .iter()
            .map(Step::to_string)
            .collect();
        format!(
            "seed {}; replay it with --run faults.at-random --seed {} --fault-duration {}; \
             the last {} of its {} steps: {}",
            seeded.seed,
            seeded.seed,
            humantime::format_duration(seeded.duration),
            recent.len(),
            draw.steps.len(),
            recent.join(", ")
        )
    })
}

/// One run: what it drew, and what the server did.
struct Draw<'a> {
    rng: fastrand::Rng,
    context: &'a mut Context,
    history: ServerHistory,
    /// The next body's number, per policy.
    next_version: BTreeMap<&'static str, u32>,
    steps: Vec<Step>,
    /// How many alterations were drawn.
    tampers: usize,
}

impl Draw<'_> {
    async fn run(&mut self, duration: Duration) -> anyhow::Result<()> {
        let first = self.activate(&POLICIES).await?;
        let runtime = self.context.runtime(1).await?;
        runtime.until_revision(first).await?;
        let deadline = tokio::time::Instant::now() + duration;
        while tokio::time::Instant::now() < deadline {
            if self.rng.u8(0..10) < 6 {
                let mut names = POLICIES;
                self.rng.shuffle(&mut names);
                let together = self.rng.usize(1..=names.len());
                self.activate(&names[..together]).await?;
            } else {
                self.fault().await?;
            }
            let pause = self.rng.u64(0..=LONGEST_PAUSE_MS);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        self.context.proxy.heal();
        let last = self.activate(&POLICIES).await?;
        let view = runtime
            .until(
                &format!("the healing activation, revision {last}, in force"),
                HEALED_WITHIN,
                |view| view.revision() >= last,
            )
            .await?;
        check(&view, &self.history, self.tampers)
    }

    /// Publishes the next version of each of `names` and activates them
    /// together, under one revision; the revision.
    async fn activate(&mut self, names: &[&'static str]) -> anyhow::Result<u64> {
        let mut versions = Vec::with_capacity(names.len());
        for name in names {
            let n = self.next_version.entry(name).or_insert(1);
            let body = json!({ "name": name, "n": *n });
            *n += 1;
            let (version, _) = self
                .context
                .server
                .publish(NAMESPACE, name, body, false)
                .await?;
            versions.push((*name, version));
        }
        let revision = self.context.server.activate(NAMESPACE, &versions).await?;
        self.history.activated(revision, &versions);
        self.steps.push(Step::Activated { revision, versions });
        Ok(revision)
    }

    /// Draws one fault of the catalogue and makes it happen.
    async fn fault(&mut self) -> anyhow::Result<()> {
        let proxy = &self.context.proxy;
        let step = match self.rng.u8(0..7) {
            0 => {
                let span = Duration::from_millis(self.rng.u64(50..=800));
                proxy.cut();
                tokio::time::sleep(span).await;
                proxy.heal();
                Step::Cut(span)
            }
            1 => {
                proxy.black_hole();
                Step::BlackHole
            }
            2 => {
                let delay = Duration::from_millis(self.rng.u64(10..=100));
                proxy.slow(delay);
                tokio::time::sleep(delay * 5).await;
                proxy.slow(Duration::ZERO);
                Step::Slow(delay)
            }
            3 => {
                proxy.reset_mid_message();
                Step::ResetMidMessage
            }
            4 => {
                let down = Duration::from_millis(self.rng.u64(0..=1000));
                self.context.server.kill().await?;
                tokio::time::sleep(down).await;
                self.context.server.restart().await?;
                Step::Kill9 { down }
            }
            5 => {
                let how = TAMPERS[self.rng.usize(..TAMPERS.len())];
                proxy.tamper(how);
                self.tampers += 1;
                Step::Tamper(how)
            }
            _ => {
                proxy.replay();
                Step::Replay
            }
        };
        self.steps.push(step);
        Ok(())
    }
}

/// The whole history the runtime saw, against the server's:
///
/// - every state came once, in revision order, never back (D2, D3, D6);
/// - a state at the revision of an activation holds all of that
///   activation's versions (D2: whole);
/// - until a state is refused, each state is the server's at its revision;
///   after one (its change is not sent again), no policy is newer than the
///   server's at the revision, and one activation of every policy makes
///   the state the server's again (V3: the runtime goes on);
/// - no more states refused than bundles altered, and no history refused;
/// - the last state is the server's.
fn check(view: &RuntimeView, history: &ServerHistory, tampers: usize) -> anyhow::Result<()> {
    applied_once_in_order(view)?;
    let mut refused = 0;
    let mut exact = true;
    for event in &view.events {
        match event {
            RuntimeEvent::Rejected { revision, reason } => {
                refused += 1;
                ensure!(
                    refused <= tampers,
                    "revision {revision} was refused ({reason}), and only {tampers} bundles \
                     were altered"
                );
                exact = false;
            }
            RuntimeEvent::HistoryRefused { reason } => {
                anyhow::bail!("the server's history was refused ({reason}), and it never forked")
            }
            RuntimeEvent::Applied {
                revision,
                source: Source::Server,
                policies,
            } => {
                let server = history.at(*revision).with_context(|| {
                    format!("revision {revision} was applied, before any activation")
                })?;
                if let Some(together) = history.activations.get(revision) {
                    for (name, version) in together {
                        ensure!(
                            policies.get(*name) == Some(version),
                            "revision {revision} activated {together:?} together, and the \
                             state applied at it holds {policies:?}"
                        );
                    }
                    exact |= together.len() == POLICIES.len();
                }
                if exact {
                    ensure!(
                        policies == server,
                        "the state applied at revision {revision} holds {policies:?}, and \
                         the server's holds {server:?}"
                    );
                } else {
                    for (name, version) in policies {
                        ensure!(
                            server.get(name).is_some_and(|held| version <= held),
                            "the state applied at revision {revision} holds {name}@{version}, \
                             newer than the server's {server:?}"
                        );
                    }
                }
            }
            _ => {}
        }
    }
    let last = *history.states.keys().next_back().expect("an activation");
    let Some(state) = &view.in_force else {
        anyhow::bail!("no state in force after the healing activation");
    };
    ensure!(
        state.revision == last,
        "the state in force is at revision {}, past the server's last, {last}",
        state.revision
    );
    let held: BTreeMap<String, u32> = state
        .policies
        .iter()
        .map(|(name, policy)| (name.clone(), policy.version))
        .collect();
    ensure!(
        Some(&held) == history.at(last),
        "the state in force holds {held:?}, and the server's {:?}",
        history.at(last)
    );
    Ok(())
}
