package postgres

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"backupmx/internal/store"
	"backupmx/internal/store/postgres/pgtest"
	"backupmx/internal/store/storetest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func openT(t testing.TB, dsn string, o Options) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, dsn, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestConformance runs the shared suite. The suite drives a fake clock, so
// leases follow the caller's clock here; the database clock has its own
// tests below.
func TestConformance(t *testing.T) {
	dsns := map[store.Store]string{}
	var mu sync.Mutex
	open := func(t *testing.T, dsn string) store.Store {
		s := openT(t, dsn, Options{LeaseClock: CallerClock, ChunkSize: 64 << 10})
		mu.Lock()
		dsns[s] = dsn
		mu.Unlock()
		return s
	}
	storetest.Run(t, storetest.Harness{
		Open: func(t *testing.T) store.Store { return open(t, pgtest.DSN(t)) },
		Reopen: func(t *testing.T, old store.Store) store.Store {
			mu.Lock()
			dsn := dsns[old]
			mu.Unlock()
			if err := old.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			return open(t, dsn)
		},
	})
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func env(id, dom string, recv time.Time) *store.Envelope {
	return &store.Envelope{ID: id, Sender: "s@x.test", Received: recv,
		Domains: map[string][]store.Recipient{dom: {{Addr: "u@" + dom}}}}
}

func enqueue(t testing.TB, s *Store, id, dom string, recv time.Time) {
	t.Helper()
	if _, err := s.Enqueue(ctxT(t), env(id, dom, recv), bytes.NewReader([]byte("Subject: "+id+"\r\n\r\nx\r\n"))); err != nil {
		t.Fatalf("Enqueue(%s): %v", id, err)
	}
}

// TestTwoNodesClaimConcurrently: two pools ("nodes") on one database with
// the database clock, several claimers each, never lease the same domain.
func TestTwoNodesClaimConcurrently(t *testing.T) {
	dsn := pgtest.DSN(t)
	nodes := []*Store{openT(t, dsn, Options{}), openT(t, dsn, Options{})}
	const domains = 40
	now := time.Now()
	for i := range domains {
		for j := range 3 {
			enqueue(t, nodes[0], fmt.Sprintf("m%02d-%d", i, j), fmt.Sprintf("d%02d.test", i), now.Add(-time.Minute))
		}
	}
	var (
		mu     sync.Mutex
		owners = map[string][]string{}
		wg     sync.WaitGroup
	)
	start := make(chan struct{})
	for n, s := range nodes {
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				owner := fmt.Sprintf("node%d/%d", n, w)
				for {
					l, ds, err := s.Claim(context.Background(), owner, now, time.Minute, 2)
					if err != nil {
						t.Error(err)
						return
					}
					if l == nil {
						return
					}
					if len(ds) != 2 || l.Owner != owner {
						t.Errorf("lease %+v with %d deliveries", l, len(ds))
					}
					mu.Lock()
					owners[l.Domain] = append(owners[l.Domain], owner)
					mu.Unlock()
				}
			}()
		}
	}
	close(start)
	wg.Wait()
	if len(owners) != domains {
		t.Fatalf("%d domains leased, want %d", len(owners), domains)
	}
	perNode := map[byte]int{}
	for dom, os := range owners {
		if len(os) != 1 {
			t.Fatalf("%s leased by %v", dom, os)
		}
		perNode[os[0][4]]++
	}
	t.Logf("domains per node: %v", perNode)
}

