package policyhub

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// How a session ends: a failure to retry after a backoff (transientError),
// a history that does not extend the one verified (historyError), or a
// refusal for good (*WatchError).
type transientError struct{ reason string }

func (e *transientError) Error() string { return e.reason }

type historyError struct{ reason string }

func (e *historyError) Error() string { return e.reason }

func transient(format string, args ...any) error {
	return &transientError{fmt.Sprintf(format, args...)}
}

func history(format string, args ...any) error {
	return &historyError{fmt.Sprintf(format, args...)}
}

// failureOf is the failure a call's error says.
func failureOf(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return transient("the server did not answer in time")
	}
	state, ok := status.FromError(err)
	if !ok {
		return transient("%v", err)
	}
	if permanentCodes[state.Code()] {
		return &WatchError{Code: state.Code(), Detail: state.Message()}
	}
	if state.Code() == codes.DeadlineExceeded {
		return transient("the server did not answer in time")
	}
	return transient("%s: %s", state.Code(), state.Message())
}
