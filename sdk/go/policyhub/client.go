package policyhub

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/url"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/policyhub/policyhub/sdk/go/bundle"
	pb "github.com/policyhub/policyhub/sdk/go/proto/policyhub/v1"
)

// client is one connection to one address and the calls a subscription
// makes on it.
type client struct {
	conn        *grpc.ClientConn
	api         pb.BundleServiceClient
	callTimeout time.Duration
}

// flowControlWindow is the HTTP/2 window of every stream and connection:
// 4 MiB, a whole message of the largest the server sends in one part.
const flowControlWindow = 4 << 20

// bearer puts the token of the next call, asked of its source, on every
// call.
type bearer struct {
	source TokenSource
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	if token := b.source(); token != "" {
		return map[string]string{"authorization": "Bearer " + token}, nil
	}
	return nil, nil
}

func (b bearer) RequireTransportSecurity() bool { return false }

// dial opens a connection of its own to address (each runtime has its own,
// as it would in its own process): TLS for https://, the token on every
// call, HTTP/2 keepalive pings that find a half-open link between
// heartbeats, and calls bounded by three heartbeats (at least 5 s).
func dial(s *settings, address string) (*client, error) {
	parsed, err := url.Parse(address)
	if err != nil {
		return nil, err
	}
	secure := parsed.Scheme == "https"
	port := parsed.Port()
	if port == "" {
		port = map[bool]string{true: "443", false: "80"}[secure]
	}
	every := s.heartbeat()
	options := []grpc.DialOption{
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: every, Timeout: every, PermitWithoutStream: true}),
		grpc.WithDisableRetry(),
		// Fixed flow-control windows: gRPC's estimate of the link's
		// bandwidth-delay product otherwise pings the server beside every
		// message, a round trip each update pays for.
		grpc.WithInitialWindowSize(flowControlWindow),
		grpc.WithInitialConnWindowSize(flowControlWindow),
	}
	if secure {
		config := s.tls
		if config == nil {
			config = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		options = append(options, grpc.WithTransportCredentials(credentials.NewTLS(config)))
	} else {
		options = append(options, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if s.token != nil {
		options = append(options, grpc.WithPerRPCCredentials(bearer{source: s.token}))
	}
	conn, err := grpc.NewClient("passthrough:///"+net.JoinHostPort(parsed.Hostname(), port), options...)
	if err != nil {
		return nil, err
	}
	return &client{conn: conn, api: pb.NewBundleServiceClient(conn), callTimeout: max(3*every, 5*time.Second)}, nil
}

func (c *client) close() { c.conn.Close() }

// signingKeys returns the keys that verify and the ids of the revoked ones.
func (c *client) signingKeys(ctx context.Context) (*bundle.JWKS, map[string]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, c.callTimeout)
	defer cancel()
	reply, err := c.api.GetSigningKeys(ctx, &pb.GetSigningKeysRequest{})
	if err != nil {
		return nil, nil, failureOf(err)
	}
	type jwk struct {
		Kty string `json:"kty"`
		Crv string `json:"crv"`
		X   string `json:"x"`
		Kid string `json:"kid"`
		Alg string `json:"alg,omitempty"`
		Use string `json:"use,omitempty"`
	}
	keys := make([]jwk, 0, len(reply.Keys))
	for _, key := range reply.Keys {
		if key.Kty != "OKP" || key.Crv != "Ed25519" {
			continue
		}
		keys = append(keys, jwk{key.Kty, key.Crv, key.X, key.Kid, key.Alg, key.Use})
	}
	document, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		return nil, nil, err
	}
	jwks, err := bundle.ParseJWKS(document)
	if err != nil {
		return nil, nil, transient("the server's keys: %v", err)
	}
	revoked := make(map[string]bool, len(reply.RevokedKeyIds))
	for _, kid := range reply.RevokedKeyIds {
		revoked[kid] = true
	}
	return jwks, revoked, nil
}

func (c *client) consistencyProof(ctx context.Context, oldSize, newSize uint64) ([][]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.callTimeout)
	defer cancel()
	reply, err := c.api.GetConsistencyProof(ctx, &pb.GetConsistencyProofRequest{OldSize: oldSize, NewSize: newSize})
	if err != nil {
		return nil, failureOf(err)
	}
	return reply.Hashes, nil
}

func (c *client) restoreProof(ctx context.Context, treeSize uint64) (*pb.GetInclusionProofResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, c.callTimeout)
	defer cancel()
	reply, err := c.api.GetRestoreProof(ctx, &pb.GetRestoreProofRequest{TreeSize: treeSize})
	if err != nil {
		return nil, err
	}
	if reply.Proof == nil {
		return nil, transient("the server sent no restore proof")
	}
	return reply.Proof, nil
}

// announcedHeartbeat is the heartbeat interval the server announced, 0
// when none.
func announcedHeartbeat(header metadata.MD) time.Duration {
	values := header.Get(HeartbeatIntervalHeader)
	if len(values) == 0 {
		return 0
	}
	millis, err := strconv.ParseInt(values[0], 10, 64)
	if err != nil || millis <= 0 {
		return 0
	}
	return time.Duration(millis) * time.Millisecond
}

// reporter is where one connection's reports go: a ReportStatusStream
// opened at the first report, each answered before the next; or one
// ReportStatus call each where the server does not serve the stream or
// will not hold another one.
type reporter struct {
	client *client
	ctx    context.Context
	stream grpc.BidiStreamingClient[pb.ReportStatusRequest, pb.ReportStatusResponse]
	cancel context.CancelFunc
	calls  bool
}

func (r *reporter) call(request *pb.ReportStatusRequest) error {
	ctx, cancel := context.WithTimeout(r.ctx, r.client.callTimeout)
	defer cancel()
	_, err := r.client.api.ReportStatus(ctx, request)
	return err
}

// errReportUnanswered: a report had no answer in time.
var errReportUnanswered = errors.New("the report stream did not answer")

// send sends one report and waits for its answer, no longer than within.
func (r *reporter) send(request *pb.ReportStatusRequest, within time.Duration) error {
	if r.calls {
		return r.call(request)
	}
	if r.stream == nil {
		ctx, cancel := context.WithCancel(r.ctx)
		stream, err := r.client.api.ReportStatusStream(ctx)
		if err != nil {
			cancel()
			return err
		}
		r.stream, r.cancel = stream, cancel
	}
	answered := make(chan error, 1)
	stream := r.stream
	go func() {
		// A send that fails shows its cause as the stream's status, which
		// Recv returns.
		_ = stream.Send(request)
		_, err := stream.Recv()
		answered <- err
	}()
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case err := <-answered:
		if err == nil {
			return nil
		}
		r.close()
		if code := status.Code(err); code == codes.Unimplemented || code == codes.ResourceExhausted {
			r.calls = true
			return r.call(request)
		}
		return err
	case <-timer.C:
		r.close()
		<-answered
		return errReportUnanswered
	}
}

func (r *reporter) close() {
	if r.stream != nil {
		r.cancel()
		r.stream, r.cancel = nil, nil
	}
}
