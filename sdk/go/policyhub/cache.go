package policyhub

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/policyhub/policyhub/sdk/go/bundle"
)

// cacheFormat is the version of the cache file's layout, the Rust
// library's and every SDK's, so that each starts from another's cache.
const cacheFormat = 1

// errCache: the cache cannot be trusted.
var errCache = errors.New("the cached state does not verify")

// cache is one subscription's last good state on disk,
// "<namespace>.state.json" in its directory, with the tree of the server's
// log verified last beside it ("<namespace>.state.tree", ".restore").
// Every file is replaced atomically (a temporary file of its own, fsync,
// rename), so a crash leaves the old file or the new one, and several
// subscriptions may share a directory.
type cache struct {
	path      string
	namespace string
	names     []string
}

type cacheFile struct {
	Format         int             `json:"format"`
	Namespace      string          `json:"namespace"`
	Names          []string        `json:"names"`
	Revision       uint64          `json:"revision"`
	JWKS           json.RawMessage `json:"jwks"`
	RevokedKeyIDs  []string        `json:"revoked_key_ids,omitempty"`
	Bundles        []cachedBundle  `json:"bundles"`
	VerifiedAtUnix *int64          `json:"verified_at_unix_ms,omitempty"`
}

type cachedBundle struct {
	JWS      string `json:"jws"`
	Revision uint64 `json:"revision"`
}

func newCache(dir, namespace string, names []string) *cache {
	return &cache{path: filepath.Join(dir, namespace+".state.json"), namespace: namespace, names: names}
}

func (c *cache) beside(suffix string) string {
	return strings.TrimSuffix(c.path, ".json") + suffix
}

// loadTree returns the last verified checkpoint note, "" when none.
func (c *cache) loadTree() (string, error) {
	contents, err := os.ReadFile(c.beside(".tree"))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	return string(contents), err
}

func (c *cache) saveTree(note string) error {
	return writeAtomically(c.beside(".tree"), []byte(note))
}

// loadRestore returns the leaf of the last restore taken, nil when none.
func (c *cache) loadRestore() (*uint64, error) {
	contents, err := os.ReadFile(c.beside(".restore"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	leaf, err := strconv.ParseUint(strings.TrimSpace(string(contents)), 10, 64)
	if err != nil {
		return nil, err
	}
	return &leaf, nil
}

func (c *cache) saveRestore(leaf uint64) error {
	return writeAtomically(c.beside(".restore"), []byte(strconv.FormatUint(leaf, 10)))
}

// load reads the cached state back, every bundle verified again; nil when
// there is none yet, an error wrapping errCache when it cannot be trusted
// (a bundle a revoked key signed among them).
func (c *cache) load() (*State, *bundle.JWKS, map[string]bool, error) {
	contents, err := os.ReadFile(c.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil, nil
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: cannot read it: %v", errCache, err)
	}
	info, err := os.Stat(c.path)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: cannot read it: %v", errCache, err)
	}
	var file cacheFile
	if err := json.Unmarshal(contents, &file); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: it is not a cache: %v", errCache, err)
	}
	if file.Format != cacheFormat {
		return nil, nil, nil, fmt.Errorf("%w: its format %d is not %d", errCache, file.Format, cacheFormat)
	}
	if file.Namespace != c.namespace || !slices.Equal(file.Names, c.names) {
		return nil, nil, nil, fmt.Errorf("%w: it holds namespace %s %v, not %s %v", errCache, file.Namespace, file.Names, c.namespace, c.names)
	}
	jwks, err := bundle.ParseJWKS(file.JWKS)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %v", errCache, err)
	}
	revoked := make(map[string]bool, len(file.RevokedKeyIDs))
	for _, kid := range file.RevokedKeyIDs {
		revoked[kid] = true
	}
	state := &State{
		Namespace:  c.namespace,
		Revision:   file.Revision,
		Bundles:    make(map[string]Bundle, len(file.Bundles)),
		Source:     SourceCache,
		VerifiedAt: info.ModTime(),
	}
	if file.VerifiedAtUnix != nil {
		state.VerifiedAt = time.UnixMilli(*file.VerifiedAtUnix)
	}
	prefix := c.namespace + "/"
	for _, cached := range file.Bundles {
		kid, err := bundle.KeyID(cached.JWS)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%w: a bundle names no key: %v", errCache, err)
		}
		if revoked[kid] {
			return nil, nil, nil, fmt.Errorf("%w: a bundle is signed by revoked key %q", errCache, kid)
		}
		claims, err := bundle.Verify(cached.JWS, jwks)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%w: a bundle does not verify: %v", errCache, err)
		}
		name, ok := strings.CutPrefix(claims.Subject, prefix)
		if !ok {
			return nil, nil, nil, fmt.Errorf("%w: a bundle of %s is in it", errCache, claims.Subject)
		}
		state.Bundles[name] = Bundle{
			Name:     name,
			Version:  claims.Version,
			Label:    claims.Label,
			Digest:   claims.Digest,
			Revision: cached.Revision,
			KeyID:    kid,
			Body:     claims.Body,
			JWS:      cached.JWS,
		}
	}
	return state, jwks, revoked, nil
}

// save replaces the cache with state, its JWK Set and the keys known
// revoked (a bundle they signed is refused when the file is read back).
func (c *cache) save(state State, jwks *bundle.JWKS, revoked map[string]bool) error {
	keys, err := json.Marshal(jwks)
	if err != nil {
		return err
	}
	verifiedAt := state.VerifiedAt.UnixMilli()
	file := cacheFile{
		Format:         cacheFormat,
		Namespace:      c.namespace,
		Names:          c.names,
		Revision:       state.Revision,
		JWKS:           keys,
		Bundles:        make([]cachedBundle, 0, len(state.Bundles)),
		VerifiedAtUnix: &verifiedAt,
	}
	for kid := range revoked {
		file.RevokedKeyIDs = append(file.RevokedKeyIDs, kid)
	}
	slices.Sort(file.RevokedKeyIDs)
	for _, name := range sortedNames(state.Bundles) {
		held := state.Bundles[name]
		file.Bundles = append(file.Bundles, cachedBundle{JWS: held.JWS, Revision: held.Revision})
	}
	contents, err := json.Marshal(file)
	if err != nil {
		return err
	}
	return writeAtomically(c.path, contents)
}

func sortedNames(bundles map[string]Bundle) []string {
	names := make([]string, 0, len(bundles))
	for name := range bundles {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// writeAtomically replaces path with contents: a temporary file of its
// own beside it, fsync, rename, and the directory synced; the temporary
// file is removed when a step fails.
func writeAtomically(path string, contents []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	temporary, err := os.CreateTemp(dir, filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	_, err = temporary.Write(contents)
	if err == nil {
		err = temporary.Sync()
	}
	if closeErr := temporary.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Rename(temporary.Name(), path)
	}
	if err != nil {
		os.Remove(temporary.Name())
		return err
	}
	directory, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer directory.Close()
	return directory.Sync()
}
