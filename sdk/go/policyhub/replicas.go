package policyhub

import (
	"math/rand/v2"
	"time"

	"github.com/policyhub/policyhub/sdk/go/endpoints"
)

// replicas are the addresses in the runtime's order of preference, and
// the one in use: a failure moves to the next, and only a whole round of
// failures calls for the backoff.
type replicas struct {
	ranked        []string
	at            int
	failedInARow  int
	backoffTries  int
	initial, most time.Duration
}

func newReplicas(s *settings) *replicas {
	ranked := endpoints.Rank(s.runtimeID, s.endpoints)
	if s.runtimeID == "" {
		rand.Shuffle(len(ranked), func(i, j int) { ranked[i], ranked[j] = ranked[j], ranked[i] })
	}
	return &replicas{ranked: ranked, initial: s.backoffInitial, most: s.backoffMax}
}

func (r *replicas) current() string   { return r.ranked[r.at] }
func (r *replicas) preferred() string { return r.ranked[0] }
func (r *replicas) onPreferred() bool { return r.at == 0 }
func (r *replicas) movedToPreferred() { r.at = 0 }

// settled: a stream stayed open a while, so failures and the backoff
// count from zero again.
func (r *replicas) settled() {
	r.failedInARow, r.backoffTries = 0, 0
}

// failed moves to the next address and says how long to wait before
// trying it: a random time under the first bound within a round; after a
// whole round of failures, a random time under a bound doubling per round
// up to the largest (full jitter), so a fleet that lost its server comes
// back spread out.
func (r *replicas) failed() time.Duration {
	r.at = (r.at + 1) % len(r.ranked)
	r.failedInARow++
	if r.failedInARow < len(r.ranked) {
		return jitter(r.initial)
	}
	r.failedInARow = 0
	bound := r.most
	if r.backoffTries < 62 && r.initial<<r.backoffTries < r.most && r.initial<<r.backoffTries > 0 {
		bound = r.initial << r.backoffTries
	}
	r.backoffTries++
	return jitter(bound)
}

func jitter(bound time.Duration) time.Duration {
	return time.Duration(rand.Int64N(int64(bound) + 1))
}

// secondHalf is a random time in the second half of interval ("equal
// jitter"): how long reports and moves back to the preferred address wait,
// so that a fleet does not act in one wave.
func secondHalf(interval time.Duration) time.Duration {
	return interval/2 + jitter(interval/2)
}
