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
	write := func(name, token string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(dir, "token")
	swap := func(target string) {
		temporary := link + ".new"
		if err := os.Symlink(target, temporary); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(temporary, link); err != nil {
			t.Fatal(err)
		}
	}
	token := TokenFile(link)
	if got := token(); got != "" {
		t.Fatalf("before the file exists: %q", got)
	}
	write("first", "first-token\n")
	swap(filepath.Join(dir, "first"))
	if got := token(); got != "first-token" {
		t.Fatalf("first: %q", got)
	}
	write("second", "  second-token  ")
	swap(filepath.Join(dir, "second"))
	if got := token(); got != "second-token" {
		t.Fatalf("after the swap: %q", got)
	}
	write("empty", "")
	swap(filepath.Join(dir, "empty"))
	if got := token(); got != "second-token" {
		t.Fatalf("an empty file replaced the last good token: %q", got)
	}
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if got := token(); got != "second-token" {
		t.Fatalf("a missing file replaced the last good token: %q", got)
	}
}
