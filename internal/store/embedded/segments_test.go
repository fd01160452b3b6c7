package embedded

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"backupmx/internal/store"
	"backupmx/internal/store/storetest"
)

// segFiles lists the segment files of s, by name, but for the spare.
func segFiles(t *testing.T, s *Store) []string {
	t.Helper()
	s.segs.idle()
	ents, err := os.ReadDir(filepath.Join(s.dir, "segments"))
	if err != nil {
		t.Fatal(err)
	}
	spare := spareName(s)
	var names []string
	for _, e := range ents {
		if e.Name() != spare {
			names = append(names, e.Name())
		}
	}
	return names
}

// spareName is the file name of the spare segment, if any.
func spareName(s *Store) string {
	s.segs.mu.Lock()
	defer s.segs.mu.Unlock()
	if s.segs.spare == nil {
		return ""
	}
	return fmt.Sprintf("%016x", s.segs.spare.n)
}

// allocated is the space the file system holds for a file, in bytes.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// canPunch reports whether the file system under dir punches holes.
func canPunch(t *testing.T, dir string) bool {
	f, err := os.CreateTemp(dir, "punch")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := f.Write(make([]byte, 3*segAlign)); err != nil {
		t.Fatal(err)
	}
	return punchHole(int(f.Fd()), segAlign, segAlign) == nil
}

func completeAllOf(t *testing.T, s *Store, domain string, ids ...string) {
	t.Helper()
	ctx := context.Background()
	l, ds, err := s.Claim(ctx, "w", storetest.T0.Add(time.Hour), time.Minute, 1000)
	if err != nil || l == nil || l.Domain != domain {
		t.Fatalf("Claim = %v, %v", l, err)
	}
	var rs []store.Result
	for _, d := range ds {
		if slices.Contains(ids, d.ID) {
			rs = append(rs, store.Result{ID: d.ID, Delivered: []string{"u@" + domain}, Attempted: true})
		}
	}
	if err := s.Complete(ctx, l, rs); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseLease(ctx, l); err != nil {
		t.Fatal(err)
	}
}

// TestSegmentsRotateAndGo: appends move to a new segment past the segment
// size; a segment goes once no row points into it and it takes no more
// appends; removed bodies' blocks are given back at once; a reopened store
// appends to a new segment and keeps the old ones' bodies readable.
func TestSegmentsRotateAndGo(t *testing.T) {
	dir := t.TempDir()
	s := openOptsT(t, dir, WithSegmentSize(4*segAlign))
	bodies := map[string]string{}
	var ids []string
	for i := range 12 {
		id := fmt.Sprintf("m%02d", i)
		body := strings.Repeat(string(rune('a'+i)), 5000+i) // two blocks each
		enqueue(t, s, id, body)
		bodies[id] = body
		ids = append(ids, id)
	}
	// 4 blocks per segment, 2 per body: 2 bodies per segment.
	if got := segFiles(t, s); len(got) != 6 {
		t.Fatalf("segments %v, want 6", got)
	}
	for id, body := range bodies {
		if got := readBody(t, s, id); string(got) != body {
			t.Fatalf("Body(%s) = %.20q…", id, got)
		}
	}
	got, err := s.Bodies(context.Background(), ids)
	if err != nil || len(got) != len(ids) {
		t.Fatalf("Bodies = %d, %v", len(got), err)
	}
	for id, body := range bodies {
		if string(got[id]) != body {
			t.Fatalf("Bodies[%s] differs", id)
		}
	}
	assertBodies(t, s)

	first := filepath.Join(dir, "segments", segFiles(t, s)[0])
	punch := canPunch(t, dir)
	before := allocated(t, first)
	// One of the first segment's two bodies goes: its blocks are freed.
	if err := s.Delete(context.Background(), "m00"); err != nil {
		t.Fatal(err)
	}
	s.segs.drainReclaims()
	if _, err := os.Stat(first); err != nil {
		t.Fatalf("first segment gone with a body left in it: %v", err)
	}
	if after := allocated(t, first); punch && after > before-2*segAlign {
		t.Errorf("first segment holds %d bytes after a removal, %d before: no hole punched", after, before)
	}
	// Its other body goes: so does the segment.
	completeAllOf(t, s, "a.test", "m01")
	names := segFiles(t, s)
	if slices.Contains(names, filepath.Base(first)) || len(names) != 5 {
		t.Fatalf("segments after removing the first two: %v", names)
	}
	assertBodies(t, s)

	// The current (last) segment stays while it takes appends, even empty.
	completeAllOf(t, s, "a.test", "m10", "m11")
	if names := segFiles(t, s); len(names) != 5 {
		t.Fatalf("segments %v, want 5 (the current one kept)", names)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopen: the empty former current segment is swept, the others keep
	// their bodies, appends go to a new segment.
	s = openOptsT(t, dir, WithSegmentSize(4*segAlign))
	names = segFiles(t, s)
	if len(names) != 4 {
		t.Fatalf("segments after reopen %v, want 4", names)
	}
	enqueue(t, s, "new", "fresh")
	after := segFiles(t, s)
	if len(after) != 5 || after[4] <= names[3] {
		t.Fatalf("segments after an append %v: want a new, higher one after %v", after, names)
	}
	for _, id := range ids[2:10] {
		if got := readBody(t, s, id); string(got) != bodies[id] {
			t.Fatalf("Body(%s) after reopen differs", id)
		}
	}
	assertBodies(t, s)
}

// TestSegmentFailedCommit: an append whose commit fails (a duplicate id)
// leaves no row and has its blocks given back; the first message is intact.
func TestSegmentFailedCommit(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir)
	enqueue(t, s, "dup", strings.Repeat("1", 3*segAlign))
	seg := filepath.Join(dir, "segments", segFiles(t, s)[0])
	before := allocated(t, seg)
	e := &store.Envelope{ID: "dup", Received: storetest.T0, Domains: map[string][]store.Recipient{"a.test": {{Addr: "u@a.test"}}}}
	if _, err := s.Enqueue(context.Background(), e, bytes.NewReader(bytes.Repeat([]byte("2"), 5*segAlign))); err == nil {
		t.Fatal("Enqueue of a taken id succeeded")
	}
	if after := allocated(t, seg); canPunch(t, dir) && after > before {
		t.Errorf("segment holds %d bytes after a failed append, %d before", after, before)
	}
	if got := readBody(t, s, "dup"); string(got) != strings.Repeat("1", 3*segAlign) {
		t.Fatalf("first dup's body changed: %.20q…", got)
	}
	assertBodies(t, s)
}

