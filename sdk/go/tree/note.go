package tree

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/policyhub/policyhub/sdk/go/bundle"
	cosigned "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
)

// ErrCheckpoint is the reason a checkpoint is refused; errors.Is matches
// it.
var ErrCheckpoint = errors.New("the checkpoint does not verify")

// TreeHead is what a verified checkpoint states: the log, its size and its
// root.
type TreeHead struct {
	Origin string
	Size   uint64
	Root   Hash
}

// VerifyCheckpoint verifies a checkpoint, a signed note (C2SP): signed
// under its origin, which must be origin when one is pinned (not empty),
// by a key of jwks. Signatures of keys it does not know, such as
// witnesses' cosignatures, are left alone.
func VerifyCheckpoint(text []byte, origin string, jwks *bundle.JWKS) (*TreeHead, error) {
	body, _, _ := bytes.Cut(text, []byte("\n\n"))
	lines := strings.Split(string(body), "\n")
	if len(lines) < 3 || lines[0] == "" {
		return nil, fmt.Errorf("%w: not a checkpoint of a tree", ErrCheckpoint)
	}
	head := TreeHead{Origin: lines[0]}
	size, err := strconv.ParseUint(lines[1], 10, 64)
	root, rootErr := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || rootErr != nil || len(root) != len(head.Root) {
		return nil, fmt.Errorf("%w: not a checkpoint of a tree", ErrCheckpoint)
	}
	head.Size = size
	copy(head.Root[:], root)
	if origin != "" && head.Origin != origin {
		return nil, fmt.Errorf("%w: of the log %q, not of %q", ErrCheckpoint, head.Origin, origin)
	}
	var verifiers []note.Verifier
	for _, key := range jwks.Ed25519() {
		vkey, err := note.NewEd25519VerifierKey(head.Origin, key)
		if err != nil {
			continue
		}
		verifier, err := note.NewVerifier(vkey)
		if err != nil {
			continue
		}
		verifiers = append(verifiers, verifier)
	}
	if _, err := note.Open(text, note.VerifierList(verifiers...)); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCheckpoint, err)
	}
	return &head, nil
}

// CosignedBy returns the names of the witnesses, among witnesses (their
// cosignature/v1 verifier keys, "name+id+key"), whose cosignature of the
// checkpoint verifies. A cosignature that names a witness's key but does
// not verify is an error.
func CosignedBy(text []byte, witnesses []string) ([]string, error) {
	var names []string
	for _, vkey := range witnesses {
		verifier, err := cosigned.NewVerifierForCosignatureV1(vkey)
		if err != nil {
			return nil, fmt.Errorf("witness key %q: %w", vkey, err)
		}
		_, err = note.Open(text, note.VerifierList(verifier))
		var unverified *note.UnverifiedNoteError
		switch {
		case err == nil:
			names = append(names, verifier.Name())
		case errors.As(err, &unverified):
		default:
			return nil, fmt.Errorf("%w: the cosignature of %s: %v", ErrCheckpoint, verifier.Name(), err)
		}
	}
	return names, nil
}

// CheckWitnessKey reports whether vkey is a witness's cosignature/v1
// verifier key ("name+id+key", the id the first four bytes of
// SHA-256(name, "\n", 0x04, key)), so that a bad one is refused when a
// runtime is configured rather than found missing on every checkpoint.
func CheckWitnessKey(vkey string) error {
	if _, err := cosigned.NewVerifierForCosignatureV1(vkey); err != nil {
		return fmt.Errorf("witness key %q: %w", vkey, err)
	}
	parts := strings.SplitN(vkey, "+", 3)
	id, idErr := strconv.ParseUint(parts[1], 16, 32)
	key, keyErr := base64.StdEncoding.DecodeString(parts[2])
	if idErr != nil || keyErr != nil {
		return fmt.Errorf("witness key %q: not name+id+key", vkey)
	}
	digest := sha256.Sum256(append([]byte(parts[0]+"\n"), key...))
	if uint32(id) != binary.BigEndian.Uint32(digest[:4]) {
		return fmt.Errorf("witness key %q: its id %s is not its key's, %x", vkey, parts[1], digest[:4])
	}
	return nil
}
