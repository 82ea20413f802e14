// Command conformance-service puts the Go library behind the conformance
// kit's test-service protocol: each runtime the kit starts is one
// Subscription, and what it says becomes the runtime's view.
//
//	GET /                  the implementation's name and capabilities
//	POST /runtimes         start one runtime; 201, Location: /runtimes/{id}
//	GET /runtimes/{id}     what it did so far
//	DELETE /runtimes/{id}  stop it (its cache stays); 204
//
// Usage: conformance-service [-listen 127.0.0.1:0]; it prints its address
// (http://host:port) once it listens.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/policyhub/policyhub/sdk/go/policyhub"
)

var capabilities = []string{"cache", "reports", "history", "witnesses", "endpoints", "revocation", "fleet"}

// settings are the kit's settings of one runtime.
type settings struct {
	Endpoints           []string `json:"endpoints"`
	Namespace           string   `json:"namespace"`
	Names               []string `json:"names"`
	RuntimeID           *string  `json:"runtimeId"`
	CacheDir            *string  `json:"cacheDir"`
	HeartbeatIntervalMs *int64   `json:"heartbeatIntervalMs"`
	Backoff             *struct {
		InitialMs int64 `json:"initialMs"`
		MaxMs     int64 `json:"maxMs"`
	} `json:"backoff"`
	RebalanceIntervalMs *int64 `json:"rebalanceIntervalMs"`
	MaxCheckpointAgeMs  *int64 `json:"maxCheckpointAgeMs"`
	Witnesses           *struct {
		Keys     []string `json:"keys"`
		Required int      `json:"required"`
	} `json:"witnesses"`
	CAFile    *string `json:"caFile"`
	TokenFile *string `json:"tokenFile"`
}

func millis(ms int64) time.Duration { return time.Duration(ms) * time.Millisecond }

// options are the library's options for the kit's settings.
func (s settings) options() ([]policyhub.Option, error) {
	options := []policyhub.Option{policyhub.WithNames(s.Names...)}
	if s.RuntimeID != nil {
		options = append(options, policyhub.WithRuntime(*s.RuntimeID, nil))
	}
	if s.CacheDir != nil {
		options = append(options, policyhub.WithCacheDir(*s.CacheDir))
	}
	if s.HeartbeatIntervalMs != nil {
		options = append(options, policyhub.WithHeartbeatInterval(millis(*s.HeartbeatIntervalMs)))
	}
	if s.Backoff != nil {
		options = append(options, policyhub.WithBackoff(millis(s.Backoff.InitialMs), millis(s.Backoff.MaxMs)))
	}
	if s.RebalanceIntervalMs != nil {
		options = append(options, policyhub.WithRebalanceInterval(millis(*s.RebalanceIntervalMs)))
	}
	if s.MaxCheckpointAgeMs != nil {
		options = append(options, policyhub.WithMaxCheckpointAge(millis(*s.MaxCheckpointAgeMs)))
	}
	if s.Witnesses != nil {
		options = append(options, policyhub.WithWitnesses(s.Witnesses.Keys, s.Witnesses.Required))
	}
	if s.CAFile != nil {
		pem, err := os.ReadFile(*s.CAFile)
		if err != nil {
			return nil, fmt.Errorf("caFile: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("caFile %s holds no PEM certificate", *s.CAFile)
		}
		options = append(options, policyhub.WithTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}))
	}
	if s.TokenFile != nil {
		options = append(options, policyhub.WithToken(policyhub.TokenFile(*s.TokenFile)))
	}
	return options, nil
}

type policyView struct {
	Version uint32          `json:"version"`
	Digest  string          `json:"digest"`
	Body    json.RawMessage `json:"body"`
}

type stateView struct {
	Revision uint64                `json:"revision"`
	Source   policyhub.Source      `json:"source"`
	Policies map[string]policyView `json:"policies"`
}

type view struct {
	InForce *stateView       `json:"inForce"`
	Events  []map[string]any `json:"events"`
}

// runtime is one subscription and what it did, as the kit reads it.
type runtime struct {
	subscription *policyhub.Subscription
	lock         sync.Mutex
	view         view
	followed     sync.WaitGroup
}

