package policyhub

import (
	"context"
	"strings"
	"testing"
	"time"
)

// Every setting a subscription cannot follow is refused by Subscribe,
// before anything connects, with an error that names it.
func TestSubscribeRefusesWhatItCannotFollow(t *testing.T) {
	good := []string{"http://127.0.0.1:50051"}
	witness := "witness.example/w1+24b5d9fe+BP0XJDhaoMdbZPt4zWAvodmR/ev3axPFjtcC6sg16fYY"
	cases := []struct {
		name      string
		endpoints []string
		namespace string
		options   []Option
		says      string
	}{
		{"no endpoint", nil, "payments", nil, "at least one address"},
		{"another scheme", []string{"ftp://127.0.0.1:50051"}, "payments", nil, "ftp://"},
		{"a path", []string{"http://127.0.0.1:50051/v1"}, "payments", nil, "/v1"},
		{"a query", []string{"http://127.0.0.1:50051?x=1"}, "payments", nil, "?x=1"},
		{"a user", []string{"http://me@127.0.0.1:50051"}, "payments", nil, "me@"},
		{"no host", []string{"http://:50051"}, "payments", nil, "http://:50051"},
		{"no scheme", []string{"127.0.0.1:50051"}, "payments", nil, "127.0.0.1:50051"},
		{"no namespace", good, "", nil, "namespace"},
		{"an empty runtime id", good, "payments", []Option{WithRuntime("", nil)}, "runtime id"},
		{"a heartbeat under a millisecond", good, "payments", []Option{WithHeartbeatInterval(time.Microsecond)}, "heartbeat interval"},
		{"a negative heartbeat", good, "payments", []Option{WithHeartbeatInterval(-time.Second)}, "heartbeat interval"},
		{"a backoff above its cap", good, "payments", []Option{WithBackoff(time.Minute, time.Second)}, "above its maximum"},
		{"a zero backoff", good, "payments", []Option{WithBackoff(0, time.Second)}, "initial delay"},
		{"a rebalance under a millisecond", good, "payments", []Option{WithRebalanceInterval(0)}, "rebalance interval"},
		{"a negative report spread", good, "payments", []Option{WithReportSpread(-time.Second)}, "report spread"},
		{"a negative checkpoint age", good, "payments", []Option{WithMaxCheckpointAge(-time.Second)}, "checkpoint age"},
		{"a witness key that is none", good, "payments", []Option{WithWitnesses([]string{"not-a-key"}, 1)}, "not-a-key"},
		{"a witness key of another id", good, "payments", []Option{WithWitnesses([]string{strings.Replace(witness, "24b5d9fe", "24b5d9ff", 1)}, 1)}, "24b5d9ff"},
		{"more witnesses required than given", good, "payments", []Option{WithWitnesses([]string{witness}, 2)}, "between 0 and the 1 given"},
		{"fewer than none required", good, "payments", []Option{WithWitnesses(nil, -1)}, "got -1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			subscription, err := Subscribe(context.Background(), c.endpoints, c.namespace, c.options...)
			if err == nil {
				subscription.Close()
				t.Fatal("taken")
			}
			if subscription != nil || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("refused with %q, which does not say %q", err, c.says)
			}
		})
	}
}

// What a subscription may take: both schemes with or without a port, a
// trailing slash, zero for the settings where zero means "off" or "at once".
func TestSubscribeTakesWhatItCanFollow(t *testing.T) {
	s, err := newSettings(
		[]string{"http://127.0.0.1:50051", "https://policyhub.example/", "https://[::1]:443"},
		"payments",
		[]Option{WithReportSpread(0), WithMaxCheckpointAge(0), WithNames("b", "a", "b"), WithHeartbeatInterval(time.Millisecond)},
	)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(s.names, ",") != "a,b" {
		t.Errorf("names %v, not sorted and unique", s.names)
	}
	if s.heartbeat() != time.Millisecond || s.reportSpread != 0 || s.maxCheckpointAge != 0 {
		t.Errorf("settings not kept: %+v", s)
	}
}
