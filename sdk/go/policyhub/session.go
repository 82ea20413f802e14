package policyhub

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/policyhub/policyhub/sdk/go/proto/policyhub/v1"
)

// The machinery behind a Subscription: connect, resume, verify, decide
// whole states, report, and say what happened as events.
//
//	start -- cache? --> FromCache (verified again, validated)
//	  |
//	  v
//	connect --> fetch JWKS --> WatchActive(since = decided revision) --> Connected
//	  ^                              | parts --> whole revision
//	  |                              |   verify every bundle, validate --> Applied / Rejected
//	  |                              |   report APPLIED / REJECTED
//	  +-- next address; full-jitter <+ any failure: UNAVAILABLE, reset, a bad
//	      backoff after a whole round    message, 3 missed heartbeats: Disconnected
//
// It resumes from the last revision it decided on (applied or rejected),
// applies a state only when it is newer than the one applied (unless the
// server says reset), follows the server's log's tree from each checkpoint
// (a declared restore taken on a stream resumed from the old history's
// cursor opens the stream anew from revision 0, so the restored server is
// taken whole), and moves between several addresses by rendezvous rank.
type driver struct {
	ctx      context.Context
	settings *settings
	follower *follower
	replicas *replicas
	events   chan<- Event
}

// emit hands an event to the subscription's reader; false once the
// subscription is closing.
func (d *driver) emit(event Event) bool {
	select {
	case d.events <- event:
		return true
	case <-d.ctx.Done():
		return false
	}
}

// run follows until the subscription closes (nil) or a permanent failure.
func (d *driver) run() error {
	s := d.settings
	d.follower.start(d.ctx, d.emit)
	for {
		started := time.Now()
		failure := d.session()
		if d.ctx.Err() != nil {
			return nil
		}
		var refusal *WatchError
		var wound *historyError
		refused := errors.As(failure, &refusal)
		if refused && !(s.retryWhenRefused && (refusal.Code == codes.Unauthenticated || refusal.Code == codes.PermissionDenied)) {
			return refusal
		}
		if time.Since(started) > s.backoffMax {
			d.replicas.settled()
		}
		failedFrom := d.replicas.current()
		retryIn := d.replicas.failed()
		refusedToken := ""
		var event Event
		switch {
		case errors.As(failure, &wound):
			d.follower.log.Error("refusing the server's history; the state in force stays", "reason", failure)
			event = HistoryRefused{Reason: failure.Error(), VerifiedSize: d.follower.verifiedSize(), RetryIn: retryIn}
		case refused:
			d.follower.log.Warn("the server refused the credentials; retrying", "reason", failure)
			event = Refused{Reason: failure.Error(), RetryIn: retryIn}
			if s.token != nil {
				refusedToken = s.token()
			}
		default:
			d.follower.log.Warn("watch interrupted; resuming", "endpoint", failedFrom, "reason", failure,
				"revision", d.follower.decided, "next", d.replicas.current(), "retry_in", retryIn)
			event = Disconnected{Reason: failure.Error(), RetryIn: retryIn, Revision: d.follower.decided}
		}
		if !d.emit(event) || !d.wait(retryIn, refused, refusedToken) {
			return nil
		}
	}
}

// wait waits out the backoff, noticing a stale checkpoint meanwhile and,
// after a refusal, a new token (read twice a second); false once the
// subscription is closing.
func (d *driver) wait(delay time.Duration, refused bool, refusedToken string) bool {
	until := time.Now().Add(delay)
	for {
		now := time.Now()
		if !now.Before(until) {
			return true
		}
		step := until.Sub(now)
		staleAt := d.follower.freshness.deadline()
		if !staleAt.IsZero() {
			step = min(step, max(0, staleAt.Sub(now)))
		}
		if refused {
			step = min(step, 500*time.Millisecond)
		}
		if !sleep(d.ctx, step) {
			return false
		}
		if !staleAt.IsZero() && !time.Now().Before(staleAt) && !d.emit(d.follower.freshness.expire()) {
			return false
		}
		if refused && d.settings.token != nil && d.settings.token() != refusedToken {
			return true
		}
	}
}

