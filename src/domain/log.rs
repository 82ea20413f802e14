//! The event log as a Merkle tree, on top of the hash chain: leaf `i` is
//! the RFC 9162 leaf hash (`SHA-256(0x00 ‖ bytes)`) of the canonical form
//! of the `i`th event in id order (the bytes whose SHA-256 is the event's
//! chain hash, `chain::canonical`), interior nodes `SHA-256(0x01 ‖ left ‖
//! right)`. Its hashes are stored in the dense order of C2SP tlog-tiles,
//! so a root, an inclusion proof or a consistency proof reads at most a
//! few dozen stored hashes, however long the log.
//!
//! A checkpoint of the tree is a C2SP tlog-checkpoint (origin line, tree
//! size, base64 root hash) in a C2SP signed note.

use std::cell::RefCell;
use std::collections::HashMap;
use std::num::NonZeroU64;

pub use tlog_tiles::Hash;
use tlog_tiles::HashReader;

use policyhub_runtime::bundle::Jwks;
use policyhub_runtime::tree::verify_note;

use super::chain::{self, Checkpoint};
use super::{Error, EventRecord, Result};

/// The leaf hash of an event's canonical bytes.
pub fn leaf_hash(canonical: &[u8]) -> Hash {
    tlog_tiles::record_hash(canonical)
}

/// A tree computation's reads of stored hashes, made in two passes around
/// an asynchronous store: the tree's algorithms ask for the same indexes
/// whatever the hashes are, so the first pass (`needed`) learns them, the
/// caller reads them, and the second (`with`) computes from them.
pub struct Reads {
    asked: RefCell<Vec<u64>>,
    known: HashMap<u64, Hash>,
}

impl Reads {
    /// The stored hash indexes `compute` reads.
    pub fn needed<T>(compute: impl Fn(&Reads) -> Result<T>) -> Vec<u64> {
        let reads = Reads {
            asked: RefCell::default(),
            known: HashMap::new(),
        };
        // The answer from placeholder hashes is of no use: only the asks.
        let _ = compute(&reads);
        let mut asked = reads.asked.take();
        asked.sort_unstable();
        asked.dedup();
        asked
    }

    /// `compute` over the stored hashes `known` (by stored hash index).
    pub fn with<T>(known: HashMap<u64, Hash>, compute: impl Fn(&Reads) -> Result<T>) -> Result<T> {
        compute(&Reads {
            asked: RefCell::default(),
            known,
        })
    }
}

impl HashReader for Reads {
    fn read_hashes(&self, indexes: &[u64]) -> std::result::Result<Vec<Hash>, tlog_tiles::Error> {
        self.asked.borrow_mut().extend_from_slice(indexes);
        Ok(indexes
            .iter()
            .map(|index| self.known.get(index).copied().unwrap_or(Hash([0; 32])))
            .collect())
    }
}

fn tree_error(error: impl std::fmt::Display) -> Error {
    Error::Internal(format!("the log's Merkle tree: {error}"))
}

/// The root of the tree of the first `size` leaves.
pub fn root(size: u64, reads: &Reads) -> Result<Hash> {
    tlog_tiles::tree_hash(size, reads).map_err(tree_error)
}

/// The stored hashes that appending leaf `index` adds, from its leaf hash.
pub fn appended(index: u64, leaf: Hash, reads: &Reads) -> Result<Vec<Hash>> {
    tlog_tiles::stored_hashes_for_record_hash(index, leaf, reads).map_err(tree_error)
}

/// The stored hash index of leaf `index`; the ones `appended` returns
/// follow it.
pub fn leaf_position(index: u64) -> u64 {
    tlog_tiles::stored_hash_index(0, index)
}

/// How many leaves a tree has whose last leaf sits at stored hash index
/// `position`.
pub fn size_after_leaf_at(position: u64) -> u64 {
    tlog_tiles::split_stored_hash_index(position).1 + 1
}

