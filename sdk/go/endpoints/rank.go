// Package endpoints orders the replica addresses a runtime is given, as
// every runtime of the contract orders them: a runtime prefers the same
// replica wherever it restarts, and the runtimes of a fleet spread evenly
// over the replicas.
package endpoints

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"slices"
)

// Rank returns addresses in the order a runtime named runtimeID prefers
// them (rendezvous hashing): an address weighs the first eight bytes,
// big-endian, of SHA-256(runtimeID || 0x00 || address), the heaviest
// first; an address given twice counts once.
func Rank(runtimeID string, addresses []string) []string {
	type weighed struct {
		address string
		weight  uint64
	}
	seen := make(map[string]bool, len(addresses))
	ranked := make([]weighed, 0, len(addresses))
	for _, address := range addresses {
		if seen[address] {
			continue
		}
		seen[address] = true
		hash := sha256.New()
		hash.Write([]byte(runtimeID))
		hash.Write([]byte{0})
		hash.Write([]byte(address))
		ranked = append(ranked, weighed{address, binary.BigEndian.Uint64(hash.Sum(nil))})
	}
	slices.SortStableFunc(ranked, func(a, b weighed) int { return cmp.Compare(b.weight, a.weight) })
	out := make([]string, len(ranked))
	for i, entry := range ranked {
		out[i] = entry.address
	}
	return out
}
