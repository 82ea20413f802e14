package policyhub

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/policyhub/policyhub/sdk/go/bundle"
	pb "github.com/policyhub/policyhub/sdk/go/proto/policyhub/v1"
	"github.com/policyhub/policyhub/sdk/go/tree"
)

// freshness is the server's newest signed checkpoint verified, and
// whether it grew stale: a replica cut off from its database goes on
// serving, and its checkpoints stop moving.
type freshness struct {
	maxAge    time.Duration
	newest    *bundle.CheckpointClaims
	newestJWS string
	stale     bool
}

func (f *freshness) holds(jws string) bool { return jws != "" && jws == f.newestJWS }

func (f *freshness) observe(claims *bundle.CheckpointClaims, jws string) Event {
	if f.newest != nil && !claims.SignedAt.After(f.newest.SignedAt) {
		return nil
	}
	f.newest, f.newestJWS = claims, jws
	fresh := f.maxAge == 0 || time.Since(claims.SignedAt) < f.maxAge
	if f.stale && fresh {
		f.stale = false
		return CheckpointFresh{Revision: claims.Revision, SignedAt: claims.SignedAt}
	}
	return nil
}

// deadline is when the newest checkpoint grows too old; zero when it is
// not watched (no bound, none yet, or stale already).
func (f *freshness) deadline() time.Time {
	if f.maxAge == 0 || f.newest == nil || f.stale {
		return time.Time{}
	}
	return f.newest.SignedAt.Add(f.maxAge)
}

func (f *freshness) expire() CheckpointStale {
	f.stale = true
	return CheckpointStale{Revision: f.newest.Revision, SignedAt: f.newest.SignedAt, Age: max(0, time.Since(f.newest.SignedAt))}
}

func (f *freshness) String() string {
	if f.newest == nil {
		return "no checkpoint yet"
	}
	if f.stale && f.maxAge != 0 {
		return fmt.Sprintf("the server's newest checkpoint (revision %d, signed %s) is older than %d ms: its replica may be cut off from its database",
			f.newest.Revision, f.newest.SignedAt.Format(time.RFC3339), f.maxAge.Milliseconds())
	}
	return fmt.Sprintf("checkpoint of revision %d signed %s", f.newest.Revision, f.newest.SignedAt.Format(time.RFC3339))
}

// takeCheckpoint verifies and takes a checkpoint of the stream; the event
// when it ends a stale spell. One that does not verify ends the
// connection.
func (f *follower) takeCheckpoint(ctx context.Context, checkpoint *pb.Checkpoint, c *client) (Event, error) {
	if checkpoint.Jws == "" || f.freshness.holds(checkpoint.Jws) {
		return nil, nil
	}
	if kid, err := bundle.KeyID(checkpoint.Jws); err != nil || !f.jwks.Knows(kid) {
		if err := f.refreshKeys(ctx, c); err != nil {
			f.log.Warn("cannot fetch the signing keys again", "error", err)
		}
	}
	claims, err := bundle.VerifyCheckpoint(checkpoint.Jws, f.jwks)
	if err != nil {
		return nil, transient("a checkpoint does not verify: %v", err)
	}
	return f.freshness.observe(claims, checkpoint.Jws), nil
}

// verifiedSize is the size of the server's tree as verified last.
func (f *follower) verifiedSize() uint64 {
	if f.tree.Head == nil {
		return 0
	}
	return f.tree.Head.Size
}

func (f *follower) verifyNote(note string) (*tree.Verified, error) {
	head, err := tree.VerifyCheckpoint([]byte(note), f.tree.Origin, f.jwks)
	if err != nil {
		return nil, err
	}
	return &tree.Verified{TreeHead: *head, Note: note}, nil
}

