package policyhub

import (
	"encoding/json"
	"time"
)

// Source says where a state came from.
type Source string

const (
	// SourceServer: received from the server.
	SourceServer Source = "server"
	// SourceCache: read back from the last-known-good cache, verified
	// again.
	SourceCache Source = "cache"
)

// Bundle is one policy's version whose signature, digest and subject were
// checked.
type Bundle struct {
	Name    string
	Version uint32
	// Label is the release label; empty when none.
	Label string
	// Digest is "sha256:" and the hex SHA-256 of the body's canonical JSON.
	Digest string
	// Revision is the revision at which this version became active.
	Revision uint64
	// KeyID is the key that signed it.
	KeyID string
	// Body is the policy document, from the verified payload.
	Body json.RawMessage
	// JWS is the signed bundle itself, for passing on.
	JWS string
}

// State is the whole active set of a namespace (or of the policies a
// subscription selects) at one revision. A State is never modified once
// handed out; it is safe to share.
type State struct {
	Namespace string
	// Revision: everything up to it is in the state.
	Revision uint64
	// Bundles are the active bundles by policy name.
	Bundles map[string]Bundle
	Source  Source
	// VerifiedAt is when it was verified and accepted (kept through the
	// cache).
	VerifiedAt time.Time
}

// Body returns the document of the policy name, and whether the state
// holds it.
func (s State) Body(name string) (json.RawMessage, bool) {
	bundle, ok := s.Bundles[name]
	return bundle.Body, ok
}

// Event is what a subscription says happened; one of the types below.
type Event interface{ isEvent() }

// FromCache: at start, the last-known-good state read back from the cache
// and verified again, in force until the server answers.
type FromCache struct{ State State }

// Applied: a new state is in force.
type Applied struct{ State State }

// Rejected: a state was refused (a bundle did not verify, or the
// application's validation refused it); the one before stays in force.
type Rejected struct {
	// Revision is the refused revision, 0 when not known (a cache).
	Revision uint64
	Reason   string
}

// Connected: a stream to the server is open (the server answered it);
// what changed after Revision follows.
type Connected struct {
	Revision uint64
	// Endpoint is the address it is open to.
	Endpoint string
}

// Disconnected: the stream was lost; the subscription resumes from
// Revision after RetryIn.
type Disconnected struct {
	Reason   string
	RetryIn  time.Duration
	Revision uint64
}

// Refused: the server refused the credentials, and the subscription
// retries (WithRetryWhenRefused), sooner once the token changes.
type Refused struct {
	Reason  string
	RetryIn time.Duration
}

// HistoryRefused: the server showed a history that does not extend the
// one verified (wound back, forked, or short of witnesses); nothing is
// applied from it, and the subscription retries after RetryIn.
type HistoryRefused struct {
	Reason string
	// VerifiedSize is the size of the server's log as verified last.
	VerifiedSize uint64
	RetryIn      time.Duration
}

// HistoryRestored: the server proved a restore its operator declared, and
// the subscription took the restored history.
type HistoryRestored struct {
	// Reason is the operator's.
	Reason   string
	FromSize uint64
	ToSize   uint64
}

// CheckpointStale: the server's newest signed checkpoint grew older than
// allowed (WithMaxCheckpointAge): its replica may be cut off from its
// database.
type CheckpointStale struct {
	Revision uint64
	SignedAt time.Time
	Age      time.Duration
}

// CheckpointFresh: a current checkpoint arrived after a stale one.
type CheckpointFresh struct {
	Revision uint64
	SignedAt time.Time
}

func (FromCache) isEvent()       {}
func (Applied) isEvent()         {}
func (Rejected) isEvent()        {}
func (Connected) isEvent()       {}
func (Disconnected) isEvent()    {}
func (Refused) isEvent()         {}
func (HistoryRefused) isEvent()  {}
func (HistoryRestored) isEvent() {}
func (CheckpointStale) isEvent() {}
func (CheckpointFresh) isEvent() {}
