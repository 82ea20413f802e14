package policyhub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/policyhub/policyhub/sdk/go/bundle"
	pb "github.com/policyhub/policyhub/sdk/go/proto/policyhub/v1"
	"github.com/policyhub/policyhub/sdk/go/tree"
)

// follower is what a subscription holds between sessions, and its
// decisions: the state in force, where to resume, the keys and the keys
// revoked, the cache, the outcomes not yet reported and the server's
// history as verified. It starts from the cache, verifies each bundle of a
// whole revision and applies or rejects the revision whole. One goroutine
// owns it; only the state in force is read from others.
type follower struct {
	settings *settings
	log      *slog.Logger
	// inForce is the state in force, read by Subscription.State.
	inForce atomic.Pointer[State]
	applied State
	// decided is the newest revision decided on (applied or rejected):
	// where a stream resumes.
	decided uint64
	jwks    *bundle.JWKS
	// revoked are the ids of the revoked keys, fetched with the keys:
	// whatever they sign is refused, a replayed message and a cached state
	// included.
	revoked    map[string]bool
	cache      *cache
	reports    reports
	freshness  freshness
	tree       tree.Remembered
	cachedTree string
}

func newFollower(s *settings) *follower {
	f := &follower{
		settings: s,
		log:      s.logger,
		applied:  State{Namespace: s.namespace, Bundles: map[string]Bundle{}, Source: SourceServer},
		jwks:     &bundle.JWKS{},
		revoked:  map[string]bool{},
		reports:  reports{settings: s, pending: map[string]*pb.PolicyApplyStatus{}},
		freshness: freshness{
			maxAge: s.maxCheckpointAge,
		},
		tree: tree.Remembered{Origin: s.logOrigin, Witnesses: s.witnesses, Cosignatures: s.cosignatures},
	}
	if s.cacheDir != "" {
		f.cache = newCache(s.cacheDir, s.namespace, s.names)
	}
	return f
}

// judge is the application's verdict on a state; a panic in it refuses
// the state as an error would.
func (f *follower) judge(ctx context.Context, state State) (reason string) {
	if f.settings.validate == nil {
		return ""
	}
	defer func() {
		if failure := recover(); failure != nil {
			reason = fmt.Sprintf("the validation failed: %v", failure)
		}
	}()
	if err := f.settings.validate(ctx, state); err != nil {
		return err.Error()
	}
	return ""
}

// start puts the cached state in force when there is a good one.
func (f *follower) start(ctx context.Context, emit func(Event) bool) {
	if f.cache == nil {
		return
	}
	note, err := f.cache.loadTree()
	if err == nil {
		f.cachedTree = note
		f.tree.RestoredThrough, err = f.cache.loadRestore()
	}
	if err != nil {
		f.log.Warn("cannot read the cached tree of the server's log", "error", err)
	}
	state, jwks, revoked, err := f.cache.load()
	if err != nil {
		f.log.Error("refusing the cached state; starting without one", "path", f.cache.path, "error", err)
		emit(Rejected{Reason: err.Error()})
		return
	}
	if state == nil {
		return
	}
	if reason := f.judge(ctx, *state); reason != "" {
		emit(Rejected{Revision: state.Revision, Reason: "the cached state was refused: " + reason})
		return
	}
	f.log.Info("started from the cached state until the server answers", "revision", state.Revision)
	f.decided, f.jwks, f.revoked = state.Revision, jwks, revoked
	f.put(*state)
	emit(FromCache{State: *state})
}

func (f *follower) put(state State) {
	f.applied = state
	f.inForce.Store(&state)
}

// refreshKeys fetches the keys again. A revocation learned that concerns
// the state in force is written to the cache at once, so that the cached
// state it signed is not started from again.
func (f *follower) refreshKeys(ctx context.Context, c *client) error {
	jwks, revoked, err := c.signingKeys(ctx)
	if err != nil {
		return err
	}
	concerns := false
	for kid := range revoked {
		if f.revoked[kid] {
			continue
		}
		f.log.Warn("the server revoked a signing key", "kid", kid)
		for _, held := range f.applied.Bundles {
			concerns = concerns || held.KeyID == kid
		}
	}
	f.jwks, f.revoked = jwks, revoked
	if concerns {
		f.save(f.applied)
	}
	return nil
}

func revokedKey(kid string) string {
	return "signed by revoked key " + strconv.Quote(kid)
}

// signedByRevoked is why the first of bundles signed by a revoked key is
// refused, "" when none is. The session takes no checkpoint of a message
// that carries one: an old message replayed carries an old checkpoint,
// which the revoked key may have signed too.
func (f *follower) signedByRevoked(bundles []*pb.Bundle) string {
	for _, b := range bundles {
		if kid, err := bundle.KeyID(b.Jws); err == nil && f.revoked[kid] {
			return fmt.Sprintf("%s version %d is %s", b.Name, b.Version, revokedKey(kid))
		}
	}
	return ""
}

// reSignsHeld reports whether a revision carries a version held in force
// signed by another key: the sign that the key which signed it may have
// been revoked, which the keys, fetched again, tell.
func (f *follower) reSignsHeld(revision *revision) bool {
	for _, b := range revision.bundles {
		held, ok := f.applied.Bundles[b.Name]
		if !ok || held.Version != b.Version || held.Digest != b.Digest {
			continue
		}
		if kid, err := bundle.KeyID(b.Jws); err == nil && kid != held.KeyID {
			return true
		}
	}
	return false
}