func (r *runtime) record(event policyhub.Event) {
	r.lock.Lock()
	defer r.lock.Unlock()
	var entry map[string]any
	switch event := event.(type) {
	case policyhub.Applied:
		entry = r.inForce(event.State)
	case policyhub.FromCache:
		entry = r.inForce(event.State)
	case policyhub.Rejected:
		entry = map[string]any{"type": "rejected", "revision": event.Revision, "reason": event.Reason}
	case policyhub.Connected:
		entry = map[string]any{"type": "connected", "endpoint": event.Endpoint}
	case policyhub.Disconnected:
		entry = map[string]any{"type": "disconnected", "reason": event.Reason}
	case policyhub.Refused:
		entry = map[string]any{"type": "disconnected", "reason": event.Reason}
	case policyhub.HistoryRefused:
		entry = map[string]any{"type": "historyRefused", "reason": event.Reason}
	case policyhub.HistoryRestored:
		entry = map[string]any{"type": "historyRestored", "reason": event.Reason}
	case policyhub.CheckpointStale:
		entry = map[string]any{"type": "checkpointStale"}
	case policyhub.CheckpointFresh:
		entry = map[string]any{"type": "checkpointFresh"}
	default:
		return
	}
	r.view.Events = append(r.view.Events, entry)
}

// inForce records state as the one in force; its applied event.
func (r *runtime) inForce(state policyhub.State) map[string]any {
	in := &stateView{Revision: state.Revision, Source: state.Source, Policies: map[string]policyView{}}
	versions := map[string]uint32{}
	for name, bundle := range state.Bundles {
		in.Policies[name] = policyView{Version: bundle.Version, Digest: bundle.Digest, Body: bundle.Body}
		versions[name] = bundle.Version
	}
	r.view.InForce = in
	return map[string]any{"type": "applied", "revision": state.Revision, "source": state.Source, "policies": versions}
}

func (r *runtime) follow() {
	defer r.followed.Done()
	for event := range r.subscription.Events() {
		r.record(event)
	}
	if err := r.subscription.Err(); err != nil {
		r.lock.Lock()
		r.view.Events = append(r.view.Events, map[string]any{"type": "disconnected", "reason": "ended: " + err.Error()})
		r.lock.Unlock()
	}
}

type service struct {
	lock     sync.Mutex
	runtimes map[string]*runtime
	next     int
}

func answer(w http.ResponseWriter, status int, body any) {
	if body != nil {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(status)
	if body != nil {
		json.NewEncoder(w).Encode(body)
	}
}

func (s *service) info(w http.ResponseWriter, _ *http.Request) {
	answer(w, http.StatusOK, map[string]any{"name": "policyhub (Go)", "capabilities": capabilities})
}

func (s *service) start(w http.ResponseWriter, r *http.Request) {
	var given settings
	body, err := io.ReadAll(r.Body)
	if err == nil {
		err = json.Unmarshal(body, &given)
	}
	if err != nil {
		answer(w, http.StatusBadRequest, map[string]string{"message": err.Error()})
		return
	}
	var subscription *policyhub.Subscription
	options, err := given.options()
	if err == nil {
		subscription, err = policyhub.Subscribe(context.Background(), given.Endpoints, given.Namespace, options...)
	}
	if err != nil {
		answer(w, http.StatusBadRequest, map[string]string{"message": err.Error()})
		return
	}
	started := &runtime{subscription: subscription, view: view{Events: []map[string]any{}}}
	started.followed.Add(1)
	go started.follow()
	s.lock.Lock()
	id := strconv.Itoa(s.next)
	s.next++
	s.runtimes[id] = started
	s.lock.Unlock()
	w.Header().Set("Location", "/runtimes/"+id)
	answer(w, http.StatusCreated, map[string]string{"id": id})
}

func (s *service) find(id string, remove bool) *runtime {
	s.lock.Lock()
	defer s.lock.Unlock()
	found := s.runtimes[id]
	if remove {
		delete(s.runtimes, id)
	}
	return found
}

func (s *service) view(w http.ResponseWriter, r *http.Request) {
	found := s.find(r.PathValue("id"), false)
	if found == nil {
		answer(w, http.StatusNotFound, nil)
		return
	}
	found.lock.Lock()
	defer found.lock.Unlock()
	answer(w, http.StatusOK, found.view)
}

// stop closes the runtime's subscription and waits until it let its cache
// and connection go, before the next runtime over the same cache starts.
func (s *service) stop(w http.ResponseWriter, r *http.Request) {
	found := s.find(r.PathValue("id"), true)
	if found == nil {
		answer(w, http.StatusNotFound, nil)
		return
	}
	found.subscription.Close()
	found.followed.Wait()
	answer(w, http.StatusNoContent, nil)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8113", "host:port; port 0 takes a free one")
	flag.Parse()
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	s := &service{runtimes: map[string]*runtime{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.info)
	mux.HandleFunc("POST /runtimes", s.start)
	mux.HandleFunc("GET /runtimes/{id}", s.view)
	mux.HandleFunc("DELETE /runtimes/{id}", s.stop)
	fmt.Printf("http://%s\n", listener.Addr())
	if err := http.Serve(listener, mux); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
