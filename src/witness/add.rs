//! `add-checkpoint` of C2SP tlog-witness, the decision: a checkpoint of a
//! known log, signed by one of its keys, whose tree extends the one the
//! witness cosigned last for that log (by the consistency proof from the
//! size the client says it was), is cosigned; anything else is refused
//! with the status the protocol gives it.

use base64::Engine as _;
use http::StatusCode;
use signed_note::{Note, StandardVerifier, Verifier, VerifierList};
use tlog_tiles::{Checkpoint, EMPTY_HASH, Hash};

use super::state::{Cosigned, Record};

/// The most proof lines a request may carry.
const MAX_PROOF_LINES: usize = 63;

/// Why a checkpoint is not cosigned: the status and the body to answer.
#[derive(Debug)]
pub enum Refusal {
    /// 409: the client's old size is not the witness's; the body is its size.
    Conflict(u64),
    Other(StatusCode, String),
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Refusal {
    Refusal::Other(status, why.into())
}

/// A submission: the old size, the proof, the checkpoint note.
struct Submission {
    old: u64,
    proof: Vec<Hash>,
    note: Note,
    text: String,
}

fn parse(body: &[u8]) -> Result<Submission, Refusal> {
    let bad = |why: &str| refuse(StatusCode::BAD_REQUEST, why);
    let body = std::str::from_utf8(body).map_err(|_| bad("the body is not UTF-8"))?;
    let (head, note) = body
        .split_once("\n\n")
        .ok_or_else(|| bad("no empty line before the checkpoint"))?;
    let mut lines = head.split('\n');
    let old = lines
        .next()
        .and_then(|line| line.strip_prefix("old "))
        .filter(|size| size == &"0" || !size.starts_with('0'))
        .and_then(|size| size.parse().ok())
        .ok_or_else(|| bad("the first line is not \"old <size>\""))?;
    let proof = lines
        .map(|line| {
            base64::engine::general_purpose::STANDARD
                .decode(line)
                .ok()
                .and_then(|hash| <[u8; 32]>::try_from(hash).ok())
                .map(Hash)
                .ok_or_else(|| bad("a proof line is not a base64 SHA-256 hash"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if proof.len() > MAX_PROOF_LINES {
        return Err(bad("more than 63 proof lines"));
    }
    let parsed = Note::from_bytes(note.as_bytes()).map_err(|_| bad("not a signed note"))?;
    Ok(Submission {
        old,
        proof,
        note: parsed,
        text: note.to_owned(),
    })
}

/// The log verifier keys (`<origin>+<id>+base64(0x01 ‖ key)`) the witness
/// trusts, each log's origin the key's name.
pub struct Logs(Vec<String>);

impl Logs {
    /// Checks every key parses.
    pub fn new(keys: Vec<String>) -> anyhow::Result<Self> {
        for key in &keys {
            StandardVerifier::new(key)
                .map_err(|error| anyhow::anyhow!("the log key {key:?}: {error}"))?;
        }
        Ok(Logs(keys))
    }

    /// The verifiers of `origin`'s keys, none when it is not known.
    fn of(&self, origin: &str) -> Vec<Box<dyn Verifier>> {
        self.0
            .iter()
            .filter_map(|key| StandardVerifier::new(key).ok())
            .filter(|verifier| verifier.name() == origin)
            .map(|verifier| Box::new(verifier) as _)
            .collect()
    }
}

/// Checks `body` against `record`; when it is to be cosigned, updates
/// `record` and returns the checkpoint's text (the part cosigned).
pub fn add(body: &[u8], logs: &Logs, record: &mut Record) -> Result<Vec<u8>, Refusal> {
    let submission = parse(body)?;
    let checkpoint = Checkpoint::from_bytes(submission.note.text())
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "not a tlog checkpoint"))?;
    let origin = checkpoint.origin();
    let verifiers = logs.of(origin);
    if verifiers.is_empty() {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("unknown log {origin}"),
        ));
    }
    submission
        .note
        .verify(&VerifierList::new(verifiers))
        .map_err(|error| {
            refuse(
                StatusCode::FORBIDDEN,
                format!("not signed by the log's key: {error}"),
            )
        })?;
    let (size, root) = (checkpoint.size(), *checkpoint.hash());
    if submission.old > size {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "old size {} is above the checkpoint's {size}",
                submission.old
            ),
        ));
    }
    let held = record.logs.get(origin);
    let held_size = held.map_or(0, |held| held.size);
    if submission.old != held_size {
        return Err(Refusal::Conflict(held_size));
    }
    let unprocessable = |why: String| refuse(StatusCode::UNPROCESSABLE_ENTITY, why);
    if size == 0 && root != EMPTY_HASH {
        return Err(unprocessable("a tree of size 0 with a root".into()));
    }
    match held {
        None if !submission.proof.is_empty() => {
            return Err(unprocessable("a proof from the empty tree".into()));
        }
        None => {}
        Some(held) => {
            let held_root = Hash::parse_hash(&held.root).map_err(|_| {
                refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the witness's state holds a malformed root",
                )
            })?;
            let consistent = if size == held.size {
                root == held_root && submission.proof.is_empty()
            } else {
                tlog_tiles::check_tree(&submission.proof, size, root, held.size, held_root).is_ok()
            };
            if !consistent {
                return Err(unprocessable(format!(
                    "the tree of {size} does not extend the one of {} cosigned",
                    held.size
                )));
            }
        }
    }
    record.logs.insert(
        origin.to_owned(),
        Cosigned {
            size,
            root: root.to_string(),
            note: submission.text,
        },
    );
    Ok(submission.note.text().to_vec())
}