/// The size of a tree of the log to prove in or against: at least one
/// leaf, as RFC 9162 proves no leaf in the empty tree and no tree
/// consistent with it. A request's size is made one where it arrives (its
/// 0 names the newest checkpoint's tree, or is refused), so no layer below
/// asks again; whether the log has grown this large is the store's to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TreeSize(NonZeroU64);

impl TreeSize {
    /// The tree of the first `leaves` leaves; none for the empty tree.
    pub fn new(leaves: u64) -> Option<TreeSize> {
        NonZeroU64::new(leaves).map(TreeSize)
    }

    /// How many leaves it has.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl std::fmt::Display for TreeSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An event's leaf in the log's tree: its place in id order, from 0. The
/// store finds it from the event; a proof checks it against the tree it is
/// proven in ([`LeafIndex::ensure_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeafIndex(u64);

impl LeafIndex {
    /// The leaf stored at hash index `position` (see [`leaf_position`]).
    pub fn at_position(position: u64) -> LeafIndex {
        LeafIndex(size_after_leaf_at(position) - 1)
    }

    /// Its index.
    pub fn get(self) -> u64 {
        self.0
    }

    /// Whether the tree of `size` leaves holds it.
    pub fn is_in(self, size: TreeSize) -> bool {
        self.0 < size.get()
    }

    /// INVALID_ARGUMENT on `tree_size` unless the tree of `size` leaves
    /// holds it: a tree signed before the event was written cannot prove
    /// it.
    pub fn ensure_in(self, size: TreeSize) -> Result<()> {
        if self.is_in(size) {
            return Ok(());
        }
        Err(Error::invalid(
            "tree_size",
            format!("leaf {self} is not in a tree of {size}"),
        ))
    }
}

impl std::fmt::Display for LeafIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The RFC 9162 inclusion proof (audit path) of `leaf` in the tree of
/// `size` leaves, which holds it ([`LeafIndex::ensure_in`]).
pub fn prove_inclusion(
    size: TreeSize,
    leaf: LeafIndex,
    reads: &impl HashReader,
) -> Result<Vec<Hash>> {
    tlog_tiles::prove_record(size.get(), leaf.get(), reads).map_err(tree_error)
}

/// The RFC 9162 consistency proof from the tree of `old` leaves to the one
/// of `new`, no smaller.
pub fn prove_consistency(
    old: TreeSize,
    new: TreeSize,
    reads: &impl HashReader,
) -> Result<Vec<Hash>> {
    tlog_tiles::prove_tree(new.get(), old.get(), reads).map_err(tree_error)
}

/// The body of a checkpoint of the tree (C2SP tlog-checkpoint): the
/// origin line, the size, the base64 root, each on its own line.
pub fn checkpoint_body(origin: &str, size: u64, root: Hash) -> Result<String> {
    let body = tlog_tiles::Checkpoint::new(origin, size, root, "").map_err(|_| {
        Error::Internal(format!(
            "{origin:?} cannot be the origin line of a checkpoint"
        ))
    })?;
    String::from_utf8(body.to_bytes()).map_err(tree_error)
}

/// The tree size a signed checkpoint note states.
pub fn signed_size(note: &str) -> Result<u64> {
    signed_tree(note).map(|(size, _)| size)
}

/// The tree size and root a signed checkpoint note states.
pub fn signed_tree(note: &str) -> Result<(u64, Hash)> {
    let body = note.split_once("\n\n").map_or(note, |(body, _)| body);
    tlog_tiles::Checkpoint::from_bytes(format!("{body}\n").as_bytes())
        .map(|checkpoint| (checkpoint.size(), *checkpoint.hash()))
        .map_err(|error| Error::DataLoss(format!("a stored checkpoint note: {error}")))
}

/// A tree (its size and root) and the RFC 9162 consistency proof that it
/// extends an older one, checked against both roots: made as a checkpoint
/// of `to` was signed over the checkpoint of `from`.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeExtension {
    /// The older tree.
    pub from: (u64, Hash),
    /// The newer tree.
    pub to: (u64, Hash),
    /// The proof.
    pub proof: Vec<Hash>,
}

