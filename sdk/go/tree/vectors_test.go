package tree

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// The shared Merkle vectors, which the server writes from its own code:
// every proof of them verifies, and none with one bit flipped.
type merkle struct {
	Leaves     []string `json:"leaves"`
	LeafHashes []string `json:"leaf_hashes"`
	Roots      []struct {
		TreeSize uint64 `json:"tree_size"`
		Root     string `json:"root"`
	} `json:"roots"`
	Inclusion []struct {
		TreeSize  uint64   `json:"tree_size"`
		LeafIndex uint64   `json:"leaf_index"`
		Proof     []string `json:"proof"`
	} `json:"inclusion"`
	Consistency []struct {
		OldSize uint64   `json:"old_size"`
		NewSize uint64   `json:"new_size"`
		Proof   []string `json:"proof"`
	} `json:"consistency"`
}

func hash(t *testing.T, text string) Hash {
	t.Helper()
	decoded, err := hex.DecodeString(text)
	if err != nil || len(decoded) != len(Hash{}) {
		t.Fatalf("not a hash: %q", text)
	}
	return Hash(decoded)
}

func hashes(t *testing.T, texts []string) []Hash {
	t.Helper()
	out := make([]Hash, len(texts))
	for i, text := range texts {
		out[i] = hash(t, text)
	}
	return out
}

// tampered flips one bit of the proof's first hash, or of the root when
// the proof is empty.
func tampered(proof []Hash, root Hash) ([]Hash, Hash) {
	if len(proof) > 0 {
		altered := append([]Hash(nil), proof...)
		altered[0][0] ^= 1
		return altered, root
	}
	root[0] ^= 1
	return proof, root
}

func TestEveryMerkleProofVerifiesAndNoneAltered(t *testing.T) {
	document, err := os.ReadFile(filepath.Join("..", "..", "..", "conformance", "vectors", "merkle.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vectors merkle
	if err := json.Unmarshal(document, &vectors); err != nil {
		t.Fatal(err)
	}
	leaves := make([]Hash, len(vectors.Leaves))
	for i, leaf := range vectors.Leaves {
		leaves[i] = LeafHash([]byte(leaf))
		if got := hex.EncodeToString(leaves[i][:]); got != vectors.LeafHashes[i] {
			t.Errorf("leaf %d hashes to %s, want %s", i, got, vectors.LeafHashes[i])
		}
	}
	roots := map[uint64]Hash{}
	for _, root := range vectors.Roots {
		roots[root.TreeSize] = hash(t, root.Root)
	}
	if len(vectors.Inclusion) == 0 || len(vectors.Consistency) == 0 {
		t.Fatal("no proofs")
	}
	for _, c := range vectors.Inclusion {
		proof := hashes(t, c.Proof)
		if !VerifyInclusion(c.LeafIndex, c.TreeSize, leaves[c.LeafIndex], roots[c.TreeSize], proof) {
			t.Errorf("inclusion of %d in %d refused", c.LeafIndex, c.TreeSize)
		}
		altered, root := tampered(proof, roots[c.TreeSize])
		if VerifyInclusion(c.LeafIndex, c.TreeSize, leaves[c.LeafIndex], root, altered) {
			t.Errorf("an altered inclusion of %d in %d taken", c.LeafIndex, c.TreeSize)
		}
	}
	for _, c := range vectors.Consistency {
		proof := hashes(t, c.Proof)
		if !VerifyConsistency(c.OldSize, c.NewSize, roots[c.OldSize], roots[c.NewSize], proof) {
			t.Errorf("consistency of %d with %d refused", c.OldSize, c.NewSize)
		}
		altered, root := tampered(proof, roots[c.NewSize])
		if VerifyConsistency(c.OldSize, c.NewSize, roots[c.OldSize], root, altered) {
			t.Errorf("an altered consistency of %d with %d taken", c.OldSize, c.NewSize)
		}
	}
}
