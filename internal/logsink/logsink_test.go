package logsink

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// slowBuffer is an out that takes its time and records each write.
type slowBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
	delay  time.Duration
}

func (b *slowBuffer) Write(p []byte) (int, error) {
	time.Sleep(b.delay)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.writes++
	return b.buf.Write(p)
}

// Every line of every writer arrives whole, each writer's in its order,
// and lines written while a write is under way share the next one.
func TestConcurrentLinesKeepOrder(t *testing.T) {
	out := &slowBuffer{delay: 200 * time.Microsecond}
	w := New(out)
	const writers, lines = 8, 500
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range lines {
				fmt.Fprintf(w, "writer=%d line=%d\n", g, i)
			}
		})
	}
	wg.Wait()
	w.Close()
	got := strings.Split(strings.TrimSuffix(out.buf.String(), "\n"), "\n")
	if len(got) != writers*lines {
		t.Fatalf("%d lines arrived, want %d", len(got), writers*lines)
	}
	next := make([]int, writers)
	for _, l := range got {
		var g, i int
		if _, err := fmt.Sscanf(l, "writer=%d line=%d", &g, &i); err != nil {
			t.Fatalf("mangled line %q: %v", l, err)
		}
		if i != next[g] {
			t.Fatalf("writer %d: line %d arrived when %d was due", g, i, next[g])
		}
		next[g]++
	}
	if out.writes >= writers*lines {
		t.Errorf("%d writes for %d lines: nothing was written together", out.writes, writers*lines)
	}
	t.Logf("%d lines in %d writes", writers*lines, out.writes)
}

// blockedOut is an out whose writes wait until it is opened.
type blockedOut struct {
	open chan struct{}
	mu   sync.Mutex
	n    int
}

func (b *blockedOut) Write(p []byte) (int, error) {
	<-b.open
	b.mu.Lock()
	b.n += len(p)
	b.mu.Unlock()
	return len(p), nil
}

// While out is stuck, at most MaxPending bytes (and the write under way)
// wait in memory; Write then waits, and goes on once out takes them.
func TestPendingIsBounded(t *testing.T) {
	out := &blockedOut{open: make(chan struct{})}
	w := New(out)
	line := bytes.Repeat([]byte("x"), 1023)
	line = append(line, '\n')
	total := 3 * MaxPending / len(line)
	wrote := make(chan int)
	go func() {
		for i := range total {
			w.Write(line)
			if i == total-1 {
				wrote <- i
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	w.mu.Lock()
	pending := len(w.pending)
	w.mu.Unlock()
	if pending > MaxPending+len(line) {
		t.Fatalf("%d bytes pending while out is stuck, bound %d", pending, MaxPending)
	}
	select {
	case <-wrote:
		t.Fatal("every Write returned while out was stuck")
	default:
	}
	close(out.open)
	<-wrote
	w.Close()
	if out.n != total*len(line) {
		t.Fatalf("out got %d bytes, want %d", out.n, total*len(line))
	}
}

// Close writes what is pending; later writes go straight to out.
func TestCloseWritesTheRest(t *testing.T) {
	out := &slowBuffer{delay: time.Millisecond}
	w := New(out)
	for i := range 100 {
		fmt.Fprintf(w, "%d\n", i)
	}
	w.Close()
	if n := strings.Count(out.buf.String(), "\n"); n != 100 {
		t.Fatalf("%d lines after Close, want 100", n)
	}
	fmt.Fprintf(w, "after\n")
	if !strings.HasSuffix(out.buf.String(), "99\nafter\n") {
		t.Fatalf("a write after Close did not reach out: %q", out.buf.String()[out.buf.Len()-20:])
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}
