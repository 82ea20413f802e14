// Package policyhub follows the policies of a policyhub namespace: a
// Subscription holds a WatchActive stream to the server, verifies every
// signed bundle, puts whole states in force, resumes after any disconnect
// without missing a change, keeps the last good state on disk, reports
// what it applied, and verifies the server's history.
package policyhub

import (
	"context"
	"sync"
)

// Subscription follows the policies of a namespace at one or several
// addresses of one deployment. It is safe for concurrent use.
//
// With several addresses the runtime prefers one, chosen by its runtime id
// with rendezvous hashing (at random without an id); a failure moves to
// the next, and away from its first choice it tries that one again within
// the rebalance interval, moving back once it answers.
type Subscription struct {
	events   chan Event
	follower *follower
	cancel   context.CancelFunc
	done     chan struct{}
	err      error
	closing  sync.Once
}

// Subscribe starts following namespace at endpoints (http://host:port or
// https://host:port). The subscription runs until ctx is done or Close is
// called. A setting it cannot follow is refused here, before anything
// connects, with an error naming the setting and the value.
func Subscribe(ctx context.Context, endpoints []string, namespace string, options ...Option) (*Subscription, error) {
	s, err := newSettings(endpoints, namespace, options)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	events := make(chan Event)
	sub := &Subscription{events: events, follower: newFollower(s), cancel: cancel, done: make(chan struct{})}
	d := &driver{ctx: ctx, settings: s, follower: sub.follower, replicas: newReplicas(s), events: events}
	go func() {
		defer close(sub.done)
		defer close(events)
		sub.err = d.run()
	}()
	return sub, nil
}

// Events returns what the subscription does, in order: FromCache, Applied
// and Rejected for states; Connected, Disconnected, Refused, and the
// history's events. The channel is closed when the subscription ends; Err
// then says why. The subscription waits for its reader: read Events until
// it is closed.
func (s *Subscription) Events() <-chan Event { return s.events }

// State returns the state in force, and false before the first one.
func (s *Subscription) State() (State, bool) {
	state := s.follower.inForce.Load()
	if state == nil {
		return State{}, false
	}
	return *state, true
}

// Err returns the permanent failure that ended the subscription (a
// *WatchError), nil while it runs or when it was closed. Call it once
// Events is closed.
func (s *Subscription) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Close stops the subscription and waits until its goroutines and
// connections are gone. Its cache stays. It is safe to call more than
// once.
func (s *Subscription) Close() error {
	s.closing.Do(s.cancel)
	<-s.done
	return nil
}