// verify verifies one bundle of the stream; a key the JWK Set does not
// hold makes it fetch the set once more, a revoked one refuses it.
func (f *follower) verify(ctx context.Context, b *pb.Bundle, c *client) (Bundle, error) {
	kid, err := bundle.KeyID(b.Jws)
	if err != nil {
		return Bundle{}, err
	}
	if !f.jwks.Knows(kid) && !f.revoked[kid] {
		if err := f.refreshKeys(ctx, c); err != nil {
			f.log.Warn("cannot fetch the signing keys again", "error", err)
		}
	}
	if f.revoked[kid] {
		return Bundle{}, errors.New(revokedKey(kid))
	}
	names := f.settings.names
	if len(names) > 0 && !slices.Contains(names, b.Name) {
		return Bundle{}, fmt.Errorf("%s/%s was not asked for", f.settings.namespace, b.Name)
	}
	claims, err := bundle.VerifyEnvelope(b.Jws, bundle.Envelope{
		Namespace: f.settings.namespace, Name: b.Name, Version: b.Version, Digest: b.Digest,
	}, f.jwks)
	if err != nil {
		return Bundle{}, err
	}
	return Bundle{
		Name:     b.Name,
		Version:  claims.Version,
		Label:    claims.Label,
		Digest:   claims.Digest,
		Revision: b.Revision,
		KeyID:    kid,
		Body:     claims.Body,
		JWS:      b.Jws,
	}, nil
}

// isStale says whether r brings nothing newer than the state in force: an
// older revision, or the server's own revision in force again (a message
// replayed). A reset (a server behind the cursor) is new, and so is the
// server's state at the revision of one read from the cache.
func (f *follower) isStale(r *revision) bool {
	again := r.revision == f.applied.Revision && f.applied.Revision > 0 && f.applied.Source == SourceServer
	return (r.revision < f.applied.Revision || again) && !r.reset
}

// decide applies or rejects one whole revision; what the application is
// told, nil when nothing (heartbeats and stale states tell it nothing).
func (f *follower) decide(ctx context.Context, r *revision, c *client) Event {
	var snapshot bool
	switch r.kind {
	case pb.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT:
		snapshot = true
	case pb.WatchEventKind_WATCH_EVENT_KIND_UPDATE:
	default:
		f.decided = max(f.decided, r.revision)
		return nil
	}
	if f.isStale(r) {
		if signer := f.signedByRevoked(r.bundles); signer != "" {
			// Harmless as an old message, but someone sends what a revoked
			// key signed: said, though nothing changes.
			f.log.Warn("refused an old revision", "revision", r.revision, "reason", signer)
			return Rejected{Revision: r.revision, Reason: signer}
		}
		f.log.Warn("ignoring a revision not newer than the one applied", "revision", r.revision, "applied", f.applied.Revision)
		return nil
	}
	if !snapshot && len(r.bundles) == 0 {
		f.decided = max(f.decided, r.revision)
		return nil
	}
	if f.reSignsHeld(r) {
		if err := f.refreshKeys(ctx, c); err != nil {
			f.log.Warn("cannot fetch the signing keys again", "error", err)
		}
	}
	verified := make([]Bundle, 0, len(r.bundles))
	own := map[string]string{}
	reason := ""
	for _, b := range r.bundles {
		good, err := f.verify(ctx, b, c)
		if err != nil {
			own[b.Name] = "does not verify: " + err.Error()
			if reason == "" {
				reason = fmt.Sprintf("%s/%s version %d does not verify: %v", f.settings.namespace, b.Name, b.Version, err)
			}
			continue
		}
		verified = append(verified, good)
	}
	if reason == "" {
		bundles := map[string]Bundle{}
		if !snapshot {
			bundles = maps.Clone(f.applied.Bundles)
		}
		for _, good := range verified {
			bundles[good.Name] = good
		}
		candidate := State{
			Namespace:  f.settings.namespace,
			Revision:   r.revision,
			Bundles:    bundles,
			Source:     SourceServer,
			VerifiedAt: time.Now(),
		}
		reason = f.judge(ctx, candidate)
		if reason == "" {
			f.reports.add(r, pb.ApplyState_APPLY_STATE_APPLIED, nil, "")
			f.save(candidate)
			f.put(candidate)
		}
	}
	if r.reset {
		f.decided = r.revision
	} else {
		f.decided = max(f.decided, r.revision)
	}
	if reason == "" {
		return Applied{State: f.applied}
	}
	f.log.Warn("rejected a revision; the previous one stays in force", "revision", r.revision, "reason", reason)
	f.reports.add(r, pb.ApplyState_APPLY_STATE_REJECTED, own, reason)
	return Rejected{Revision: r.revision, Reason: reason}
}

func (f *follower) save(state State) {
	if f.cache == nil {
		return
	}
	if err := f.cache.save(state, f.jwks, f.revoked); err != nil {
		f.log.Warn("cannot write the cache", "path", f.cache.path, "error", err)
	}
}