// TestDatabaseClockTakeover: with leases on the database clock, an expired
// lease is taken over with a larger token, and the old holder's Complete and
// Renew are refused and write nothing. The caller's clock is ignored for
// leases: a node whose clock runs far ahead can't steal a live lease.
func TestDatabaseClockTakeover(t *testing.T) {
	dsn := pgtest.DSN(t)
	a, b := openT(t, dsn, Options{}), openT(t, dsn, Options{})
	ctx := ctxT(t)
	now := time.Now()
	enqueue(t, a, "m1", "a.test", now.Add(-time.Second))
	const ttl = 300 * time.Millisecond
	la, ds, err := a.Claim(ctx, "A", now, ttl, 10)
	if err != nil || la == nil || len(ds) != 1 {
		t.Fatalf("A Claim = %+v %v %v", la, ds, err)
	}
	if d := time.Until(la.Expires); d > ttl+5*time.Second || d < -5*time.Second {
		t.Fatalf("lease expires %v, not about now+%v by the database clock", la.Expires, ttl)
	}
	// B's clock is an hour ahead: still no lease.
	if l, _, err := b.Claim(ctx, "B", now.Add(time.Hour), ttl, 10); l != nil || err != nil {
		t.Fatalf("B claimed a live lease: %+v %v", l, err)
	}
	var lb *store.Lease
	for deadline := time.Now().Add(10 * time.Second); lb == nil; {
		if time.Now().After(deadline) {
			t.Fatal("B never took the expired lease over")
		}
		time.Sleep(50 * time.Millisecond)
		if lb, _, err = b.Claim(ctx, "B", time.Now(), time.Minute, 10); err != nil {
			t.Fatal(err)
		}
	}
	if lb.Token <= la.Token || lb.Domain != "a.test" {
		t.Fatalf("takeover lease %+v after %+v", lb, la)
	}
	before, _ := b.List(ctx, store.Filter{ID: "m1"}, store.Page{})
	if err := a.Complete(ctx, la, []store.Result{{ID: "m1", Delivered: []string{"u@a.test"}, Attempted: true}}); !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("old holder's Complete = %v, want ErrLeaseLost", err)
	}
	if err := a.Renew(ctx, la, time.Now(), time.Minute); !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("old holder's Renew = %v, want ErrLeaseLost", err)
	}
	after, _ := b.List(ctx, store.Filter{ID: "m1"}, store.Page{})
	if len(after) != 1 || len(before) != 1 || after[0].Attempts != before[0].Attempts || len(after[0].Recipients) != 1 {
		t.Fatalf("old holder's write changed the delivery: %+v -> %+v", before, after)
	}
	if err := b.Renew(ctx, lb, time.Now(), time.Minute); err != nil {
		t.Fatalf("new holder's Renew: %v", err)
	}
	if err := b.Complete(ctx, lb, []store.Result{{ID: "m1", Delivered: []string{"u@a.test"}, Attempted: true}}); err != nil {
		t.Fatalf("new holder's Complete: %v", err)
	}
	if _, ok, err := b.NextDue(ctx); ok || err != nil {
		t.Fatalf("queue not empty: %v %v", ok, err)
	}
}

// TestMigrateConcurrently: nodes starting at the same time on an empty
// database all come up, and the schema is applied once.
func TestMigrateConcurrently(t *testing.T) {
	dsn := pgtest.DSN(t)
	var wg sync.WaitGroup
	stores := make([]*Store, 4)
	errs := make([]error, len(stores))
	for i := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stores[i], errs[i] = Open(context.Background(), dsn, Options{})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
		defer stores[i].Close()
	}
	var v, rows int
	if err := stores[0].pool.QueryRow(ctxT(t), `SELECT max(version), count(*) FROM schema_version`).Scan(&v, &rows); err != nil {
		t.Fatal(err)
	}
	if v != len(migrations) || rows != 1 {
		t.Fatalf("schema_version: version %d in %d rows, want %d in 1", v, rows, len(migrations))
	}
	// A restart is a no-op.
	openT(t, dsn, Options{})
}

// patternReader yields n pseudo-random bytes without holding them.
type patternReader struct {
	rng *rand.Rand
	n   int64
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.n, 32<<10)]
	for i := range p {
		p[i] = byte(r.rng.Uint32())
	}
	r.n -= int64(len(p))
	return len(p), nil
}

// peakHeap samples HeapInuse until stop is called and returns the peak
// above the level at the start. The collector runs eagerly meanwhile, so the
// peak is what is held, not garbage awaiting a lazy collection.
func peakHeap() (stop func() uint64) {
	gc := debug.SetGCPercent(20)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > base && ms.HeapInuse-base > peak.Load() {
				peak.Store(ms.HeapInuse - base)
			}
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	return func() uint64 {
		close(done)
		<-finished
		debug.SetGCPercent(gc)
		return peak.Load()
	}
}

