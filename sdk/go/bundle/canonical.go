// Package bundle verifies what a policyhub server signs, offline: signed
// bundles against the server's JWK Set, and the canonical JSON (RFC 8785)
// and digests a bundle's signature covers.
package bundle

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/gowebpki/jcs"
)

// CanonicalJSON returns the RFC 8785 canonical form of a JSON document:
// members sorted by their UTF-16 code units, numbers as ECMAScript writes
// them, no insignificant whitespace.
func CanonicalJSON(document []byte) ([]byte, error) {
	canonical, err := jcs.Transform(document)
	if err != nil {
		return nil, fmt.Errorf("no canonical form: %w", err)
	}
	return canonical, nil
}

// Digest returns "sha256:" and the lowercase hex SHA-256 of a JSON
// document's canonical form: the digest a bundle's signature covers.
func Digest(document []byte) (string, error) {
	canonical, err := CanonicalJSON(document)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(canonical)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}
