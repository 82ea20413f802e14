package policyhub

import (
	"context"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Close stops a subscription that is retrying an address that refuses
// it, and returns once it ended: its events are closed, Err says nothing
// went wrong, and no goroutine of it is left.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	address := "http://" + listener.Addr().String()
	listener.Close()
	subscription, err := Subscribe(context.Background(), []string{address}, "payments",
		WithBackoff(time.Millisecond, 10*time.Millisecond), WithCacheDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	var disconnected Disconnected
	for event := range subscription.Events() {
		var ok bool
		if disconnected, ok = event.(Disconnected); ok {
			break
		}
	}
	if disconnected.Reason == "" || disconnected.RetryIn > 10*time.Millisecond {
		t.Errorf("disconnected %+v", disconnected)
	}
	if err := subscription.Close(); err != nil {
		t.Fatal(err)
	}
	// Close returns once the subscription is over: its events are closed.
	select {
	case _, open := <-subscription.Events():
		if open {
			t.Error("an event after Close returned")
		}
	default:
		t.Error("Close returned before the subscription ended")
	}
	if err := subscription.Err(); err != nil {
		t.Errorf("closed, it says %v", err)
	}
	if err := subscription.Close(); err != nil {
		t.Errorf("closed twice: %v", err)
	}
}

// A subscription whose context is done ends as one closed.
func TestAContextDoneEndsTheSubscription(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx, cancel := context.WithCancel(context.Background())
	subscription, err := Subscribe(ctx, []string{"http://127.0.0.1:1"}, "payments")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	for range subscription.Events() {
	}
	if err := subscription.Err(); err != nil {
		t.Errorf("ended with %v", err)
	}
	subscription.Close()
}
