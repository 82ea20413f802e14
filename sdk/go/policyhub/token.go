package policyhub

import (
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// settling is how long after its last modification a file's metadata is
// not trusted to tell a change: it is read again on every call meanwhile.
const settling = 2 * time.Second

// stamp identifies one version of a file's contents without reading them.
type stamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
}

func stampOf(info os.FileInfo) stamp {
	s := stamp{size: info.Size(), mtime: info.ModTime().UnixNano()}
	if sys, ok := info.Sys().(*syscall.Stat_t); ok {
		s.dev, s.ino = uint64(sys.Dev), sys.Ino
		s.ctime = sys.Ctim.Sec*1e9 + sys.Ctim.Nsec
	}
	return s
}

// TokenFile is the token path holds (trimmed), read again whenever the
// file changed, as a workload holds one: Kubernetes projects a
// ServiceAccount token into a file and swaps it well before it expires.
// While the file cannot be read or is empty, the last good token is kept.
//
// A file is taken as unchanged while its device, inode, size,
// modification and status-change times are those of the last read; one
// modified less than two seconds before a read is read again on every
// call until it has settled, since a rewrite within one tick of the file
// system's clock keeps its times.
func TokenFile(path string) TokenSource {
	var (
		lock    sync.Mutex
		last    string
		failing bool
		readAs  *stamp
	)
	failed := func(err error) {
		if !failing {
			slog.Warn("cannot read the token file; the last good token is kept", "path", path, "error", err)
		}
		failing = true
	}
	return func() string {
		lock.Lock()
		defer lock.Unlock()
		info, err := os.Stat(path)
		if err != nil {
			readAs = nil
			failed(err)
			return last
		}
		current := stampOf(info)
		if readAs != nil && *readAs == current {
			return last
		}
		contents, err := os.ReadFile(path)
		if err != nil {
			readAs = nil
			failed(err)
			return last
		}
		token := strings.TrimSpace(string(contents))
		if token == "" {
			readAs = nil
			failed(os.ErrNotExist)
			return last
		}
		last, failing = token, false
		if time.Since(info.ModTime()) >= settling {
			readAs = &current
		} else {
			readAs = nil
		}
		return last
	}
}
