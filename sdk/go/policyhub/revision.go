package policyhub

import (
	pb "github.com/policyhub/policyhub/sdk/go/proto/policyhub/v1"
)

// revision is a whole revision, assembled from its parts.
type revision struct {
	kind     pb.WatchEventKind
	revision uint64
	reset    bool
	bundles  []*pb.Bundle
}

// assembler gathers the parts of one revision (complete = false on all
// but the last), so that only a whole revision becomes a candidate state.
type assembler struct{ pending *revision }

func (a *assembler) push(message *pb.WatchActiveResponse) (*revision, error) {
	pending := a.pending
	a.pending = nil
	if pending == nil {
		pending = &revision{kind: message.Kind, revision: message.Revision, reset: message.Reset_}
	} else if pending.kind != message.Kind || pending.revision != message.Revision {
		return nil, transient("a part of revision %d interrupted revision %d", message.Revision, pending.revision)
	}
	pending.bundles = append(pending.bundles, message.Bundles...)
	if message.Complete {
		return pending, nil
	}
	a.pending = pending
	return nil, nil
}
