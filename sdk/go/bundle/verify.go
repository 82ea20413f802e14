package bundle

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/go-jose/go-jose/v4"
)

// Type is the JOSE "typ" of a signed bundle.
const Type = "policyhub-bundle+jwt"

// The reasons a bundle is refused; a *VerifyError wraps one of them, for
// errors.Is.
var (
	// ErrMalformed: not a compact JWS of a bundle.
	ErrMalformed = errors.New("not a signed bundle")
	// ErrUnknownKey: signed by a key the JWK Set does not hold.
	ErrUnknownKey = errors.New("signed by an unknown key")
	// ErrSignature: the signature, its algorithm or its type is not one
	// policyhub makes.
	ErrSignature = errors.New("signature check failed")
	// ErrDigest: the digest claim is not the body's.
	ErrDigest = errors.New("digest does not match the body")
	// ErrEnvelope: the signed payload is not the policy, version or body
	// its envelope names.
	ErrEnvelope = errors.New("the signed payload is not what its envelope names")
)

// VerifyError says why a bundle was refused; errors.Is matches its
// reason (ErrUnknownKey, ErrSignature, …).
type VerifyError struct {
	Reason error
	Detail string
}

func (e *VerifyError) Error() string { return e.Reason.Error() + ": " + e.Detail }

func (e *VerifyError) Unwrap() error { return e.Reason }

func refuse(reason error, format string, args ...any) error {
	return &VerifyError{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// JWKS is the server's JWK Set (RFC 7517): the keys that sign bundles.
type JWKS struct {
	keys jose.JSONWebKeySet
}

// Knows reports whether the set holds a key with this id.
func (j *JWKS) Knows(kid string) bool {
	return kid != "" && len(j.keys.Key(kid)) > 0
}

// MarshalJSON writes the set as RFC 7517 JSON, as ParseJWKS reads it.
func (j *JWKS) MarshalJSON() ([]byte, error) {
	return json.Marshal(j.keys)
}

// ParseJWKS reads a JWK Set as GetSigningKeys or /.well-known/jwks.json
// serve it.
func ParseJWKS(document []byte) (*JWKS, error) {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(document, &set); err != nil {
		return nil, fmt.Errorf("not a JWK Set: %w", err)
	}
	return &JWKS{keys: set}, nil
}

// Claims is what a verified bundle's signature covers.
type Claims struct {
	// Subject is "namespace/name".
	Subject string
	Version uint32
	// Label is the release label; empty when none.
	Label  string
	Digest string
	// Body is the policy document, as signed.
	Body json.RawMessage
	// IssuedAt is the signing time, in seconds since the Unix epoch.
	IssuedAt int64
}

type payload struct {
	Subject  *string         `json:"sub"`
	Version  *uint32         `json:"ver"`
	Label    string          `json:"label"`
	Digest   *string         `json:"digest"`
	Body     json.RawMessage `json:"body"`
	IssuedAt int64           `json:"iat"`
}

// Verify checks a bundle offline: its type, its algorithm (EdDSA), its key
// (one of jwks), its signature, and that its digest claim is the digest
// of its body.
func Verify(jws string, jwks *JWKS) (*Claims, error) {
	signedPayload, err := verifySignature(jws, Type, jwks)
	if err != nil {
		return nil, err
	}
	var claims payload
	decoder := json.NewDecoder(bytes.NewReader(signedPayload))
	if err := decoder.Decode(&claims); err != nil {
		return nil, refuse(ErrMalformed, "its payload: %v", err)
	}
	if claims.Subject == nil || claims.Version == nil || claims.Digest == nil {
		return nil, refuse(ErrMalformed, "sub, ver or digest missing")
	}
	if len(claims.Body) == 0 || claims.Body[0] != '{' {
		return nil, refuse(ErrMalformed, "the body is not a JSON object")
	}
	actual, err := Digest(claims.Body)
	if err != nil {
		return nil, refuse(ErrDigest, "%v", err)
	}
	if actual != *claims.Digest {
		return nil, refuse(ErrDigest, "digest %s, the body's %s", *claims.Digest, actual)
	}
	return &Claims{
		Subject:  *claims.Subject,
		Version:  *claims.Version,
		Label:    claims.Label,
		Digest:   *claims.Digest,
		Body:     claims.Body,
		IssuedAt: claims.IssuedAt,
	}, nil
}

// verifySignature checks a compact JWS of this format: its type is typ,
// its algorithm EdDSA, its key one of jwks, its signature good; its
// payload.
func verifySignature(jws, typ string, jwks *JWKS) ([]byte, error) {
	signed, err := jose.ParseSignedCompact(jws, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		return nil, refuse(ErrSignature, "%v", err)
	}
	if len(signed.Signatures) != 1 {
		return nil, refuse(ErrMalformed, "%d signatures", len(signed.Signatures))
	}
	header := signed.Signatures[0].Protected
	if got, _ := header.ExtraHeaders[jose.HeaderType].(string); got != typ {
		return nil, refuse(ErrSignature, "type %q is not %s", got, typ)
	}
	keys := jwks.keys.Key(header.KeyID)
	if header.KeyID == "" || len(keys) == 0 {
		return nil, refuse(ErrUnknownKey, "key %q", header.KeyID)
	}
	verified, err := signed.Verify(keys[0].Key)
	if err != nil {
		return nil, refuse(ErrSignature, "%v", err)
	}
	return verified, nil
}

// KeyID returns the id of the key a JWS's header names, verifying
// nothing.
func KeyID(jws string) (string, error) {
	signed, err := jose.ParseSignedCompact(jws, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil || len(signed.Signatures) != 1 {
		return "", refuse(ErrMalformed, "not a compact JWS")
	}
	kid := signed.Signatures[0].Protected.KeyID
	if kid == "" {
		return "", refuse(ErrMalformed, "signed by an unnamed key")
	}
	return kid, nil
}

// Envelope is what a watch message says a bundle is.
type Envelope struct {
	Namespace string
	Name      string
	Version   uint32
	Digest    string
}

// VerifyEnvelope verifies a bundle (Verify) and that its signed payload is
// the policy, version and body its envelope names: a valid bundle of
// another policy, or an old version under a new envelope, is refused.
func VerifyEnvelope(jws string, envelope Envelope, jwks *JWKS) (*Claims, error) {
	claims, err := Verify(jws, jwks)
	if err != nil {
		return nil, err
	}
	expected := envelope.Namespace + "/" + envelope.Name
	if claims.Subject != expected {
		return nil, refuse(ErrEnvelope, "the bundle for %s is signed for %s", expected, claims.Subject)
	}
	if claims.Version != envelope.Version || claims.Digest != envelope.Digest {
		return nil, refuse(ErrEnvelope, "the envelope says version %d %s, the signed payload version %d %s",
			envelope.Version, envelope.Digest, claims.Version, claims.Digest)
	}
	return claims, nil
}

// Ed25519 returns the set's Ed25519 public keys, which also sign the log's
// checkpoints.
func (j *JWKS) Ed25519() []ed25519.PublicKey {
	var keys []ed25519.PublicKey
	for _, key := range j.keys.Keys {
		if public, ok := key.Key.(ed25519.PublicKey); ok {
			keys = append(keys, public)
		}
	}
	return keys
}

// Len returns how many keys the set holds.
func (j *JWKS) Len() int { return len(j.keys.Keys) }