func sleep(ctx context.Context, duration time.Duration) bool {
	timer := time.NewTimer(duration)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// received is one read of a stream.
type received struct {
	message *pb.WatchActiveResponse
	err     error
}

// opened is a stream open on one address, and what goes with it.
type opened struct {
	client   *client
	reporter *reporter
	// deadline is three heartbeat intervals: a stream silent for longer is
	// dead.
	deadline time.Duration
	messages <-chan received
	cancel   context.CancelFunc
	reading  sync.WaitGroup
}

func (o *opened) close() {
	o.reporter.close()
	o.cancel()
	o.reading.Wait()
	o.client.close()
}

// open connects to address, fetches the keys if none are held, sends the
// reports pending and opens the watch from the decided revision; the
// server must answer within limit (0: a call's timeout).
func (d *driver) open(address string, limit time.Duration) (*opened, error) {
	f, s := d.follower, d.settings
	c, err := dial(s, address)
	if err != nil {
		return nil, transient("%s: %v", address, err)
	}
	if f.jwks.Len() == 0 {
		if err := f.refreshKeys(d.ctx, c); err != nil {
			c.close()
			return nil, err
		}
	}
	report := &reporter{client: c, ctx: d.ctx}
	_ = f.reports.flush(report, c.callTimeout)
	request := &pb.WatchActiveRequest{Namespace: s.namespace, Names: s.names, SinceRevision: f.decided}
	if s.runtimeID != "" {
		request.Runtime = &pb.RuntimeIdentity{Id: s.runtimeID, Labels: s.labels}
	}
	if limit == 0 {
		limit = c.callTimeout
	}
	ctx, cancel := context.WithCancel(d.ctx)
	late := false
	var lateness sync.Mutex
	timer := time.AfterFunc(limit, func() {
		lateness.Lock()
		late = true
		lateness.Unlock()
		cancel()
	})
	failed := func(err error) (*opened, error) {
		timer.Stop()
		report.close()
		cancel()
		c.close()
		lateness.Lock()
		defer lateness.Unlock()
		if late {
			return nil, transient("the server did not answer in time")
		}
		return nil, failureOf(err)
	}
	stream, err := c.api.WatchActive(ctx, request)
	if err != nil {
		return failed(err)
	}
	header, err := stream.Header()
	if err != nil {
		return failed(err)
	}
	var first *pb.WatchActiveResponse
	if len(header) == 0 {
		// gRPC hands a call that failed before any response headers came
		// (the server down, a refusal) no headers: they say nothing yet.
		// The stream is open once a message comes; a call that ends first
		// never was.
		if first, err = stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return failed(transient("the stream ended"))
			}
			return failed(err)
		}
	}
	if !timer.Stop() {
		return failed(context.DeadlineExceeded)
	}
	every := s.heartbeatInterval
	if every == 0 {
		every = announcedHeartbeat(header)
	}
	if every == 0 {
		every = DefaultHeartbeatInterval
	}
	messages := make(chan received)
	o := &opened{client: c, reporter: report, deadline: 3 * every, messages: messages, cancel: cancel}
	o.reading.Add(1)
	go func() {
		defer o.reading.Done()
		deliver := func(r received) bool {
			select {
			case messages <- r:
				return r.err == nil
			case <-ctx.Done():
				return false
			}
		}
		if first != nil && !deliver(received{message: first}) {
			return
		}
		for {
			message, err := stream.Recv()
			if !deliver(received{message, err}) {
				return
			}
		}
	}()
	return o, nil
}