// TestBigMessageBoundedMemory: a 50 MB message goes in and comes out in
// chunks; the heap never grows by more than a few chunks.
func TestBigMessageBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("50 MB round trip")
	}
	s := openT(t, pgtest.DSN(t), Options{})
	ctx := ctxT(t)
	const size = 50 << 20
	const limit = 16 << 20

	want := sha256.New()
	if _, err := io.Copy(want, &patternReader{rng: rand.New(rand.NewPCG(7, 7)), n: size}); err != nil {
		t.Fatal(err)
	}
	stop := peakHeap()
	n, err := s.Enqueue(ctx, env("big", "a.test", time.Now()), &patternReader{rng: rand.New(rand.NewPCG(7, 7)), n: size})
	in := stop()
	if err != nil || n != size {
		t.Fatalf("Enqueue = %d, %v", n, err)
	}

	stop = peakHeap()
	rc, err := s.Body(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	got := sha256.New()
	m, err := io.Copy(got, rc)
	rc.Close()
	out := stop()
	if err != nil || m != size {
		t.Fatalf("read %d, %v", m, err)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatal("body differs after the round trip")
	}
	t.Logf("heap growth for a %d MiB message: enqueue %.1f MiB, read %.1f MiB", size>>20, float64(in)/(1<<20), float64(out)/(1<<20))
	if in > limit || out > limit {
		t.Fatalf("heap grew by %d (enqueue) / %d (read) bytes; want under %d", in, out, limit)
	}
	// The chunks are there, ~1 MiB each.
	var chunks int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM body_chunks WHERE message_id = 'big'`).Scan(&chunks); err != nil || chunks != 50 {
		t.Fatalf("%d chunks, %v; want 50", chunks, err)
	}
}

// TestDatabaseDown: with the database stopped, Enqueue fails at once (no
// hang, no false success); when it is back, the pool reconnects by itself
// and nothing acknowledged was lost.
func TestDatabaseDown(t *testing.T) {
	srv := pgtest.NewServer(t)
	s := openT(t, srv.DSN(t), Options{})
	enqueue(t, s, "before", "a.test", time.Now())

	srv.Stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := s.Enqueue(ctx, env("during", "a.test", time.Now()), bytes.NewReader([]byte("x")))
	if err == nil {
		t.Fatal("Enqueue succeeded with the database down")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Enqueue hung until the deadline: %v", err)
	}
	if _, _, err := s.Claim(ctx, "A", time.Now(), time.Minute, 10); err == nil {
		t.Fatal("Claim succeeded with the database down")
	}
	t.Logf("with the database down: %v", err)

	srv.Start(t)
	var ok bool
	for range 50 { // a connection broken by the restart may fail once
		if _, err = s.Enqueue(ctx, env("after", "a.test", time.Now()), bytes.NewReader([]byte("x"))); err == nil {
			ok = true
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !ok {
		t.Fatalf("Enqueue after restart: %v", err)
	}
	ds, err := s.List(ctx, store.Filter{}, store.Page{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range ds {
		got = append(got, d.ID)
	}
	sort.Strings(got)
	if fmt.Sprint(got) != "[after before]" {
		t.Fatalf("after restart the queue holds %v, want [after before]", got)
	}
}

// TestNotifications: a Flush on one node wakes a listener on another.
func TestNotifications(t *testing.T) {
	dsn := pgtest.DSN(t)
	a, b := openT(t, dsn, Options{}), openT(t, dsn, Options{})
	ctx := ctxT(t)
	ch := b.Notifications(ctx)
	select { // the first value says the session is listening
	case <-ch:
	case <-ctx.Done():
		t.Fatal("no first notification")
	}
	enqueue(t, a, "m1", "a.test", time.Now().Add(time.Hour))
	if n, err := a.Flush(ctx, store.Filter{Domain: "a.test"}, time.Now()); err != nil || n != 1 {
		t.Fatalf("Flush = %d, %v", n, err)
	}
	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatal("Flush on node a did not wake node b")
	}
}

func BenchmarkEnqueue(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!?\r\n"), 10*1024/66)
	for _, par := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("callers=%d", par), func(b *testing.B) {
			s := openT(b, withParam(pgtest.DSN(b), "pool_max_conns", "50"), Options{})
			var seq atomic.Int64
			b.SetBytes(int64(len(body)))
			start := time.Now()
			runPar(b, par, func() error {
				e := &store.Envelope{ID: fmt.Sprintf("B%09d", seq.Add(1)), Sender: "s@x.test", Received: storetest.T0,
					Domains: map[string][]store.Recipient{"a.test": {{Addr: "u@a.test"}}, "b.test": {{Addr: "v@b.test"}}}}
				_, err := s.Enqueue(context.Background(), e, bytes.NewReader(body))
				return err
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// withParam adds key=value to a URL or keyword/value DSN.
func withParam(dsn, key, value string) string {
	switch {
	case !strings.Contains(dsn, "://"):
		return dsn + " " + key + "=" + value
	case strings.Contains(dsn, "?"):
		return dsn + "&" + key + "=" + value
	}
	return dsn + "?" + key + "=" + value
}

// runPar calls fn b.N times from par goroutines.
func runPar(b *testing.B, par int, fn func() error) {
	b.Helper()
	work := make(chan struct{}, b.N)
	for range b.N {
		work <- struct{}{}
	}
	close(work)
	errs := make(chan error, par)
	for range par {
		go func() {
			var err error
			for range work {
				if err1 := fn(); err1 != nil && err == nil {
					err = err1
				}
			}
			errs <- err
		}()
	}
	for range par {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
}

// leaseRows returns the domains that have a leases row.
func leaseRows(t testing.TB, s *Store) []string {
	t.Helper()
	rows, err := s.pool.Query(ctxT(t), `SELECT domain FROM leases ORDER BY domain`)
	if err != nil {
		t.Fatal(err)
	}
	var doms []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			t.Fatal(err)
		}
		doms = append(doms, d)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return doms
}

// TestLeaseRowRemoved: releasing the lease of a domain with nothing left
// removes its leases row; a domain with mail left keeps it; the next Enqueue
// recreates it, and the next lease's token is still larger.
func TestLeaseRowRemoved(t *testing.T) {
	s := openT(t, pgtest.DSN(t), Options{})
	ctx := ctxT(t)
	now := time.Now()
	enqueue(t, s, "a1", "a.test", now.Add(-time.Minute))
	enqueue(t, s, "b1", "b.test", now.Add(-time.Minute))
	enqueue(t, s, "b2", "b.test", now.Add(time.Hour)) // not due: stays
	var tokens []int64
	for range 2 {
		l, ds, err := s.Claim(ctx, "n1", now, time.Minute, 10)
		if err != nil || l == nil || len(ds) != 1 {
			t.Fatalf("Claim: %v %v %v", l, ds, err)
		}
		tokens = append(tokens, l.Token)
		if err := s.Complete(ctx, l, []store.Result{{ID: ds[0].ID, Delivered: []string{ds[0].Recipients[0].Addr}, Attempted: true}}); err != nil {
			t.Fatal(err)
		}
		if err := s.ReleaseLease(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	if got := leaseRows(t, s); fmt.Sprint(got) != "[b.test]" {
		t.Fatalf("lease rows after draining a.test: %v, want [b.test]", got)
	}
	enqueue(t, s, "a2", "a.test", now.Add(-time.Minute))
	if got := leaseRows(t, s); fmt.Sprint(got) != "[a.test b.test]" {
		t.Fatalf("lease rows after a new message: %v", got)
	}
	l, ds, err := s.Claim(ctx, "n2", now, time.Minute, 10)
	if err != nil || l == nil || l.Domain != "a.test" || len(ds) != 1 {
		t.Fatalf("Claim after recreation: %v %v %v", l, ds, err)
	}
	if l.Token <= max(tokens[0], tokens[1]) {
		t.Fatalf("token %d after %v: fencing tokens must grow", l.Token, tokens)
	}
}

// TestLeaseRowRace: Enqueues for one domain race with claim, complete and
// release cycles that remove its leases row whenever the queue runs empty.
// No delivery may ever be left without a leases row: Claim would never see
// it again.
func TestLeaseRowRace(t *testing.T) {
	s := openT(t, pgtest.DSN(t), Options{})
	ctx := ctxT(t)
	const writers, per = 4, 60
	var wg sync.WaitGroup
	var stop atomic.Bool
	for w := range writers {
		wg.Go(func() {
			for i := range per {
				enqueue(t, s, fmt.Sprintf("w%d-%d", w, i), "race.test", time.Now().Add(-time.Minute))
			}
		})
	}
	done := make(chan struct{})
	delivered := 0
	go func() {
		defer close(done)
		for !stop.Load() {
			l, ds, err := s.Claim(ctx, "n", time.Now(), time.Minute, 7)
			if err != nil {
				t.Error(err)
				return
			}
			if l == nil {
				continue
			}
			res := make([]store.Result, len(ds))
			for i, d := range ds {
				res[i] = store.Result{ID: d.ID, Delivered: []string{d.Recipients[0].Addr}, Attempted: true}
			}
			if err := s.Complete(ctx, l, res); err != nil {
				t.Error(err)
				return
			}
			delivered += len(ds)
			if err := s.ReleaseLease(ctx, l); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	// Let the claimer drain what is left, then check the invariant.
	deadline := time.Now().Add(20 * time.Second)
	for {
		var orphans, left int
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM leases l WHERE l.domain = d.domain)), count(*) FROM deliveries d`).Scan(&orphans, &left); err != nil {
			t.Fatal(err)
		}
		if orphans > 0 {
			stop.Store(true)
			<-done
			t.Fatalf("%d deliveries have no leases row", orphans)
		}
		if left == 0 || time.Now().After(deadline) {
			stop.Store(true)
			<-done
			if left != 0 {
				t.Fatalf("%d deliveries left after 20 s", left)
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if delivered != writers*per {
		t.Fatalf("delivered %d, want %d", delivered, writers*per)
	}
}
