package policyhub

import (
	"os"
	"path/filepath"
	"testing"
)

// The token is the file's, trimmed; a file rotated as Kubernetes rotates a
// projected token (a symlink swapped) is read again; a file that cannot be
// read or is empty keeps the last good token.
func TestTokenFileFollowsItsFile(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "token")
	// rotate writes token into a file of its own and swaps the link to it.
	rotate := func(name, token string) {
		target := filepath.Join(dir, name)
		if err := os.WriteFile(target, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		temporary := link + ".new"
		if err := os.Symlink(target, temporary); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(temporary, link); err != nil {
			t.Fatal(err)
		}
	}
	token := TokenFile(link)
	for _, step := range []struct{ name, written, want, what string }{
		{"", "", "", "before the file exists"},
		{"first", "first-token\n", "first-token", "first"},
		{"second", "  second-token  ", "second-token", "after the swap"},
		{"empty", "", "second-token", "an empty file kept the last good token"},
	} {
		if step.name != "" {
			rotate(step.name, step.written)
		}
		if got := token(); got != step.want {
			t.Fatalf("%s: %q, not %q", step.what, got, step.want)
		}
	}
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if got := token(); got != "second-token" {
		t.Fatalf("a missing file replaced the last good token: %q", got)
	}
}
