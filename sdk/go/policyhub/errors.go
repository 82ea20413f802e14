package policyhub

import (
	"fmt"

	"google.golang.org/grpc/codes"
)

// WatchError is a subscription's permanent failure: the server refused it
// for good (a bad token, a namespace it may not read, a request it does
// not serve). Subscription.Err returns it once Events is closed.
type WatchError struct {
	// Code is the server's gRPC status code.
	Code   codes.Code
	Detail string
}

func (e *WatchError) Error() string {
	return fmt.Sprintf("the server refused the watch: %s: %s", e.Code, e.Detail)
}

// permanentCodes are the codes that new credentials or a fixed request
// may cure, but not a retry.
var permanentCodes = map[codes.Code]bool{
	codes.Unauthenticated:    true,
	codes.PermissionDenied:   true,
	codes.InvalidArgument:    true,
	codes.FailedPrecondition: true,
	codes.Unimplemented:      true,
}
