package policyhub

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"time"

	"github.com/policyhub/policyhub/sdk/go/tree"
)

// Defaults of a subscription's settings.
const (
	// DefaultHeartbeatInterval is the interval expected of a server that
	// announces none.
	DefaultHeartbeatInterval = 10 * time.Second
	// DefaultRebalanceInterval is the longest a subscription away from its
	// first choice of several addresses waits before trying it again.
	DefaultRebalanceInterval = 60 * time.Second
	// DefaultReportSpread is the time over which a runtime spreads its
	// reports.
	DefaultReportSpread = time.Second
	// DefaultMaxCheckpointAge is how old the server's newest checkpoint may
	// grow before CheckpointStale.
	DefaultMaxCheckpointAge = 10 * time.Minute
	// HeartbeatIntervalHeader is the response header of WatchActive in
	// which the server says its heartbeat interval, in milliseconds.
	HeartbeatIntervalHeader = "policyhub-heartbeat-interval-ms"
)

// minInterval is the shortest interval a subscription takes: the server
// counts its own in milliseconds, and a shorter one has the subscription
// reconnect or retry in a loop.
const minInterval = time.Millisecond

// Validate is the application's verdict on each new whole state before it
// is put in force: nil accepts it, an error refuses it with the error's
// text (reported REJECTED; the previous state stays).
type Validate func(ctx context.Context, state State) error

// TokenSource gives the bearer token of each call; "" sends none.
// TokenFile makes one from a file a workload holds.
type TokenSource func() string

// An Option sets how a subscription follows its namespace.
type Option func(*settings) error

type settings struct {
	endpoints         []string
	namespace         string
	names             []string
	runtimeID         string
	labels            map[string]string
	cacheDir          string
	token             TokenSource
	tls               *tls.Config
	heartbeatInterval time.Duration
	backoffInitial    time.Duration
	backoffMax        time.Duration
	rebalanceInterval time.Duration
	reportSpread      time.Duration
	maxCheckpointAge  time.Duration
	retryWhenRefused  bool
	logOrigin         string
	witnesses         []string
	cosignatures      int
	validate          Validate
	logger            *slog.Logger
}

func interval(name string, value time.Duration) error {
	if value < minInterval {
		return fmt.Errorf("%s must be at least %s, got %s", name, minInterval, value)
	}
	return nil
}

// WithNames follows only these policies of the namespace (none: every
// policy).
func WithNames(names ...string) Option {
	return func(s *settings) error {
		s.names = append(s.names, names...)
		return nil
	}
}

// WithRuntime names the runtime in the fleet view, with its labels; a
// runtime with an id reports what it applied and rejected.
func WithRuntime(id string, labels map[string]string) Option {
	return func(s *settings) error {
		if id == "" {
			return fmt.Errorf("the runtime id must not be empty")
		}
		s.runtimeID = id
		s.labels = labels
		return nil
	}
}

// WithCacheDir keeps the last good state in dir, and starts from it.
func WithCacheDir(dir string) Option {
	return func(s *settings) error {
		s.cacheDir = dir
		return nil
	}
}

// WithToken sends the bearer token source gives on every call, asked for
// it on each (see TokenFile).
func WithToken(source TokenSource) Option {
	return func(s *settings) error {
		s.token = source
		return nil
	}
}

// WithTLS sets the TLS of https:// endpoints: the CA, and the client
// certificate for mutual TLS (nil: the system's roots).
func WithTLS(config *tls.Config) Option {
	return func(s *settings) error {
		s.tls = config
		return nil
	}
}

// WithHeartbeatInterval overrides the interval the server announces: three
// without a message mean a dead stream.
func WithHeartbeatInterval(every time.Duration) Option {
	return func(s *settings) error {
		s.heartbeatInterval = every
		return interval("the heartbeat interval", every)
	}
}

// WithBackoff sets the reconnection delays: a random time up to initial,
// doubling per failed round up to max (full jitter). Default 1 s and 30 s.
func WithBackoff(initial, max time.Duration) Option {
	return func(s *settings) error {
		if err := interval("the backoff's initial delay", initial); err != nil {
			return err
		}
		if err := interval("the backoff's maximum delay", max); err != nil {
			return err
		}
		if initial > max {
			return fmt.Errorf("the backoff's initial delay %s is above its maximum %s", initial, max)
		}
		s.backoffInitial, s.backoffMax = initial, max
		return nil
	}
}