// session is one connection's life; it ends only with a failure, or when
// the subscription closes.
func (d *driver) session() error {
	f, s, replicas := d.follower, d.settings, d.replicas
	o, err := d.open(replicas.current(), 0)
	if err != nil {
		return err
	}
	defer func() { o.close() }()
	if !d.emit(Connected{Revision: f.decided, Endpoint: replicas.current()}) {
		return d.ctx.Err()
	}
	rebalanceAt := d.nextRebalance()
	var parts assembler
	var reportAt time.Time
	lastMessage := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		messageDeadline := lastMessage.Add(o.deadline)
		staleAt := f.freshness.deadline()
		wake := messageDeadline
		for _, at := range []time.Time{reportAt, staleAt, rebalanceAt} {
			if !at.IsZero() && at.Before(wake) {
				wake = at
			}
		}
		timer.Reset(max(0, time.Until(wake)))
		var got received
		select {
		case <-d.ctx.Done():
			return d.ctx.Err()
		case got = <-o.messages:
			timer.Stop()
		case now := <-timer.C:
			if !reportAt.IsZero() && !now.Before(reportAt) {
				reportAt = time.Time{}
				if err := f.reports.flush(o.reporter, o.deadline); err != nil {
					return transient("no answer to a report for %d ms, three heartbeats", o.deadline.Milliseconds())
				}
			}
			if !staleAt.IsZero() && !now.Before(staleAt) {
				stale := f.freshness.expire()
				reason := f.freshness.String()
				d.emit(stale)
				return transient("%s", reason)
			}
			if !rebalanceAt.IsZero() && !now.Before(rebalanceAt) {
				moved := d.rebalance(o)
				if moved == nil {
					rebalanceAt = d.nextRebalance()
					continue
				}
				o, rebalanceAt, parts, lastMessage = moved, time.Time{}, assembler{}, time.Now()
				if !d.emit(Connected{Revision: f.decided, Endpoint: replicas.current()}) {
					return d.ctx.Err()
				}
				continue
			}
			if !time.Now().Before(messageDeadline) {
				return transient("no message for %d ms, three heartbeats", o.deadline.Milliseconds())
			}
			continue
		}
		if got.err != nil {
			if errors.Is(got.err, io.EOF) {
				return transient("the stream ended")
			}
			return failureOf(got.err)
		}
		message := got.message
		lastMessage = time.Now()
		if message.Checkpoint != nil && f.signedByRevoked(message.Bundles) == "" {
			restored, err := f.followTree(d.ctx, message.Checkpoint, o.client)
			if err != nil {
				return err
			}
			if restored != nil {
				d.emit(*restored)
				if message.Kind != pb.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT {
					// The stream resumed from a cursor of the history left
					// behind, so what the restored server took up to that
					// revision would never come: the restored server is
					// taken whole, from a snapshot on a stream opened anew.
					f.decided = 0
					reopened, err := d.open(replicas.current(), 0)
					if err != nil {
						return err
					}
					o.close()
					o, parts, lastMessage = reopened, assembler{}, time.Now()
					continue
				}
			}
			fresh, err := f.takeCheckpoint(d.ctx, message.Checkpoint, o.client)
			if err != nil {
				return err
			}
			if fresh != nil {
				d.emit(fresh)
			}
		}
		whole, err := parts.push(message)
		if err != nil {
			return err
		}
		if whole == nil {
			continue
		}
		if event := f.decide(d.ctx, whole, o.client); event != nil {
			d.emit(event)
		}
		if s.reportSpread <= 0 {
			if err := f.reports.flush(o.reporter, o.deadline); err != nil {
				return transient("no answer to a report for %d ms, three heartbeats", o.deadline.Milliseconds())
			}
		} else if reportAt.IsZero() && len(f.reports.pending) > 0 {
			reportAt = time.Now().Add(secondHalf(s.reportSpread))
		}
	}
}

func (d *driver) nextRebalance() time.Time {
	if d.replicas.onPreferred() {
		return time.Time{}
	}
	return time.Now().Add(secondHalf(d.settings.rebalanceInterval))
}

// rebalance opens a stream on the first choice; once it is open, the one
// in use is closed. Nil when the first choice does not answer yet.
func (d *driver) rebalance(in *opened) *opened {
	preferred := d.replicas.preferred()
	moved, err := d.open(preferred, in.deadline)
	if err != nil {
		d.follower.log.Debug("the preferred server does not answer yet", "endpoint", preferred, "error", err)
		return nil
	}
	d.follower.log.Info("moved back to the preferred server", "endpoint", preferred)
	d.replicas.movedToPreferred()
	in.close()
	return moved
}
