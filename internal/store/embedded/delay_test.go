package embedded

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"backupmx/internal/store"
	"backupmx/internal/store/storetest"
)

func envelope(id string) *store.Envelope {
	return &store.Envelope{ID: id, Received: storetest.T0, Domains: map[string][]store.Recipient{"a.test": {{Addr: "u@a.test"}}}}
}

// enqueueAsync starts an Enqueue and returns where its error will be.
func enqueueAsync(s *Store, id string, body io.Reader) chan error {
	done := make(chan error, 1)
	go func() {
		_, err := s.Enqueue(context.Background(), envelope(id), body)
		done <- err
	}()
	return done
}

// waitFor polls cond; the guard only stops a broken test from hanging.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s", what)
		}
	}
}

func result(t *testing.T, what string, done chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no answer", what)
		return nil
	}
}

// TestCommitWaitsForMessagesOnTheirWay: while another message is being
// received, a finished one is not committed alone: the writer waits for the
// other (the delay here is an hour, so only its arrival ends the wait) and
// commits both in one group.
func TestCommitWaitsForMessagesOnTheirWay(t *testing.T) {
	s := openOptsT(t, t.TempDir(), WithCommitDelay(time.Hour))
	pr, pw := io.Pipe()
	slow := enqueueAsync(s, "slow", pr)
	waitFor(t, "the slow message to be on its way", func() bool { return s.w.coming.Load() == 1 })

	groups := s.w.groups.Load()
	fast := enqueueAsync(s, "fast", strings.NewReader("fast body"))
	// The fast one is handed over (coming back to 1, its op taken from the
	// queue), then held while the slow one is on its way. (If this wait
	// passes before the fast one started, the group count below still
	// tells whether it was committed alone.)
	waitFor(t, "the fast message to reach the writer", func() bool {
		return s.w.coming.Load() == 1 && s.w.pending() == 0 && s.w.groups.Load() == groups
	})
	select {
	case err := <-fast:
		t.Fatalf("fast message committed (%v) while another was on its way", err)
	case <-time.After(50 * time.Millisecond):
	}

	if _, err := io.WriteString(pw, "slow body"); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := result(t, "fast", fast); err != nil {
		t.Fatalf("fast: %v", err)
	}
	if err := result(t, "slow", slow); err != nil {
		t.Fatalf("slow: %v", err)
	}
	if n := s.w.groups.Load() - groups; n != 1 {
		t.Errorf("%d groups committed the two messages, want 1", n)
	}
	for id, want := range map[string]string{"fast": "fast body", "slow": "slow body"} {
		if b := readBody(t, s, id); string(b) != want {
			t.Errorf("body of %s = %q", id, b)
		}
	}
	if n := s.w.coming.Load(); n != 0 {
		t.Errorf("coming = %d after both arrived", n)
	}
}

// TestCommitAloneDoesNotWait: with nothing else on its way, a message is
// committed at once, whatever the delay.
func TestCommitAloneDoesNotWait(t *testing.T) {
	s := openOptsT(t, t.TempDir(), WithCommitDelay(time.Hour))
	for _, id := range []string{"one", "two", "three"} {
		if err := result(t, id, enqueueAsync(s, id, strings.NewReader("body"))); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
}

// TestCommitDelayIsBounded: a message being received forever holds the
// others' commit back by the delay, not longer.
func TestCommitDelayIsBounded(t *testing.T) {
	const delay = 20 * time.Millisecond
	s := openOptsT(t, t.TempDir(), WithCommitDelay(delay))
	pr, pw := io.Pipe()
	stuck := enqueueAsync(s, "stuck", pr)
	waitFor(t, "the stuck message to be on its way", func() bool { return s.w.coming.Load() == 1 })

	for _, id := range []string{"a", "b"} {
		start := time.Now()
		if err := result(t, id, enqueueAsync(s, id, strings.NewReader("body"))); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if waited := time.Since(start); waited < delay {
			t.Errorf("%s committed after %v, before the delay (%v) while another was on its way", id, waited, delay)
		}
	}

	// The stuck one fails; nothing is on its way any more.
	pw.CloseWithError(errors.New("client went away"))
	if err := result(t, "stuck", stuck); err == nil {
		t.Fatal("Enqueue with a failing body succeeded")
	}
	if n := s.w.coming.Load(); n != 0 {
		t.Errorf("coming = %d after the failed Enqueue", n)
	}
}

// TestFailedEnqueuesAreNotAwaited: Enqueues that end without handing an op
// over (bad id, cancelled context, body error, large body) leave nothing
// for the writer to wait for.
func TestFailedEnqueuesAreNotAwaited(t *testing.T) {
	s := openOptsT(t, t.TempDir(), WithCommitDelay(time.Hour), WithSmallMax(16))
	ctx := context.Background()
	if _, err := s.Enqueue(ctx, envelope("bad/id"), strings.NewReader("x")); err == nil {
		t.Error("bad id accepted")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Enqueue(cancelled, envelope("cancelled"), strings.NewReader("x")); err == nil {
		t.Error("Enqueue with a cancelled context succeeded")
	}
	for _, size := range []int{3, 100} { // a segment body and a file body
		r := &failAfter{left: size}
		if _, err := s.Enqueue(ctx, envelope("broken"), r); err == nil {
			t.Errorf("Enqueue of a %d-byte body that fails succeeded", size)
		}
	}
	if n := s.w.coming.Load(); n != 0 {
		t.Fatalf("coming = %d after failed Enqueues", n)
	}
	// So the next one is committed at once (an hour's wait otherwise).
	if err := result(t, "next", enqueueAsync(s, "next", strings.NewReader("a body longer than 16 bytes"))); err != nil {
		t.Fatal(err)
	}
}
