package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"backupmx/internal/store"
)

// testConcurrentClaims: claimers racing for the same work each get distinct
// domains; every due domain is leased exactly once.
func testConcurrentClaims(t *testing.T, h Harness) {
	s := h.Open(t)
	const domains, claimers = 24, 8
	for i := range domains {
		for j := range 2 {
			simple(t, s, fmt.Sprintf("m%02d-%d", i, j), fmt.Sprintf("d%02d.test", i), T0.Add(-time.Duration(i)*time.Second))
		}
	}
	var (
		mu     sync.Mutex
		leased = map[string][]string{} // domain -> owners
		leases []*store.Lease
		wg     sync.WaitGroup
		errs   = make(chan error, claimers)
	)
	start := make(chan struct{})
	for w := range claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			owner := fmt.Sprintf("w%d", w)
			for {
				l, ds, err := s.Claim(ctx(), owner, T0, time.Minute, 10)
				if err != nil {
					errs <- err
					return
				}
				if l == nil {
					return
				}
				if len(ds) != 2 {
					errs <- fmt.Errorf("%s: lease on %s with %d deliveries, want 2", owner, l.Domain, len(ds))
				}
				mu.Lock()
				leased[l.Domain] = append(leased[l.Domain], owner)
				leases = append(leases, l)
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(leased) != domains {
		t.Fatalf("%d domains leased, want %d", len(leased), domains)
	}
	for dom, owners := range leased {
		if len(owners) != 1 {
			t.Fatalf("%s leased %d times: %v", dom, len(owners), owners)
		}
	}
	// Everyone completes at once; the queue empties.
	errs = make(chan error, len(leases))
	for _, l := range leases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var rs []store.Result
			for j := range 2 {
				id := fmt.Sprintf("m%s-%d", l.Domain[1:3], j)
				rs = append(rs, store.Result{ID: id, Delivered: []string{"u@" + l.Domain}, Attempted: true})
			}
			if err := s.Complete(ctx(), l, rs); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	assertEmpty(t, s)
}

// testConcurrentTakeover: after a lease expires, several claimers race for
// it and exactly one wins, with a larger token; the old holder's Complete,
// racing the winner's, is refused and writes nothing.
func testConcurrentTakeover(t *testing.T, h Harness) {
	s := h.Open(t)
	enqueue(t, s, env("m1", T0, map[string][]string{"a.test": {"u", "v"}}), "x")
	old, _ := mustClaim(t, s, "old", T0, 10)
	later := T0.Add(2 * time.Minute)

	const claimers = 6
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins []*store.Lease
	)
	start := make(chan struct{})
	for w := range claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			l, _, err := s.Claim(ctx(), fmt.Sprintf("new%d", w), later, time.Minute, 10)
			if err != nil {
				t.Error(err)
				return
			}
			if l != nil {
				mu.Lock()
				wins = append(wins, l)
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(wins) != 1 {
		t.Fatalf("%d claimers won the expired lease, want 1", len(wins))
	}
	winner := wins[0]
	if winner.Token <= old.Token {
		t.Fatalf("takeover token %d <= old %d", winner.Token, old.Token)
	}

	var oldErr, newErr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		oldErr = s.Complete(ctx(), old, []store.Result{{ID: "m1", Delivered: []string{"u@a.test", "v@a.test"}, Attempted: true}})
	}()
	go func() {
		defer wg.Done()
		newErr = s.Complete(ctx(), winner, []store.Result{{ID: "m1", Delivered: []string{"u@a.test"},
			Next: later.Add(time.Hour), LastError: "451 v later", Attempted: true}})
	}()
	wg.Wait()
	if !errors.Is(oldErr, store.ErrLeaseLost) {
		t.Fatalf("old holder's Complete = %v, want ErrLeaseLost", oldErr)
	}
	if newErr != nil {
		t.Fatalf("new holder's Complete: %v", newErr)
	}
	d := mustGet(t, s, "m1", "a.test")
	if len(d.Recipients) != 1 || d.Recipients[0].Addr != "v@a.test" || d.Attempts != 1 || d.LastError != "451 v later" {
		t.Fatalf("after racing Completes: %+v (the old holder's write must not count)", d)
	}
}
