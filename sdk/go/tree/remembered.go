package tree

import (
	"encoding/json"
	"errors"
	"fmt"
)

// ErrHistory is the reason a checkpoint that does not extend the history a
// runtime verified is refused; errors.Is matches it.
var ErrHistory = errors.New("the server's history does not extend the one verified")

func refuseHistory(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrHistory, fmt.Sprintf(format, args...))
}

// Verified is a checkpoint verified: the tree it states, and the signed
// note itself, for a cache.
type Verified struct {
	TreeHead
	Note string
}

// Judgement says whether a checkpoint may follow the tree remembered, and
// how.
type Judgement int

const (
	// Same: the tree remembered.
	Same Judgement = iota
	// ProveFrom: a larger tree, taken with a consistency proof from the
	// remembered size.
	ProveFrom
	// Diverges: a tree that cannot extend the one remembered; only a
	// restore the server proves may replace it.
	Diverges
)

// RestoreProof shows that a tree records a restore its operator declared:
// the RESTORED event's canonical form, its leaf, and its inclusion proof.
type RestoreProof struct {
	Canonical string
	LeafIndex uint64
	TreeSize  uint64
	Hashes    []Hash
}

// Remembered is the tree of the server's log a runtime verified last, and
// what it requires of the next one.
type Remembered struct {
	// Origin is the log followed: pinned, or the first one verified.
	Origin string
	// Head is the tree verified last; nil before the first.
	Head *Verified
	// Witnesses are the witnesses' cosignature/v1 verifier keys.
	Witnesses []string
	// Cosignatures is how many of them must have cosigned a checkpoint
	// before it is taken.
	Cosignatures int
	// RestoredThrough is the leaf of the last restore taken; an older one
	// is not taken again. Nil before any.
	RestoredThrough *uint64
}

// Judge says whether offered may follow the remembered tree, and why not
// when it diverges; an error wrapping ErrHistory when it may not at all.
func (r *Remembered) Judge(offered *Verified) (Judgement, string, error) {
	if r.Cosignatures > 0 {
		cosigned, err := CosignedBy([]byte(offered.Note), r.Witnesses)
		if err != nil {
			return 0, "", refuseHistory("%v", err)
		}
		if len(cosigned) < r.Cosignatures {
			return 0, "", refuseHistory("the server's checkpoint of %d events carries %d of the %d witnesses' cosignatures this runtime requires",
				offered.Size, len(cosigned), r.Cosignatures)
		}
	}
	held := r.Head
	if held == nil {
		return ProveFrom, "", nil
	}
	if offered.Origin != held.Origin {
		return 0, "", refuseHistory("the server's checkpoint is of the log %q, this runtime follows %q", offered.Origin, held.Origin)
	}
	switch {
	case offered.Size < held.Size:
		return Diverges, fmt.Sprintf("the server's log of %d events is smaller than the %d this runtime verified: its history was wound back",
			offered.Size, held.Size), nil
	case offered.Size == held.Size && offered.Root == held.Root:
		return Same, "", nil
	case offered.Size == held.Size:
		return Diverges, fmt.Sprintf("the server's log of %d events is not the one of %d events this runtime verified: a forked history",
			offered.Size, held.Size), nil
	}
	return ProveFrom, "", nil
}

// Extend takes offered when proof shows it extends the remembered tree.
func (r *Remembered) Extend(offered *Verified, proof []Hash) error {
	if held := r.Head; held != nil && !VerifyConsistency(held.Size, offered.Size, held.Root, offered.Root, proof) {
		return refuseHistory("the server's log of %d events does not extend the one of %d events this runtime verified: a forked history",
			offered.Size, held.Size)
	}
	r.Origin, r.Head = offered.Origin, offered
	return nil
}

// Restore takes offered, a tree that does not extend the remembered one,
// when proof shows that it records a restore newer than any taken before;
// it returns the operator's reason.
func (r *Remembered) Restore(offered *Verified, proof RestoreProof) (string, error) {
	if proof.TreeSize != offered.Size {
		return "", refuseHistory("the restore is proven in a tree of %d events, not the %d offered", proof.TreeSize, offered.Size)
	}
	if r.RestoredThrough != nil && proof.LeafIndex <= *r.RestoredThrough {
		return "", refuseHistory("the restore it records (leaf %d) is not newer than the one taken before", proof.LeafIndex)
	}
	var event struct {
		Kind   string `json:"kind"`
		Reason any    `json:"reason"`
	}
	if err := json.Unmarshal([]byte(proof.Canonical), &event); err != nil {
		return "", refuseHistory("the restore's event is not JSON: %v", err)
	}
	if event.Kind != "RESTORED" {
		return "", refuseHistory("the event proven is not a restore")
	}
	if !VerifyInclusion(proof.LeafIndex, offered.Size, LeafHash([]byte(proof.Canonical)), offered.Root, proof.Hashes) {
		return "", refuseHistory("the restore's inclusion proof does not verify")
	}
	leaf := proof.LeafIndex
	r.RestoredThrough = &leaf
	r.Origin, r.Head = offered.Origin, offered
	reason, _ := event.Reason.(string)
	return reason, nil
}