// WithRebalanceInterval sets, with several endpoints, the longest time
// away from the first choice (a random time in its second half).
func WithRebalanceInterval(every time.Duration) Option {
	return func(s *settings) error {
		s.rebalanceInterval = every
		return interval("the rebalance interval", every)
	}
}

// WithReportSpread sets the time over which reports are spread: each goes
// out at a random moment in its second half after an outcome (0: at once).
func WithReportSpread(spread time.Duration) Option {
	return func(s *settings) error {
		s.reportSpread = spread
		if spread == 0 {
			return nil
		}
		return interval("the report spread", spread)
	}
}

// WithMaxCheckpointAge sets how old the server's newest signed checkpoint
// may grow before CheckpointStale; 0: not checked.
func WithMaxCheckpointAge(age time.Duration) Option {
	return func(s *settings) error {
		s.maxCheckpointAge = age
		if age == 0 {
			return nil
		}
		return interval("the maximum checkpoint age", age)
	}
}

// WithRetryWhenRefused retries a refused token (an event Refused) rather
// than ending the subscription.
func WithRetryWhenRefused() Option {
	return func(s *settings) error {
		s.retryWhenRefused = true
		return nil
	}
}

// WithLogOrigin pins the origin of the server's log.
func WithLogOrigin(origin string) Option {
	return func(s *settings) error {
		s.logOrigin = origin
		return nil
	}
}

// WithWitnesses takes a checkpoint only when at least required of these
// witnesses (cosignature/v1 verifier keys, "name+id+key") cosigned it.
func WithWitnesses(keys []string, required int) Option {
	return func(s *settings) error {
		for _, key := range keys {
			if err := tree.CheckWitnessKey(key); err != nil {
				return err
			}
		}
		if required < 0 || required > len(keys) {
			return fmt.Errorf("the witnesses required must be between 0 and the %d given, got %d", len(keys), required)
		}
		s.witnesses, s.cosignatures = slices.Clone(keys), required
		return nil
	}
}

// WithValidate sets the application's verdict on each new state.
func WithValidate(validate Validate) Option {
	return func(s *settings) error {
		s.validate = validate
		return nil
	}
}

// WithLogger sets where the subscription logs (default: slog.Default()).
func WithLogger(logger *slog.Logger) Option {
	return func(s *settings) error {
		s.logger = logger
		return nil
	}
}

// endpoint checks an address: http://host[:port] or https://host[:port],
// nothing else (a path would be silently dropped, another scheme silently
// taken for plaintext).
func endpoint(address string) error {
	parsed, err := url.Parse(address)
	if err != nil || (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Hostname() == "" ||
		(parsed.Path != "" && parsed.Path != "/") || parsed.RawQuery != "" || parsed.Fragment != "" || parsed.User != nil {
		return fmt.Errorf("endpoint %q is not an http:// or https:// address (http://host:port or https://host:port)", address)
	}
	return nil
}

func newSettings(endpoints []string, namespace string, options []Option) (*settings, error) {
	s := &settings{
		endpoints:         slices.Clone(endpoints),
		namespace:         namespace,
		backoffInitial:    time.Second,
		backoffMax:        30 * time.Second,
		rebalanceInterval: DefaultRebalanceInterval,
		reportSpread:      DefaultReportSpread,
		maxCheckpointAge:  DefaultMaxCheckpointAge,
		logger:            slog.Default(),
	}
	if len(endpoints) == 0 {
		return nil, fmt.Errorf("the endpoints must name at least one address, got none")
	}
	for _, address := range endpoints {
		if err := endpoint(address); err != nil {
			return nil, err
		}
	}
	if namespace == "" {
		return nil, fmt.Errorf("the namespace must not be empty")
	}
	for _, option := range options {
		if err := option(s); err != nil {
			return nil, err
		}
	}
	slices.Sort(s.names)
	s.names = slices.Compact(s.names)
	if s.names == nil {
		s.names = []string{}
	}
	return s, nil
}

// heartbeat is the interval the subscription expects before the server
// announces one.
func (s *settings) heartbeat() time.Duration {
	if s.heartbeatInterval > 0 {
		return s.heartbeatInterval
	}
	return DefaultHeartbeatInterval
}
