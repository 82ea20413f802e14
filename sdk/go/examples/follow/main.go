// Command follow is the Go library's follower for the runtimes benchmark
// (cargo bench --bench runtimes): it opens COUNT subscriptions to a
// namespace and, for each state one puts in force, writes
// "<index> <revision>".
//
//	go run ./examples/follow http://127.0.0.1:50051 payments 100
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"strconv"
	"sync"

	"github.com/policyhub/policyhub/sdk/go/policyhub"
)

func main() {
	if len(os.Args) != 4 {
		log.Fatal("usage: follow SERVER NAMESPACE COUNT")
	}
	server, namespace := os.Args[1], os.Args[2]
	count, err := strconv.Atoi(os.Args[3])
	if err != nil {
		log.Fatal(err)
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	var out sync.Mutex
	stdout := bufio.NewWriter(os.Stdout)
	var following sync.WaitGroup
	for index := range count {
		subscription, err := policyhub.Subscribe(context.Background(), []string{server}, namespace)
		if err != nil {
			log.Fatal(err)
		}
		following.Add(1)
		go func() {
			defer following.Done()
			for event := range subscription.Events() {
				var state policyhub.State
				switch event := event.(type) {
				case policyhub.Applied:
					state = event.State
				case policyhub.FromCache:
					state = event.State
				default:
					continue
				}
				out.Lock()
				fmt.Fprintf(stdout, "%d %d\n", index, state.Revision)
				stdout.Flush()
				out.Unlock()
			}
			if err := subscription.Err(); err != nil {
				log.Fatal(err)
			}
		}()
	}
	following.Wait()
}
