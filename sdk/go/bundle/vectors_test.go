package bundle

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// The shared conformance vectors, which the server writes from its own
// code: canonical JSON and digests byte for byte, and each signed bundle
// taken or refused as they say.
func vectors(t *testing.T, name string, into any) {
	t.Helper()
	document, err := os.ReadFile(filepath.Join("..", "..", "..", "conformance", "vectors", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(document, into); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func TestCanonicalJSONAndDigestsAreTheServers(t *testing.T) {
	var file struct {
		Cases []struct {
			Name, Input, Canonical, Digest string
		}
	}
	vectors(t, "canonical-json.json", &file)
	if len(file.Cases) == 0 {
		t.Fatal("no cases")
	}
	for _, c := range file.Cases {
		t.Run(c.Name, func(t *testing.T) {
			canonical, err := CanonicalJSON([]byte(c.Input))
			if err != nil {
				t.Fatal(err)
			}
			if string(canonical) != c.Canonical {
				t.Errorf("canonical %s, want %s", canonical, c.Canonical)
			}
			digest, err := Digest([]byte(c.Input))
			if err != nil {
				t.Fatal(err)
			}
			if digest != c.Digest {
				t.Errorf("digest %s, want %s", digest, c.Digest)
			}
		})
	}
}

func TestEachBundleIsTakenOrRefusedAsTheVectorsSay(t *testing.T) {
	var file struct {
		JWKS  json.RawMessage `json:"jwks"`
		Cases []struct {
			Name     string
			JWS      string `json:"jws"`
			Valid    bool
			Envelope Envelope
		}
	}
	vectors(t, "bundles.json", &file)
	jwks, err := ParseJWKS(file.JWKS)
	if err != nil {
		t.Fatal(err)
	}
	if len(file.Cases) == 0 {
		t.Fatal("no cases")
	}
	for _, c := range file.Cases {
		t.Run(c.Name, func(t *testing.T) {
			claims, err := VerifyEnvelope(c.JWS, c.Envelope, jwks)
			if c.Valid {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if claims.Subject != c.Envelope.Namespace+"/"+c.Envelope.Name {
					t.Errorf("subject %s", claims.Subject)
				}
				return
			}
			var refused *VerifyError
			if !errors.As(err, &refused) {
				t.Fatalf("taken, or refused without a VerifyError: %v", err)
			}
		})
	}
}
