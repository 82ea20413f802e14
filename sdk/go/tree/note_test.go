package tree

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/policyhub/policyhub/sdk/go/bundle"
)

// The shared checkpoint vectors: each note verified or refused, and its
// witnesses' cosignatures counted, as they say.
func TestEachCheckpointIsVerifiedAsTheVectorsSay(t *testing.T) {
	document, err := os.ReadFile(filepath.Join("..", "..", "..", "conformance", "vectors", "notes.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vectors struct {
		JWKS      json.RawMessage `json:"jwks"`
		Witnesses []string        `json:"witnesses"`
		Cases     []struct {
			Name   string `json:"name"`
			Note   string `json:"note"`
			Origin string `json:"origin"`
			Tree   *struct {
				Size uint64 `json:"size"`
				Root string `json:"root"`
			} `json:"tree"`
			CosignedBy json.RawMessage `json:"cosigned_by"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(document, &vectors); err != nil {
		t.Fatal(err)
	}
	jwks, err := bundle.ParseJWKS(vectors.JWKS)
	if err != nil {
		t.Fatal(err)
	}
	if len(vectors.Cases) == 0 {
		t.Fatal("no cases")
	}
	for _, c := range vectors.Cases {
		t.Run(c.Name, func(t *testing.T) {
			head, err := VerifyCheckpoint([]byte(c.Note), c.Origin, jwks)
			if c.Tree == nil {
				if !errors.Is(err, ErrCheckpoint) {
					t.Fatalf("taken, or refused for another reason: %v", err)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if head.Size != c.Tree.Size || hex.EncodeToString(head.Root[:]) != c.Tree.Root {
					t.Errorf("tree %d %x, want %d %s", head.Size, head.Root, c.Tree.Size, c.Tree.Root)
				}
			}
			if len(c.CosignedBy) == 0 {
				return
			}
			var want []string
			if err := json.Unmarshal(c.CosignedBy, &want); err != nil {
				t.Fatal(err)
			}
			names, err := CosignedBy([]byte(c.Note), vectors.Witnesses)
			if want == nil {
				if !errors.Is(err, ErrCheckpoint) {
					t.Fatalf("cosigned by %v, want a refusal: %v", names, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(names, want) && !(len(names) == 0 && len(want) == 0) {
				t.Errorf("cosigned by %v, want %v", names, want)
			}
		})
	}
}