/// The stored tree grown from a signed one, as `grown_from` judged it.
#[derive(Debug, Clone, PartialEq)]
pub struct Grown {
    /// Its size: the signed size and the leaves since.
    pub size: u64,
    /// Its root, from the stored hashes.
    pub root: Hash,
    /// The RFC 9162 consistency proof from the signed tree, checked against
    /// both roots (none from the empty tree, or when `unproven`).
    pub proof: Option<Vec<Hash>>,
    /// Why it does not extend the signed tree, if it does not.
    pub unproven: Option<String>,
}

/// The stored tree grown by `leaves` (the leaf hashes of the events since)
/// from the signed tree of `signed_size` leaves whose root is
/// `signed_root`, judged from the stored hashes `reads` gives.
///
/// Two checks, for two parts of storage: the signed root covers the old
/// tree's stored hashes, so the RFC 9162 consistency proof computed from
/// them must verify against it and the stored new root (recomputing the
/// old root alone would pass a rewritten node that only larger trees
/// read); nothing signed covers the hashes stored since, so each must be
/// the one its leaves make. Both read O(log n) stored hashes beside the
/// ones since. Every value is computed whatever the hashes are: `Reads`
/// learns what to read from a first pass over placeholders.
pub fn grown_from(
    signed_size: u64,
    signed_root: Hash,
    leaves: &[Hash],
    reads: &Reads,
) -> Result<Grown> {
    let size = signed_size + leaves.len() as u64;
    let root = root(size, reads)?;
    let mut unproven = None;
    let mut proven = None;
    if let Some((signed, grown)) = TreeSize::new(signed_size).zip(TreeSize::new(size)) {
        let proof = prove_consistency(signed, grown, reads)?;
        match tlog_tiles::check_tree(&proof, size, root, signed_size, signed_root) {
            Ok(()) => proven = Some(proof),
            Err(_) => {
                unproven = Some(format!(
                    "its stored hashes do not prove that the tree of {size} extends the signed \
                     tree of {signed_size}"
                ))
            }
        }
    }
    for (index, leaf) in (signed_size..).zip(leaves) {
        let made = appended(index, *leaf, reads)?;
        let positions: Vec<u64> = (leaf_position(index)..).take(made.len()).collect();
        let stored = reads.read_hashes(&positions).map_err(tree_error)?;
        if let Some((position, _)) = positions
            .iter()
            .zip(made.iter().zip(&stored))
            .find(|(_, (made, stored))| made != stored)
        {
            unproven.get_or_insert_with(|| {
                format!(
                    "its stored hash {position} is not the one the events since the signed tree \
                     make (leaf {index})"
                )
            });
        }
    }
    Ok(Grown {
        size,
        root,
        proof: proven.filter(|_| unproven.is_none()),
        unproven,
    })
}

/// A tree held in memory whole, its stored hashes in the dense order of
/// C2SP tlog-tiles: how a verifier recomputes the roots the checkpoints
/// sign from the events alone.
#[derive(Debug, Default)]
pub struct MemoryTree {
    hashes: Vec<Hash>,
    leaves: u64,
}

impl MemoryTree {
    /// Appends the leaf of the next event, whose canonical form is
    /// `canonical`.
    pub fn push(&mut self, canonical: &[u8]) -> Result<()> {
        let leaf = leaf_hash(canonical);
        let hashes = tlog_tiles::stored_hashes_for_record_hash(self.leaves, leaf, &*self)
            .map_err(tree_error)?;
        self.hashes.extend(hashes);
        self.leaves += 1;
        Ok(())
    }

    /// How many leaves it holds.
    pub fn size(&self) -> u64 {
        self.leaves
    }