// followTree follows the server's log's tree from a checkpoint's note: the
// first one is remembered; a newer tree only with a consistency proof; one
// that does not extend it only when the server proves a declared restore;
// anything else is a historyError.
func (f *follower) followTree(ctx context.Context, checkpoint *pb.Checkpoint, c *client) (*HistoryRestored, error) {
	if f.cachedTree != "" {
		note := f.cachedTree
		f.cachedTree = ""
		if head, err := f.verifyNote(note); err != nil {
			f.log.Error("refusing the cached tree", "error", err)
		} else {
			f.tree.Origin, f.tree.Head = head.Origin, head
		}
	}
	if checkpoint.Note == "" || (f.tree.Head != nil && f.tree.Head.Note == checkpoint.Note) {
		return nil, nil
	}
	offered, err := f.verifyNote(checkpoint.Note)
	if err != nil {
		// Perhaps a key rotated since the keys were fetched.
		if err := f.refreshKeys(ctx, c); err != nil {
			return nil, err
		}
		if offered, err = f.verifyNote(checkpoint.Note); err != nil {
			return nil, history("%v", err)
		}
	}
	judgement, diverges, err := f.tree.Judge(offered)
	if err != nil {
		return nil, history("%v", err)
	}
	switch judgement {
	case tree.Same:
		return nil, nil
	case tree.Diverges:
		return f.takeRestore(ctx, offered, diverges, c)
	}
	var proof []tree.Hash
	if f.tree.Head != nil {
		hashes, carried := carriedProof(checkpoint, f.tree.Head.Size, offered.Size)
		if !carried {
			if hashes, err = c.consistencyProof(ctx, f.tree.Head.Size, offered.Size); err != nil {
				return nil, err
			}
		}
		if proof, err = asHashes(hashes); err != nil {
			return nil, transient("a consistency proof: %v", err)
		}
	}
	if err := f.tree.Extend(offered, proof); err != nil {
		return f.takeRestore(ctx, offered, err.Error(), c)
	}
	f.rememberTree()
	return nil, nil
}

// carriedProof is the proof a watch message's checkpoint carries, when it
// is the one from the tree of oldSize to the tree of newSize: checked as one
// asked of the server would be, it spares the call.
func carriedProof(checkpoint *pb.Checkpoint, oldSize, newSize uint64) ([][]byte, bool) {
	carried := checkpoint.GetConsistencyProof()
	if carried == nil || carried.GetOldSize() != oldSize || carried.GetNewSize() != newSize {
		return nil, false
	}
	return carried.GetHashes(), true
}

func asHashes(hashes [][]byte) ([]tree.Hash, error) {
	out := make([]tree.Hash, len(hashes))
	for i, hash := range hashes {
		if len(hash) != len(out[i]) {
			return nil, errors.New("a hash is not 32 bytes")
		}
		copy(out[i][:], hash)
	}
	return out, nil
}

func (f *follower) takeRestore(ctx context.Context, offered *tree.Verified, diverges string, c *client) (*HistoryRestored, error) {
	from := f.verifiedSize()
	answer, err := c.restoreProof(ctx, offered.Size)
	if err != nil {
		if code := status.Code(err); code == codes.NotFound || code == codes.Unimplemented {
			return nil, history("%s", diverges)
		}
		return nil, failureOf(err)
	}
	hashes, err := asHashes(answer.Hashes)
	if err != nil {
		return nil, history("%s; the restore proof: %v", diverges, err)
	}
	reason, err := f.tree.Restore(offered, tree.RestoreProof{
		Canonical: answer.CanonicalEvent,
		LeafIndex: answer.LeafIndex,
		TreeSize:  answer.TreeSize,
		Hashes:    hashes,
	})
	if err != nil {
		return nil, history("%s; %v", diverges, err)
	}
	f.rememberTree()
	f.log.Warn("took the server's restored history, as its operator declared",
		"from_size", from, "to_size", offered.Size, "reason", reason)
	return &HistoryRestored{Reason: reason, FromSize: from, ToSize: offered.Size}, nil
}

func (f *follower) rememberTree() {
	if f.cache == nil || f.tree.Head == nil {
		return
	}
	err := f.cache.saveTree(f.tree.Head.Note)
	if err == nil && f.tree.RestoredThrough != nil {
		err = f.cache.saveRestore(*f.tree.RestoredThrough)
	}
	if err != nil {
		f.log.Warn("cannot cache the server's tree", "error", err)
	}
}
