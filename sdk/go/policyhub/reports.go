package policyhub

import (
	"errors"
	"time"

	pb "github.com/policyhub/policyhub/sdk/go/proto/policyhub/v1"
)

// reports are the outcomes decided and not yet reported, by policy name (a
// later one replaces an earlier one), and the newest revision they
// concern.
type reports struct {
	settings *settings
	pending  map[string]*pb.PolicyApplyStatus
	revision uint64
}

// add queues the outcome of each bundle of r: own holds a bundle's own
// reason, reason serves the others.
func (q *reports) add(r *revision, state pb.ApplyState, own map[string]string, reason string) {
	for _, b := range r.bundles {
		why, ok := own[b.Name]
		if !ok {
			why = reason
		}
		if runes := []rune(why); len(runes) > 1000 {
			why = string(runes[:1000])
		}
		q.pending[b.Name] = &pb.PolicyApplyStatus{Name: b.Name, Version: b.Version, State: state, Error: why, Revision: r.revision}
	}
	q.revision = max(q.revision, r.revision)
}

// flush sends the queued outcomes, waiting for the answer no longer than
// within; they stay queued for the next try when the report does not
// reach the server. It fails only when the server did not answer in time.
func (q *reports) flush(to *reporter, within time.Duration) error {
	if q.settings.runtimeID == "" {
		clear(q.pending)
		return nil
	}
	if len(q.pending) == 0 {
		return nil
	}
	request := &pb.ReportStatusRequest{
		Namespace: q.settings.namespace,
		RuntimeId: q.settings.runtimeID,
		Revision:  q.revision,
		Policies:  make([]*pb.PolicyApplyStatus, 0, len(q.pending)),
	}
	for _, outcome := range q.pending {
		request.Policies = append(request.Policies, outcome)
	}
	if err := to.send(request, within); err != nil {
		q.settings.logger.Warn("cannot report the applied state; retrying later", "error", err)
		if errors.Is(err, errReportUnanswered) {
			return err
		}
		return nil
	}
	clear(q.pending)
	return nil
}
