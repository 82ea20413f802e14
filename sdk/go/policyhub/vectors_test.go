package policyhub

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/policyhub/policyhub/sdk/go/bundle"
)

var vectorsDir = filepath.Join("..", "..", "..", "conformance", "vectors")

// sharedState is the state of the cache vector, verified.
func sharedState(t *testing.T) (State, *bundle.JWKS) {
	t.Helper()
	contents, err := os.ReadFile(filepath.Join(vectorsDir, "cache.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vector struct {
		Namespace  string          `json:"namespace"`
		Revision   uint64          `json:"revision"`
		VerifiedAt int64           `json:"verified_at_unix_ms"`
		JWKS       json.RawMessage `json:"jwks"`
		Bundles    []cachedBundle  `json:"bundles"`
	}
	if err := json.Unmarshal(contents, &vector); err != nil {
		t.Fatal(err)
	}
	jwks, err := bundle.ParseJWKS(vector.JWKS)
	if err != nil {
		t.Fatal(err)
	}
	state := State{
		Namespace:  vector.Namespace,
		Revision:   vector.Revision,
		Bundles:    map[string]Bundle{},
		Source:     SourceServer,
		VerifiedAt: time.UnixMilli(vector.VerifiedAt),
	}
	for _, cached := range vector.Bundles {
		claims, err := bundle.Verify(cached.JWS, jwks)
		if err != nil {
			t.Fatal(err)
		}
		kid, _ := bundle.KeyID(cached.JWS)
		name := claims.Subject[len(vector.Namespace)+1:]
		state.Bundles[name] = Bundle{
			Name: name, Version: claims.Version, Label: claims.Label, Digest: claims.Digest,
			Revision: cached.Revision, KeyID: kid, Body: claims.Body, JWS: cached.JWS,
		}
	}
	return state, jwks
}

// The library writes the shared state into its cache as
// conformance/vectors/cache/go.state.json holds it (UPDATE_VECTORS=1
// writes it anew), and reads back every library's cache of it, verified
// again, as the state it was.
func TestTheCacheIsWrittenAsBeforeAndEveryLibrarysReadBack(t *testing.T) {
	state, jwks := sharedState(t)
	ours := newCache(filepath.Join(t.TempDir(), "ours"), state.Namespace, []string{})
	if err := ours.save(state, jwks, nil); err != nil {
		t.Fatal(err)
	}
	written, err := os.ReadFile(ours.path)
	if err != nil {
		t.Fatal(err)
	}
	kept := filepath.Join(vectorsDir, "cache", "go.state.json")
	if os.Getenv("UPDATE_VECTORS") != "" {
		if err := os.WriteFile(kept, written, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if expected, err := os.ReadFile(kept); err != nil || !bytes.Equal(expected, written) {
		t.Fatalf("the cache written is not %s (%v):\n%s", kept, err, written)
	}
	for _, library := range []string{"rust", "python", "typescript", "go"} {
		theirs := newCache(filepath.Join(t.TempDir(), library), state.Namespace, []string{})
		contents, err := os.ReadFile(filepath.Join(vectorsDir, "cache", library+".state.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := writeAtomically(theirs.path, contents); err != nil {
			t.Fatal(err)
		}
		loaded, loadedKeys, revoked, err := theirs.load()
		if err != nil || loaded == nil {
			t.Fatalf("%s: %v", library, err)
		}
		if loaded.Source != SourceCache || loaded.Revision != state.Revision || !loaded.VerifiedAt.Equal(state.VerifiedAt) {
			t.Errorf("%s: read back as revision %d from %s verified at %s", library, loaded.Revision, loaded.Source, loaded.VerifiedAt)
		}
		if !reflect.DeepEqual(loaded.Bundles, state.Bundles) {
			t.Errorf("%s: its bundles are not the state's", library)
		}
		if loadedKeys.Len() != jwks.Len() || len(revoked) != 0 {
			t.Errorf("%s: %d keys, %d revoked", library, loadedKeys.Len(), len(revoked))
		}
	}
}

// A cache altered on disk is refused, never put in force: a bundle whose
// body or signature changed, one a key known revoked signed, another
// namespace's file.
func TestACacheAlteredOnDiskIsRefused(t *testing.T) {
	state, jwks := sharedState(t)
	alterations := map[string]func(file map[string]any){
		"a body altered": func(file map[string]any) {
			b := file["bundles"].([]any)[0].(map[string]any)
			jws := b["jws"].(string)
			parts := bytes.Split([]byte(jws), []byte("."))
			middle := len(parts[1]) / 2
			parts[1][middle] ^= 'A' ^ 'B'
			b["jws"] = string(bytes.Join(parts, []byte(".")))
		},
		"a signature altered": func(file map[string]any) {
			b := file["bundles"].([]any)[0].(map[string]any)
			jws := b["jws"].(string)
			b["jws"] = jws[:len(jws)-4] + "AAAA"
		},
		"its key revoked": func(file map[string]any) {
			b := file["bundles"].([]any)[0].(map[string]any)
			kid, _ := bundle.KeyID(b["jws"].(string))
			file["revoked_key_ids"] = []string{kid}
		},
		"another namespace": func(file map[string]any) { file["namespace"] = "other" },
		"another format":    func(file map[string]any) { file["format"] = 2 },
	}
	for name, alter := range alterations {
		t.Run(name, func(t *testing.T) {
			c := newCache(t.TempDir(), state.Namespace, []string{})
			if err := c.save(state, jwks, nil); err != nil {
				t.Fatal(err)
			}
			contents, _ := os.ReadFile(c.path)
			var file map[string]any
			if err := json.Unmarshal(contents, &file); err != nil {
				t.Fatal(err)
			}
			alter(file)
			contents, _ = json.Marshal(file)
			if err := os.WriteFile(c.path, contents, 0o644); err != nil {
				t.Fatal(err)
			}
			loaded, _, _, err := c.load()
			if loaded != nil || err == nil {
				t.Fatalf("an altered cache was read back: %v", loaded)
			}
		})
	}
}