// TestSegmentSweep: a segment no row points into (a crash between an
// append and its commit, or before an unlink) is removed at Open, and new
// segments are numbered past it.
func TestSegmentSweep(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir)
	enqueue(t, s, "keep", "kept")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(dir, "segments", fmt.Sprintf("%016x", 7))
	if err := os.WriteFile(orphan, []byte("appended, never committed"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir)
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatalf("orphan segment survived Open: %v", err)
	}
	enqueue(t, s, "next", "after")
	if names := segFiles(t, s); len(names) != 2 || names[1] != fmt.Sprintf("%016x", 8) {
		t.Fatalf("segments %v, want the kept one and 0…08", names)
	}
	if got := readBody(t, s, "keep"); string(got) != "kept" {
		t.Fatalf("Body(keep) = %q", got)
	}
	assertBodies(t, s)
}

// TestLegacyBodies: a store written before segments (small bodies in the
// bodies table) is still read, listed in Bodies and cleaned by removal.
func TestLegacyBodies(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openT(t, dir)
	for _, id := range []string{"old1", "old2"} {
		err := s.w.do(ctx, nil, func(tx *wtx) error {
			if _, err := tx.Exec(`INSERT INTO messages (id, envelope, size) VALUES (?, '{"received":"2026-01-01T00:00:00Z"}', 3)`, id); err != nil {
				return err
			}
			if _, err := tx.Exec(`INSERT INTO deliveries (id, domain, recipients, next_attempt) VALUES (?, 'a.test', '[{"addr":"u@a.test"}]', 0)`, id); err != nil {
				return err
			}
			_, err := tx.Exec(`INSERT INTO bodies (id, data) VALUES (?, ?)`, id, []byte(id[3:]+"ab"))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir)
	if !s.legacyBodies {
		t.Fatal("legacy bodies not noticed at Open")
	}
	enqueue(t, s, "new", "seg")
	if got := readBody(t, s, "old1"); string(got) != "1ab" {
		t.Fatalf("Body(old1) = %q", got)
	}
	got, err := s.Bodies(ctx, []string{"old1", "old2", "new"})
	if err != nil || string(got["old1"]) != "1ab" || string(got["old2"]) != "2ab" || string(got["new"]) != "seg" {
		t.Fatalf("Bodies = %q, %v", got, err)
	}
	assertBodies(t, s)
	if err := s.Delete(ctx, "old2"); err != nil {
		t.Fatal(err)
	}
	completeAllOf(t, s, "a.test", "old1", "new")
	assertNothing(t, s)
}

// TestSegmentReclaimAtOpen: after a restart, the previous current segment's
// unused tail and the space of bodies removed before the restart are given
// back in the background.
func TestSegmentReclaimAtOpen(t *testing.T) {
	dir := t.TempDir()
	if !canPunch(t, dir) {
		t.Skip("no hole punching here")
	}
	s := openT(t, dir)
	for i := range 8 {
		enqueue(t, s, fmt.Sprintf("r%d", i), strings.Repeat("x", 3*segAlign))
	}
	if err := s.Delete(context.Background(), "r3"); err != nil { // too little to reclaim now
		t.Fatal(err)
	}
	seg := filepath.Join(dir, "segments", segFiles(t, s)[0])
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir)
	s.segs.drainReclaims()
	// 7 bodies of 3 blocks are left of a 1 MiB segment.
	if got := allocated(t, seg); got > 7*3*segAlign {
		t.Errorf("segment holds %d bytes after reopen, want at most %d", got, 7*3*segAlign)
	}
	for _, id := range []string{"r0", "r2", "r4", "r7"} {
		if got := readBody(t, s, id); string(got) != strings.Repeat("x", 3*segAlign) {
			t.Fatalf("Body(%s) after reclaim differs", id)
		}
	}
	assertBodies(t, s)
}

// TestEnqueueAfterClose: a closed store refuses, and creates no segment.
func TestEnqueueAfterClose(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	e := &store.Envelope{ID: "late", Received: storetest.T0, Domains: map[string][]store.Recipient{"a.test": {{Addr: "u@a.test"}}}}
	if _, err := s.Enqueue(context.Background(), e, strings.NewReader("body")); err == nil {
		t.Fatal("Enqueue on a closed store succeeded")
	}
	if names, _ := os.ReadDir(filepath.Join(dir, "segments")); len(names) > 0 {
		t.Fatalf("segments created after Close: %v", names)
	}
}
