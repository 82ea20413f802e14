// Package tree checks the proofs of a policyhub server's event log, a
// Merkle tree as RFC 9162 defines it: that an event is in the log
// (inclusion) and that a later log extends an earlier one without
// rewriting it (consistency).
package tree

import (
	"golang.org/x/mod/sumdb/tlog"
)

// Hash is a node of the tree: a SHA-256 digest.
type Hash = tlog.Hash

// LeafHash is the hash of a leaf holding data: SHA-256 of 0x00 and data.
func LeafHash(data []byte) Hash {
	return tlog.RecordHash(data)
}

// VerifyInclusion reports whether proof shows that the leaf hashed leaf
// sits at index of the tree of size whose root is root.
func VerifyInclusion(index, size uint64, leaf, root Hash, proof []Hash) bool {
	if index >= size || size > 1<<62 {
		return false
	}
	return tlog.CheckRecord(proof, int64(size), root, int64(index), leaf) == nil
}

// VerifyConsistency reports whether proof shows that the tree of newSize
// whose root is newRoot extends the tree of oldSize whose root is oldRoot.
func VerifyConsistency(oldSize, newSize uint64, oldRoot, newRoot Hash, proof []Hash) bool {
	if oldSize == 0 || oldSize > newSize || newSize > 1<<62 {
		return false
	}
	if oldSize == newSize {
		return len(proof) == 0 && oldRoot == newRoot
	}
	return tlog.CheckTree(proof, int64(newSize), newRoot, int64(oldSize), oldRoot) == nil
}
