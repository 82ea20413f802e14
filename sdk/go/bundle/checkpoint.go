package bundle

import (
	"encoding/json"
	"time"
)

// CheckpointType is the JOSE "typ" of a signed checkpoint.
const CheckpointType = "policyhub-checkpoint+jwt"

// CheckpointClaims is what a verified checkpoint states: the server's
// revision and event log position at a time.
type CheckpointClaims struct {
	Revision    uint64
	LastEventID uint64
	ChainHead   string
	// SignedAt is when the server signed it.
	SignedAt time.Time
}

// VerifyCheckpoint checks a checkpoint JWS offline: its type, its
// algorithm (EdDSA), its key (one of jwks), its signature, and a readable
// RFC 3339 time.
func VerifyCheckpoint(jws string, jwks *JWKS) (*CheckpointClaims, error) {
	signed, err := verifySignature(jws, CheckpointType, jwks)
	if err != nil {
		return nil, err
	}
	var claims struct {
		Revision    uint64  `json:"revision"`
		LastEventID uint64  `json:"lastEventId"`
		ChainHead   string  `json:"chainHead"`
		Time        *string `json:"time"`
	}
	if err := json.Unmarshal(signed, &claims); err != nil {
		return nil, refuse(ErrMalformed, "its payload: %v", err)
	}
	if claims.Time == nil {
		return nil, refuse(ErrMalformed, "a checkpoint without a time")
	}
	at, err := time.Parse(time.RFC3339Nano, *claims.Time)
	if err != nil {
		return nil, refuse(ErrMalformed, "time %q: %v", *claims.Time, err)
	}
	return &CheckpointClaims{
		Revision:    claims.Revision,
		LastEventID: claims.LastEventID,
		ChainHead:   claims.ChainHead,
		SignedAt:    at,
	}, nil
}
