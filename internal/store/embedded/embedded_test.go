package embedded

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"backupmx/internal/store"
	"backupmx/internal/store/storetest"
)

func openT(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openOptsT(t testing.TB, dir string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(dir, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestConformance runs the suite with the default threshold (its small
// bodies in segments, its multi-MiB one a file), with segments so small that
// appends keep moving to new ones, and with every body a file.
func TestConformance(t *testing.T) {
	for _, c := range []struct {
		name string
		opts []Option
	}{
		{"segments", nil},
		{"tiny-segments", []Option{WithSegmentSize(segAlign)}},
		{"files", []Option{WithSmallMax(0)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			storetest.Run(t, storetest.Harness{
				Open: func(t *testing.T) store.Store { return openOptsT(t, t.TempDir(), c.opts...) },
				Reopen: func(t *testing.T, old store.Store) store.Store {
					s := old.(*Store)
					if err := s.Close(); err != nil {
						t.Fatalf("Close: %v", err)
					}
					return openOptsT(t, s.Dir(), c.opts...)
				},
			})
		})
	}
}

func readBody(t testing.TB, s *Store, id string) []byte {
	t.Helper()
	rc, err := s.Body(context.Background(), id)
	if err != nil {
		t.Fatalf("Body(%s): %v", id, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Body(%s): read: %v", id, err)
	}
	return b
}

func enqueue(t testing.TB, s *Store, id, body string) {
	t.Helper()
	if _, err := s.Enqueue(context.Background(), envelope(id), bytes.NewReader([]byte(body))); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
}

func TestSweep(t *testing.T) {
	dir := t.TempDir()
	s := openOptsT(t, dir, WithSmallMax(0)) // bodies as files
	enqueue(t, s, "keep1", "one")
	enqueue(t, s, "keep2", "two")
	// A crash after the body was durable but before the row commit leaves
	// exactly this: a body file with no row. And a half-written tmp file.
	orphan := s.bodyPath("orphan")
	if err := os.WriteFile(orphan, []byte("lost"), 0o600); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "tmp", "tmp-123")
	if err := os.WriteFile(tmp, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openOptsT(t, dir, WithSmallMax(0))
	for _, p := range []string{orphan, tmp} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived the sweep: %v", p, err)
		}
	}
	assertBodies(t, s)
	for _, id := range []string{"keep1", "keep2"} {
		if _, err := os.Stat(s.bodyPath(id)); err != nil {
			t.Errorf("sweep removed %s: %v", id, err)
		}
	}
}

// assertBodies checks the invariant: every row has its body in exactly one
// place (a segment, a file, or a legacy bodies row) and of its size, every
// body file and body row has its message row, and every segment file left
// is one a row points into (or the one taking appends).
func assertBodies(t *testing.T, s *Store) {
	t.Helper()
	rows, err := s.rdb.Query(`SELECT m.id, m.size, length(b.data), sb.seg, sb.off, sb.len
		FROM messages m LEFT JOIN bodies b ON b.id = m.id LEFT JOIN segbodies sb ON sb.id = m.id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	files := 0
	usedSegs := map[string]bool{}
	for rows.Next() {
		var id string
		var size int64
		var legacy, seg, off, slen sql.NullInt64
		if err := rows.Scan(&id, &size, &legacy, &seg, &off, &slen); err != nil {
			t.Fatal(err)
		}
		fi, ferr := os.Stat(s.bodyPath(id))
		places := 0
		if legacy.Valid {
			places++
			if legacy.Int64 != size {
				t.Errorf("row %s (size %d) with a legacy body of %d bytes", id, size, legacy.Int64)
			}
		}
		if seg.Valid {
			places++
			name := fmt.Sprintf("%016x", seg.Int64)
			usedSegs[name] = true
			sfi, err := os.Stat(filepath.Join(s.dir, "segments", name))
			switch {
			case err != nil:
				t.Errorf("row %s: segment %s: %v", id, name, err)
			case slen.Int64 != size || off.Int64%segAlign != 0 || off.Int64+slen.Int64 > sfi.Size():
				t.Errorf("row %s (size %d): segment %s at %d, %d bytes, segment size %d", id, size, name, off.Int64, slen.Int64, sfi.Size())
			}
		}
		if ferr == nil {
			places++
			files++
			if fi.Size() != size {
				t.Errorf("row %s (size %d) with a body file of %d bytes", id, size, fi.Size())
			}
		}
		if places != 1 {
			t.Errorf("row %s has its body in %d places", id, places)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var orphans int
	if err := s.rdb.QueryRow(`SELECT (SELECT COUNT(*) FROM bodies b WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = b.id))
		+ (SELECT COUNT(*) FROM segbodies b WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = b.id))`).Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	if orphans > 0 {
		t.Errorf("%d body rows without a message", orphans)
	}
	paths, _ := filepath.Glob(filepath.Join(s.dir, "bodies", "*", "*"))
	if len(paths) != files {
		t.Errorf("%d body files for %d rows with a file body", len(paths), files)
	}
	s.segs.idle()
	segs, _ := os.ReadDir(filepath.Join(s.dir, "segments"))
	spare := spareName(s)
	s.segs.mu.Lock()
	cur := ""
	if s.segs.cur != nil {
		cur = fmt.Sprintf("%016x", s.segs.cur.n)
	}
	s.segs.mu.Unlock()
	for _, e := range segs {
		if !usedSegs[e.Name()] && e.Name() != cur && e.Name() != spare {
			t.Errorf("segment %s is left with no row pointing into it", e.Name())
		}
	}
}

// TestCrashBetweenBodyAndRow covers the window between a durable body and
// its row: a failed row commit must take the body back, and a crash in that
// window (body file, no row) is cleaned by the sweep.
func TestCrashBetweenBodyAndRow(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openT(t, dir)
	enqueue(t, s, "before", "x")
	doms := map[string][]store.Recipient{"a.test": {{Addr: "u@a.test"}}}

	// The row commit fails (injected with a trigger): nothing is kept.
	err := s.w.do(ctx, nil, func(tx *wtx) error {
		_, err := tx.Exec(`CREATE TEMP TRIGGER fail BEFORE INSERT ON messages WHEN NEW.id = 'refused'
			BEGIN SELECT RAISE(ABORT, 'injected failure'); END`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Enqueue(ctx, &store.Envelope{ID: "refused", Received: storetest.T0, Domains: doms}, bytes.NewReader([]byte("body")))
	if err == nil {
		t.Fatal("Enqueue succeeded despite the failed commit")
	}
	if _, err := os.Stat(s.bodyPath("refused")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("body of a refused message left behind: %v", err)
	}

	// Invalid and duplicate ids are refused; the existing body survives.
	if _, err := s.Enqueue(ctx, &store.Envelope{ID: "../x", Domains: doms}, bytes.NewReader(nil)); err == nil {
		t.Fatal("invalid id accepted")
	}
	if _, err := s.Enqueue(ctx, &store.Envelope{ID: "before", Received: storetest.T0, Domains: doms},
		bytes.NewReader([]byte("other"))); err == nil {
		t.Fatal("duplicate id accepted")
	}
	if b := readBody(t, s, "before"); string(b) != "x" {
		t.Fatalf("duplicate Enqueue replaced the body: %q", b)
	}
	assertBodies(t, s)

	// The crash itself: body linked, process gone before the row.
	if err := os.WriteFile(s.bodyPath("crash"), []byte("half-queued"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openT(t, dir)
	if _, err := s.Body(ctx, "crash"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Body(crash) = %v, want ErrNotFound", err)
	}
	assertBodies(t, s)
	if ds, err := s.List(ctx, store.Filter{}, store.Page{}); err != nil || len(ds) != 1 {
		t.Fatalf("List = %v, %v", ds, err)
	}
}

func TestLockedDir(t *testing.T) {
	dir := t.TempDir()
	openT(t, dir)
	if s, err := Open(dir); err == nil {
		s.Close()
		t.Fatal("second Open of the same dir succeeded")
	}
}

func TestClosed(t *testing.T) {
	s := openT(t, t.TempDir())
	s.Close()
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	e := &store.Envelope{ID: "x", Domains: map[string][]store.Recipient{"a.test": {{Addr: "u@a.test"}}}}
	if _, err := s.Enqueue(context.Background(), e, bytes.NewReader(nil)); err == nil {
		t.Fatal("Enqueue on a closed store succeeded")
	}
}

func BenchmarkEnqueue(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!?\r\n"), 10*1024/66)
	for _, par := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("callers=%d", par), func(b *testing.B) {
			s, err := Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var seq atomic.Int64
			b.SetBytes(int64(len(body)))
			start, cpu := time.Now(), startCPU()
			runPar(b, par, func() error {
				e := &store.Envelope{ID: fmt.Sprintf("B%09d", seq.Add(1)), Sender: "s@x.test", Received: storetest.T0,
					Domains: map[string][]store.Recipient{"a.test": {{Addr: "u@a.test"}}, "b.test": {{Addr: "v@b.test"}}}}
				_, err := s.Enqueue(context.Background(), e, bytes.NewReader(body))
				return err
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
			cpu.report(b)
		})
	}
}

// BenchmarkFsync is this machine's raw rate of write+fsync of one 10 KB file
// (the least one Enqueue's body costs), by 1, 10 and 50 concurrent writers,
// for comparison with BenchmarkEnqueue.
func BenchmarkFsync(b *testing.B) {
	buf := make([]byte, 10*1024)
	for _, par := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("writers=%d", par), func(b *testing.B) {
			dir := b.TempDir()
			var seq atomic.Int64
			start := time.Now()
			runPar(b, par, func() error {
				f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%d", seq.Add(1))))
				if err != nil {
					return err
				}
				defer f.Close()
				if _, err := f.Write(buf); err != nil {
					return err
				}
				return f.Sync()
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "fsyncs/s")
		})
	}
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

// BenchmarkDrain is the delivery side of the queue per message: Claim a
// domain's due work, read each body, and Complete the outcomes (all
// delivered) in groups of 50, as internal/queue does with its default batch (200), until nothing is due.
// The backlog (b.N messages of 10 KB over 10 domains) is stored with Fill
// before the timer starts; drainers work on different domains at once.
func BenchmarkDrain(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!?\r\n"), 10*1024/66)
	for _, par := range []int{1, 4} {
		b.Run(fmt.Sprintf("drainers=%d", par), func(b *testing.B) {
			s, err := Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			items := make([]FillItem, b.N)
			for i := range items {
				dom := fmt.Sprintf("d%d.test", i%10)
				items[i] = FillItem{Env: &store.Envelope{ID: fmt.Sprintf("D%09d", i), Sender: "s@x.test", Received: storetest.T0,
					Domains: map[string][]store.Recipient{dom: {{Addr: "u@" + dom}}}}}
			}
			if err := s.Fill(ctx, items, body); err != nil {
				b.Fatal(err)
			}
			now := storetest.T0.Add(time.Hour)
			var done atomic.Int64
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			start, cpu := time.Now(), startCPU()
			errs := make(chan error, par)
			for w := range par {
				go func() { errs <- drain(ctx, s, fmt.Sprintf("w%d", w), now, &done) }()
			}
			for range par {
				if err := <-errs; err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
			cpu.report(b)
			if n := done.Load(); n != int64(b.N) {
				b.Fatalf("drained %d of %d", n, b.N)
			}
		})
	}
}

func drain(ctx context.Context, s *Store, owner string, now time.Time, done *atomic.Int64) error {
	buf := make([]byte, 32*1024)
	for {
		l, ds, err := s.Claim(ctx, owner, now, time.Minute, 200)
		if err != nil || l == nil {
			return err
		}
		var rs []store.Result
		for i, d := range ds {
			rc, err := s.Body(ctx, d.ID)
			if err != nil {
				return err
			}
			for {
				if _, err := rc.Read(buf); err != nil {
					break
				}
			}
			rc.Close()
			rs = append(rs, store.Result{ID: d.ID, Delivered: []string{d.Recipients[0].Addr}, Attempted: true})
			if len(rs) == 50 || i == len(ds)-1 {
				if err := s.Complete(ctx, l, rs); err != nil {
					return err
				}
				done.Add(int64(len(rs)))
				rs = rs[:0]
			}
		}
		if err := s.ReleaseLease(ctx, l); err != nil {
			return err
		}
	}
}

// cpuTimes is the process's user and system CPU time at a point.
type cpuTimes struct{ user, sys time.Duration }

func startCPU() cpuTimes {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return cpuTimes{time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())}
}

// report adds the user and system CPU time per operation since c: the cost
// per message, whatever the disk's latency.
func (c cpuTimes) report(b *testing.B) {
	now := startCPU()
	b.ReportMetric(float64(now.user-c.user)/float64(b.N), "user-ns/op")
	b.ReportMetric(float64(now.sys-c.sys)/float64(b.N), "sys-ns/op")
}

// One Complete carrying several outcomes, two of them for the same message,
// is applied in order, as if each had been its own Complete.
func TestCompleteGroupInOrder(t *testing.T) {
	ctx := context.Background()
	s := openT(t, t.TempDir())
	two := &store.Envelope{ID: "m1", Received: storetest.T0,
		Domains: map[string][]store.Recipient{"a.test": {{Addr: "u@a.test"}, {Addr: "v@a.test"}}}}
	if _, err := s.Enqueue(ctx, two, bytes.NewReader([]byte("1"))); err != nil {
		t.Fatal(err)
	}
	enqueue(t, s, "m2", "2")
	enqueue(t, s, "m3", "3")
	l, ds, err := s.Claim(ctx, "o", storetest.T0, time.Minute, 10)
	if err != nil || len(ds) != 3 {
		t.Fatalf("Claim = %d deliveries, %v", len(ds), err)
	}
	next := storetest.T0.Add(time.Hour)
	err = s.Complete(ctx, l, []store.Result{
		{ID: "m1", Delivered: []string{"u@a.test"}, Next: next, LastError: "later", Attempted: true},
		{ID: "m2", Delivered: []string{"u@a.test"}, Attempted: true},
		{ID: "m3", Next: next, LastError: "first", Attempted: true},
		{ID: "gone", Delivered: []string{"u@a.test"}, Attempted: true},
		{ID: "m1", Failed: []string{"v@a.test"}, Attempted: true},
		{ID: "m3", Next: next.Add(time.Minute), LastError: "second", Attempted: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	left, err := s.List(ctx, store.Filter{}, store.Page{})
	if err != nil || len(left) != 1 {
		t.Fatalf("List = %v, %v; want m3 only", left, err)
	}
	if d := left[0]; d.ID != "m3" || d.Attempts != 2 || d.LastError != "second" || !d.NextAttempt.Equal(next.Add(time.Minute)) {
		t.Fatalf("m3 = %+v", d)
	}
	for _, id := range []string{"m1", "m2"} {
		if _, err := s.Body(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Body(%s) = %v, want ErrNotFound", id, err)
		}
	}
	assertBodies(t, s)
}

// inSegment reports whether message id's body is in a segment, and whether
// it has a body file.
func inSegment(t *testing.T, s *Store, id string) (seg, file bool) {
	t.Helper()
	var one int
	err := s.rdb.QueryRow(`SELECT 1 FROM segbodies WHERE id = ?`, id).Scan(&one)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		t.Fatal(err)
	}
	_, ferr := os.Stat(s.bodyPath(id))
	return err == nil, ferr == nil
}

// assertNothing checks that a store holds no message, no body and no
// temporary file.
func assertNothing(t *testing.T, s *Store) {
	t.Helper()
	var msgs, bodies int
	if err := s.rdb.QueryRow(`SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM bodies) + (SELECT COUNT(*) FROM segbodies)`).Scan(&msgs, &bodies); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(s.dir, "bodies", "*", "*"))
	tmps, _ := filepath.Glob(filepath.Join(s.dir, "tmp", "*"))
	if msgs+bodies+len(files)+len(tmps) > 0 {
		t.Fatalf("left behind: %d messages, %d body rows, %d body files, %d tmp files", msgs, bodies, len(files), len(tmps))
	}
}

// copyCrashed copies the store's files as a crash would leave them (the
// index and its WAL as on disk, no shared-memory index, no lock holder) to
// a new directory, while the store stays open.
func copyCrashed(t *testing.T, s *Store) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(s.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(s.dir, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		if d.Name() == "index.db-shm" || d.Name() == "lock" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

var errReader = errors.New("reader failed")

type failAfter struct{ left int }

func (r *failAfter) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, errReader
	}
	n := min(len(p), r.left, 1000)
	for i := range p[:n] {
		p[i] = 'f'
	}
	r.left -= n
	return n, nil
}

// TestSmallThreshold covers both sides of the small-body threshold: a body
// of threshold-1 or threshold bytes is in a segment, threshold+1 is a file; each
// reads back whole, survives a crash-like reopen, and leaves nothing once
// removed by Complete or Delete. A reader failing mid-way, within and past
// the threshold, leaves nothing.
func TestSmallThreshold(t *testing.T) {
	ctx := context.Background()
	for _, thr := range []int64{DefaultSmallMax, 1000} {
		t.Run(fmt.Sprint(thr), func(t *testing.T) {
			var opts []Option
			if thr != DefaultSmallMax {
				opts = append(opts, WithSmallMax(thr))
			}
			s := openOptsT(t, t.TempDir(), opts...)
			bodies := map[string][]byte{}
			for _, size := range []int64{thr - 1, thr, thr + 1} {
				id := fmt.Sprintf("m%d", size)
				body := make([]byte, size)
				for i := range body {
					body[i] = byte(i*7 + int(size))
				}
				bodies[id] = body
				e := &store.Envelope{ID: id, Received: storetest.T0, Domains: map[string][]store.Recipient{"a.test": {{Addr: "u@a.test"}}}}
				// One byte at a time up to the boundary, then larger reads.
				r := io.MultiReader(iotest.OneByteReader(bytes.NewReader(body[:min(size, 1100)])), bytes.NewReader(body[min(size, 1100):]))
				n, err := s.Enqueue(ctx, e, r)
				if err != nil || n != size {
					t.Fatalf("Enqueue(%d bytes) = %d, %v", size, n, err)
				}
				seg, file := inSegment(t, s, id)
				if seg != (size <= thr) || file == seg {
					t.Fatalf("%d bytes: segment=%v file=%v, want a segment iff <= %d", size, seg, file, thr)
				}
				if got := readBody(t, s, id); !bytes.Equal(got, body) {
					t.Fatalf("%d bytes: body differs", size)
				}
			}
			assertBodies(t, s)

			// Failing readers, within and past the threshold.
			for _, left := range []int{int(thr / 2), int(thr) + 500} {
				e := &store.Envelope{ID: "failing", Received: storetest.T0, Domains: map[string][]store.Recipient{"a.test": {{Addr: "u@a.test"}}}}
				if _, err := s.Enqueue(ctx, e, &failAfter{left: left}); !errors.Is(err, errReader) {
					t.Fatalf("Enqueue failing after %d bytes: %v, want the reader's error", left, err)
				}
				if _, err := s.Body(ctx, "failing"); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("Body after a failed Enqueue: %v", err)
				}
			}
			assertBodies(t, s)
			if tmps, _ := filepath.Glob(filepath.Join(s.dir, "tmp", "*")); len(tmps) > 0 {
				t.Fatalf("tmp files left: %v", tmps)
			}

			// As a crash leaves the directory: every committed body is back.
			c := openOptsT(t, copyCrashed(t, s), opts...)
			for id, body := range bodies {
				if got := readBody(t, c, id); !bytes.Equal(got, body) {
					t.Fatalf("after crash: %s differs", id)
				}
			}
			assertBodies(t, c)

			// Removal takes the segment rows and the files.
			if err := s.Delete(ctx, fmt.Sprintf("m%d", thr)); err != nil {
				t.Fatal(err)
			}
			l, ds, err := s.Claim(ctx, "w", storetest.T0.Add(time.Hour), time.Minute, 10)
			if err != nil || len(ds) != 2 {
				t.Fatalf("Claim = %v, %v", ds, err)
			}
			var rs []store.Result
			for _, d := range ds {
				rs = append(rs, store.Result{ID: d.ID, Delivered: []string{"u@a.test"}, Attempted: true})
			}
			if err := s.Complete(ctx, l, rs); err != nil {
				t.Fatal(err)
			}
			for id := range bodies {
				if _, err := s.Body(ctx, id); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("Body(%s) after removal: %v", id, err)
				}
			}
			assertNothing(t, s)
		})
	}
}

// TestSmallNever checks that WithSmallMax(0) keeps every body, even an
// empty one, in a file.
func TestSmallNever(t *testing.T) {
	s := openOptsT(t, t.TempDir(), WithSmallMax(0))
	enqueue(t, s, "empty", "")
	enqueue(t, s, "small", "x")
	for _, id := range []string{"empty", "small"} {
		if seg, file := inSegment(t, s, id); seg || !file {
			t.Fatalf("%s: segment=%v file=%v, want a file", id, seg, file)
		}
	}
	assertBodies(t, s)
}

// pending is the number of ops handed to the writer and not yet taken.
func (w *writer) pending() int { return len(w.ops) }

// runGroup hands n ops to the writer while it is kept busy, so that they
// form one group, and returns each op's outcome. ops(i) gives op i.
func runGroup(t *testing.T, s *Store, n int, ops func(i int) (syncer, func(*wtx) error)) []error {
	t.Helper()
	ctx := context.Background()
	errs := make([]error, n)
	inGroup(s, n, func(i int) {
		sn, fn := ops(i)
		errs[i] = s.w.do(ctx, sn, fn)
	})
	return errs
}

// inGroup runs call(0) … call(n-1) at once, each handing the writer one op,
// and has those n ops committed in one group: the writer is kept busy until
// all are waiting.
func inGroup(s *Store, n int, call func(i int)) {
	hold := make(chan struct{})
	started := make(chan struct{})
	go s.w.do(context.Background(), nil, func(*wtx) error {
		close(started)
		<-hold
		return nil
	})
	<-started
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { call(i) })
	}
	for s.w.pending() < n {
		time.Sleep(time.Millisecond)
	}
	close(hold)
	wg.Wait()
}

// messageRows counts the messages rows with id.
func messageRows(t *testing.T, s *Store, id string) int {
	t.Helper()
	var n int
	if err := s.rdb.QueryRow(`SELECT count(*) FROM messages WHERE id = ?`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestGroupWithFailingOp: ops committed in one group where one fails after
// writing: the others' writes are committed, the failing op's are not, and
// each caller gets its own outcome (the group is run again with savepoints).
func TestGroupWithFailingOp(t *testing.T) {
	s := openT(t, t.TempDir())
	errBoom := errors.New("boom")
	runs := make([]atomic.Int32, 5)
	errs := runGroup(t, s, 5, func(i int) (syncer, func(*wtx) error) {
		return nil, func(tx *wtx) error {
			runs[i].Add(1)
			if err := insertRows(tx, []*newRows{{id: fmt.Sprintf("G%d", i), env: `{}`}}); err != nil {
				return err
			}
			if i == 2 {
				return errBoom // after its insert: that row must not stay
			}
			return nil
		}
	})
	for i := range 5 {
		n := messageRows(t, s, fmt.Sprintf("G%d", i))
		switch {
		case i == 2 && (!errors.Is(errs[i], errBoom) || n != 0):
			t.Errorf("failing op: err %v, rows %d; want boom and 0", errs[i], n)
		case i != 2 && (errs[i] != nil || n != 1):
			t.Errorf("op %d: err %v, rows %d; want nil and 1", i, errs[i], n)
		}
		// Plain first; the group stops at the failure and runs again with
		// savepoints, so ops after the failing one ran once.
		if r := runs[i].Load(); r < 1 || r > 2 || i == 2 && r != 2 {
			t.Errorf("op %d ran %d times", i, r)
		}
	}
}

// TestBodies: one read returns the small bodies asked for; a body kept as a
// file, or an unknown id, is absent from the map (the caller uses Body).
func TestBodies(t *testing.T) {
	s := openOptsT(t, t.TempDir(), WithSmallMax(100))
	enqueue(t, s, "small1", "one")
	enqueue(t, s, "small2", "two")
	big := strings.Repeat("x", 500)
	enqueue(t, s, "big", big)
	got, err := s.Bodies(context.Background(), []string{"small1", "big", "small2", "unknown"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || string(got["small1"]) != "one" || string(got["small2"]) != "two" {
		t.Fatalf("Bodies = %q, want small1 and small2 only", got)
	}
	if b := readBody(t, s, "big"); string(b) != big {
		t.Fatalf("Body(big) = %d bytes", len(b))
	}
}

type failingSync struct{ err error }

func (f failingSync) Sync() error { return f.err }

// TestGroupWithFailingSync: the syncs of a group run while its statements
// do; an op whose sync fails gets that error and none of its writes are
// committed, the others' are.
func TestGroupWithFailingSync(t *testing.T) {
	s := openT(t, t.TempDir())
	errDisk := errors.New("EIO")
	errs := runGroup(t, s, 4, func(i int) (syncer, func(*wtx) error) {
		var sn syncer
		switch i {
		case 1:
			sn = failingSync{errDisk}
		case 2:
			sn = dirSync(s.dir)
		}
		return sn, func(tx *wtx) error {
			return insertRows(tx, []*newRows{{id: fmt.Sprintf("S%d", i), env: `{}`}})
		}
	})
	for i := range 4 {
		n := messageRows(t, s, fmt.Sprintf("S%d", i))
		switch {
		case i == 1 && (!errors.Is(errs[i], errDisk) || n != 0):
			t.Errorf("op with a failed sync: err %v, rows %d; want EIO and 0", errs[i], n)
		case i != 1 && (errs[i] != nil || n != 1):
			t.Errorf("op %d: err %v, rows %d; want nil and 1", i, errs[i], n)
		}
	}
}

// enqueueGroup has n Enqueues (envelope i from env) committed in one group.
func enqueueGroup(t *testing.T, s *Store, n int, env func(i int) *store.Envelope) []error {
	t.Helper()
	errs := make([]error, n)
	inGroup(s, n, func(i int) {
		e := env(i)
		_, errs[i] = s.Enqueue(context.Background(), e, strings.NewReader("body of "+e.ID))
	})
	return errs
}

// TestEnqueuesTogether: the new messages of one group are inserted by
// multi-row INSERTs (more than one statement's worth of rows here); when
// one of them fails (a taken id), the group runs op by op and only that
// Enqueue fails.
func TestEnqueuesTogether(t *testing.T) {
	s := openT(t, t.TempDir())
	enqueue(t, s, "taken", "first")
	for _, dup := range []bool{false, true} {
		const n = 2*maxRowsPerInsert + 5
		prefix := fmt.Sprintf("M%v", dup)
		id := func(i int) string {
			if dup && i == 7 {
				return "taken"
			}
			return fmt.Sprintf("%s%03d", prefix, i)
		}
		errs := enqueueGroup(t, s, n, func(i int) *store.Envelope {
			e := &store.Envelope{ID: id(i), Sender: "s@x.test", Received: storetest.T0,
				Domains: map[string][]store.Recipient{"a.test": {{Addr: "u@a.test"}}}}
			if i%3 == 0 {
				e.Domains["b.test"] = []store.Recipient{{Addr: "v@b.test", Notify: "NEVER"}}
			}
			return e
		})
		for i := range n {
			if dup && i == 7 {
				if errs[i] == nil || !strings.Contains(errs[i].Error(), "duplicate queue id") {
					t.Errorf("Enqueue of a taken id: %v", errs[i])
				}
				continue
			}
			if errs[i] != nil {
				t.Fatalf("Enqueue %s: %v", id(i), errs[i])
			}
			if b := readBody(t, s, id(i)); string(b) != "body of "+id(i) {
				t.Errorf("body of %s = %q", id(i), b)
			}
			ds, err := s.List(context.Background(), store.Filter{ID: id(i)}, store.Page{Limit: 10})
			if err != nil {
				t.Fatal(err)
			}
			want := 1
			if i%3 == 0 {
				want = 2
			}
			if len(ds) != want || ds[0].Envelope.Sender != "s@x.test" || ds[0].Size != int64(len("body of "+id(i))) {
				t.Errorf("deliveries of %s: %+v", id(i), ds)
			}
		}
	}
	if b := readBody(t, s, "taken"); string(b) != "first" {
		t.Errorf("the taken id's body is now %q", b)
	}
	assertBodies(t, s)
}