    /// The root of the tree of its first `size` leaves (at most `size()`).
    pub fn root(&self, size: u64) -> Result<Hash> {
        tlog_tiles::tree_hash(size, self).map_err(tree_error)
    }
}

impl HashReader for MemoryTree {
    fn read_hashes(&self, indexes: &[u64]) -> std::result::Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|index| {
                self.hashes
                    .get(*index as usize)
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// Checks checkpoint notes, each with the revision of its checkpoint,
/// against the tree of `events` (the whole log, its chain verified, in id
/// order): each signed by a key of `jwks` under the log's origin (`origin`,
/// else the first note's: one for all) and signing the root the events make
/// at its size. Says which note does not hold, and why.
pub fn check_notes<'a>(
    events: &[EventRecord],
    notes: impl IntoIterator<Item = (u64, &'a str)>,
    origin: Option<&str>,
    jwks: &Jwks,
) -> std::result::Result<(), String> {
    let mut tree = MemoryTree::default();
    let mut previous = chain::GENESIS;
    for event in events {
        let canonical = chain::canonical(previous, event);
        tree.push(canonical.as_bytes())
            .map_err(|error| error.to_string())?;
        previous = &event.hash;
    }
    let mut origin = origin.map(str::to_owned);
    for (revision, note) in notes {
        let unproven = |why: String| {
            format!("the tree note of the checkpoint of revision {revision} does not hold: {why}")
        };
        let head = verify_note(note, origin.as_deref(), jwks).map_err(unproven)?;
        if head.size > tree.size() {
            return Err(unproven(format!(
                "it signs a tree of {} events, the log holds {}",
                head.size,
                tree.size()
            )));
        }
        let root = tree
            .root(head.size)
            .map_err(|error| unproven(error.to_string()))?;
        if root.0 != head.root {
            return Err(unproven(format!(
                "it signs the root {} of a tree of {}, the events make {}",
                encode_hash(&Hash(head.root)),
                head.size,
                encode_hash(&root)
            )));
        }
        origin.get_or_insert(head.origin);
    }
    Ok(())
}

/// An event's leaf, proven in a tree.
#[derive(Debug, Clone)]
pub struct InclusionProof {
    /// The event.
    pub event: EventRecord,
    /// Its canonical form: the leaf's bytes.
    pub canonical: String,
    /// Its leaf's index.
    pub leaf_index: LeafIndex,
    /// The size of the tree it is proven in.
    pub tree_size: TreeSize,
    /// The audit path, leaf to root.
    pub hashes: Vec<Hash>,
    /// The checkpoint of that tree, when the newest was asked for.
    pub checkpoint: Option<Checkpoint>,
}

/// That a bundle a runtime holds is in the log: its version's PUBLISHED
/// event and the event that made it active at its revision, proven in one
/// tree.
#[derive(Debug, Clone)]
pub struct BundleProof {
    /// The version's PUBLISHED event.
    pub published: InclusionProof,
    /// The ACTIVATED or ROLLED_BACK event of the revision.
    pub activated: InclusionProof,
}

/// That a tree extends an older one.
#[derive(Debug, Clone)]
pub struct ConsistencyProof {
    /// The older tree's size.
    pub old_size: TreeSize,
    /// The newer tree's size.
    pub new_size: TreeSize,
    /// The proof.
    pub hashes: Vec<Hash>,
    /// The checkpoint of the newer tree, when the newest was asked for.
    pub checkpoint: Option<Checkpoint>,
}

/// A hash as the notes write it: standard base64.
pub fn encode_hash(hash: &Hash) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(hash.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree of `n` leaves kept in memory the way storage keeps it.
    fn tree(n: u64) -> HashMap<u64, Hash> {
        let mut stored = HashMap::new();
        for index in 0..n {
            let leaf = leaf_hash(format!("event {index}").as_bytes());
            let compute = |reads: &Reads| appended(index, leaf, reads);
            let needed = Reads::needed(compute);
            let known = needed.iter().map(|i| (*i, stored[i])).collect();
            let hashes = Reads::with(known, compute).unwrap();
            for (offset, hash) in hashes.into_iter().enumerate() {
                stored.insert(leaf_position(index) + offset as u64, hash);
            }
        }
        stored
    }

    #[test]
    fn proofs_from_the_stored_hashes_check_against_the_roots() {
        let stored = tree(37);
        let known = || stored.clone();
        let root_of = |size| Reads::with(known(), |reads| root(size, reads)).unwrap();
        for size in [1, 2, 5, 16, 37] {
            for index in [0, size / 2, size - 1] {
                let (tree, leaf) = (TreeSize::new(size).unwrap(), LeafIndex(index));
                let proof =
                    Reads::with(known(), |reads| prove_inclusion(tree, leaf, reads)).unwrap();
                let leaf = leaf_hash(format!("event {index}").as_bytes());
                tlog_tiles::check_record(&proof, size, root_of(size), index, leaf).unwrap();
            }
        }
        let mut memory = MemoryTree::default();
        for index in 0..37 {
            memory.push(format!("event {index}").as_bytes()).unwrap();
        }
        for size in [1, 2, 5, 16, 37] {
            assert_eq!(
                memory.root(size).unwrap(),
                root_of(size),
                "in memory, at {size}"
            );
        }
        let (old, new) = (TreeSize::new(10).unwrap(), TreeSize::new(37).unwrap());
        let proof = Reads::with(known(), |reads| prove_consistency(old, new, reads)).unwrap();
        tlog_tiles::check_tree(&proof, 37, root_of(37), 10, root_of(10)).unwrap();
        assert!(tlog_tiles::check_tree(&proof, 37, root_of(37), 10, root_of(11)).is_err());
    }

    /// A leaf's index comes from where storage keeps its hash, and a tree
    /// that does not reach it is refused on the request's `tree_size`; no
    /// tree is empty.
    #[test]
    fn a_leaf_is_in_the_trees_that_reach_it() {
        assert_eq!(TreeSize::new(0), None);
        for index in [0, 1, 2, 5, 36] {
            let leaf = LeafIndex::at_position(leaf_position(index));
            assert_eq!(leaf.get(), index);
            let reaching = TreeSize::new(index + 1).unwrap();
            assert!(leaf.is_in(reaching));
            leaf.ensure_in(reaching).unwrap();
            if let Some(short) = TreeSize::new(index) {
                let refused = leaf.ensure_in(short).unwrap_err().to_string();
                assert!(
                    refused.contains(&format!("leaf {index} is not in a tree of {index}")),
                    "{refused}"
                );
            }
        }
    }

    /// Proof sizes at 10^3, 10^5 and 10^6 events, from a real tree: an
    /// inclusion proof has at most ⌈log₂ n⌉ hashes, a consistency proof at
    /// most about 2·log₂ n, whatever the leaf or the older size.
    #[test]
    fn proofs_grow_as_the_logarithm_of_the_log() {
        let mut tree = MemoryTree::default();
        for size in [1_000_u64, 100_000, 1_000_000] {
            for index in tree.size()..size {
                tree.push(&index.to_be_bytes()).unwrap();
            }
            let root = tree.root(size).unwrap();
            let log = u64::from(size.next_power_of_two().trailing_zeros());
            let mut widest = (0, 0);
            for index in [0, 1, size / 3, size / 2, size - 2, size - 1] {
                let proof = tlog_tiles::prove_record(size, index, &tree).unwrap();
                let leaf = leaf_hash(&index.to_be_bytes());
                tlog_tiles::check_record(&proof, size, root, index, leaf).unwrap();
                widest.0 = widest.0.max(proof.len() as u64);
            }
            for old in [1, 2, 3, size / 3, size / 2 + 1, size - 1] {
                let proof = tlog_tiles::prove_tree(size, old, &tree).unwrap();
                let old_root = tlog_tiles::tree_hash(old, &tree).unwrap();
                tlog_tiles::check_tree(&proof, size, root, old, old_root).unwrap();
                widest.1 = widest.1.max(proof.len() as u64);
            }
            println!(
                "{size} events: inclusion proof at most {} hashes ({} bytes), consistency proof at most {} ({} bytes); log2 n = {log}",
                widest.0,
                widest.0 * 32,
                widest.1,
                widest.1 * 32
            );
            assert!(widest.0 <= log, "inclusion at {size}");
            assert!(widest.1 <= 2 * log, "consistency at {size}");
        }
    }

    fn leaves(range: std::ops::Range<u64>) -> Vec<Hash> {
        range
            .map(|index| leaf_hash(format!("event {index}").as_bytes()))
            .collect()
    }

    fn grown(stored: &HashMap<u64, Hash>, signed: u64, to: u64) -> Grown {
        let signed_root = Reads::with(stored.clone(), |reads| root(signed, reads)).unwrap();
        let leaves = leaves(signed..to);
        Reads::with(stored.clone(), |reads| {
            grown_from(signed, signed_root, &leaves, reads)
        })
        .unwrap()
    }

    #[test]
    fn a_stored_tree_grown_from_a_signed_one_extends_it() {
        let stored = tree(37);
        for (signed, to) in [(1, 1), (10, 10), (10, 37), (16, 37), (36, 37)] {
            let grown = grown(&stored, signed, to);
            assert_eq!(grown.unproven, None, "from {signed} to {to}");
            assert_eq!(grown.size, to);
            let (signed_size, size) = (TreeSize::new(signed).unwrap(), TreeSize::new(to).unwrap());
            let proof = Reads::with(stored.clone(), |reads| {
                prove_consistency(signed_size, size, reads)
            });
            assert_eq!(grown.proof, Some(proof.unwrap()), "from {signed} to {to}");
            assert_eq!(
                grown.root,
                Reads::with(stored.clone(), |reads| root(to, reads)).unwrap()
            );
        }
    }

    /// A node of the signed tree that its own root does not read (the
    /// hash of the first 8 leaves, under a signed tree of 10) rewritten:
    /// the consistency proof ties it to the signed root.
    #[test]
    fn a_rewritten_node_of_the_signed_tree_is_found() {
        let mut stored = tree(37);
        stored.insert(tlog_tiles::stored_hash_index(3, 0), Hash([7; 32]));
        let grown = grown(&stored, 10, 37);
        assert_eq!(grown.proof, None);
        let why = grown.unproven.expect("unproven");
        assert!(why.contains("do not prove that the tree of 37"), "{why}");
    }

    /// The hashes stored since the signed tree rewritten consistently
    /// with each other (a node of 8 new leaves and the root above it): the
    /// consistency proof holds, the leaves do not make them.
    #[test]
    fn hashes_stored_since_the_signed_tree_are_made_again_from_the_leaves() {
        let mut stored = tree(16);
        let forged = Hash([7; 32]);
        let left = stored[&tlog_tiles::stored_hash_index(3, 0)];
        stored.insert(tlog_tiles::stored_hash_index(3, 1), forged);
        stored.insert(
            tlog_tiles::stored_hash_index(4, 0),
            tlog_tiles::node_hash(left, forged),
        );
        let grown = grown(&stored, 8, 16);
        assert_eq!(grown.proof, None);
        let why = grown.unproven.expect("unproven");
        assert!(
            why.contains("is not the one the events since the signed tree make (leaf 15)"),
            "{why}"
        );
    }

    #[test]
    fn a_checkpoint_body_is_three_lines() {
        let body = checkpoint_body("example.com/log", 3, tlog_tiles::EMPTY_HASH).unwrap();
        assert_eq!(
            body,
            "example.com/log\n3\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
        );
        assert_eq!(size_after_leaf_at(leaf_position(41)), 42);
    }
}
