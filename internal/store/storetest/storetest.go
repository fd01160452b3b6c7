// Package storetest is the conformance suite that every store engine must
// pass: it checks what the store.Store interface promises, and nothing more.
//
// Times are a fixed fake clock (T0 and offsets from it); nothing sleeps.
// List cursors: the cursor that continues after a delivery d is
// d.ID + " " + d.Domain (see Cursor); every engine must accept it.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"backupmx/internal/store"
)

// T0 is the suite's fake "now".
var T0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

// Harness tells the suite how to get at an engine.
type Harness struct {
	// Open returns a new, empty store and arranges for it to be closed at
	// t's cleanup (a store may then be closed twice: Close must allow it).
	Open func(t *testing.T) store.Store
	// Reopen closes s (returned by Open or Reopen) and opens the same
	// queue again, as a restart would. Nil skips the persistence tests.
	Reopen func(t *testing.T, s store.Store) store.Store
}

// Cursor is the List cursor that continues after d.
func Cursor(d store.Delivery) string { return d.ID + " " + d.Domain }

// Run runs the suite against h.
func Run(t *testing.T, h Harness) {
	tests := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"EnqueueReturnsSize", testEnqueueSize},
		{"BodyRoundTrip", testBodyRoundTrip},
		{"OneDeliveryPerDomain", testDeliveriesPerDomain},
		{"EnvelopeRoundTrip", testEnvelopeRoundTrip},
		{"FailingBodyLeavesNothing", testFailingBody},
		{"BodyNotFound", testBodyNotFound},
		{"EnqueueDeferred", testEnqueueDeferred},
		{"ClaimNothingDue", testClaimNothingDue},
		{"ClaimOrderAndLimit", testClaimOrder},
		{"ClaimOldestDomainFirst", testClaimOldestDomain},
		{"LeaseExclusive", testLeaseExclusive},
		{"StaleTokenWritesNothing", testStaleToken},
		{"Renew", testRenew},
		{"ReleaseLease", testRelease},
		{"Complete", testComplete},
		{"CompleteNotAttempted", testCompleteNotAttempted},
		{"More", testMore},
		{"NextDue", testNextDue},
		{"Waiting", testWaiting},
		{"ListFilters", testListFilters},
		{"ListPagination", testListPagination},
		{"Flush", testFlush},
		{"HoldUnhold", testHoldUnhold},
		{"Delete", testDelete},
		{"Persistence", testPersistence},
		{"ConcurrentEnqueue", testConcurrentEnqueue},
		{"ConcurrentClaims", testConcurrentClaims},
		{"ConcurrentTakeover", testConcurrentTakeover},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, h) })
	}
}

// ---- helpers ----

func ctx() context.Context { return context.Background() }

// env builds an envelope received at recv; domains maps a domain to its
// recipients' local parts.
func env(id string, recv time.Time, domains map[string][]string) *store.Envelope {
	e := &store.Envelope{ID: id, Sender: "sender@example.org", Received: recv, Domains: map[string][]store.Recipient{}}
	for dom, locals := range domains {
		for _, l := range locals {
			e.Domains[dom] = append(e.Domains[dom], store.Recipient{Addr: l + "@" + dom})
		}
	}
	return e
}

func enqueue(t *testing.T, s store.Store, e *store.Envelope, body string) {
	t.Helper()
	n, err := s.Enqueue(ctx(), e, bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatalf("Enqueue(%s): %v", e.ID, err)
	}
	if n != int64(len(body)) {
		t.Fatalf("Enqueue(%s) = %d, want %d", e.ID, n, len(body))
	}
}

// simple enqueues one message with one recipient at dom, received at recv.
func simple(t *testing.T, s store.Store, id, dom string, recv time.Time) {
	t.Helper()
	enqueue(t, s, env(id, recv, map[string][]string{dom: {"u"}}), "Subject: "+id+"\r\n\r\nhi\r\n")
}

func listAll(t *testing.T, s store.Store, f store.Filter) []store.Delivery {
	t.Helper()
	var all []store.Delivery
	p := store.Page{Limit: 7}
	for {
		ds, err := s.List(ctx(), f, p)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if len(ds) > p.Limit {
			t.Fatalf("List returned %d > limit %d", len(ds), p.Limit)
		}
		all = append(all, ds...)
		if len(ds) < p.Limit {
			return all
		}
		p.After = Cursor(ds[len(ds)-1])
	}
}

func keys(ds []store.Delivery) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.ID+"/"+d.Domain)
	}
	return out
}

func ids(ds []store.Delivery) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.ID)
	}
	return out
}

func get(t *testing.T, s store.Store, id, dom string) (store.Delivery, bool) {
	t.Helper()
	ds, err := s.List(ctx(), store.Filter{ID: id, Domain: dom}, store.Page{Limit: 10})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(ds) > 1 {
		t.Fatalf("List(%s, %s) = %v", id, dom, keys(ds))
	}
	if len(ds) == 0 {
		return store.Delivery{}, false
	}
	return ds[0], true
}

func mustGet(t *testing.T, s store.Store, id, dom string) store.Delivery {
	t.Helper()
	d, ok := get(t, s, id, dom)
	if !ok {
		t.Fatalf("delivery %s/%s missing", id, dom)
	}
	return d
}

func readBody(t *testing.T, s store.Store, id string) []byte {
	t.Helper()
	rc, err := s.Body(ctx(), id)
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

func claim(t *testing.T, s store.Store, owner string, now time.Time, limit int) (*store.Lease, []store.Delivery) {
	t.Helper()
	l, ds, err := s.Claim(ctx(), owner, now, time.Minute, limit)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	if l == nil && ds != nil {
		t.Fatalf("Claim: no lease but deliveries %v", keys(ds))
	}
	return l, ds
}

func mustClaim(t *testing.T, s store.Store, owner string, now time.Time, limit int) (*store.Lease, []store.Delivery) {
	t.Helper()
	l, ds := claim(t, s, owner, now, limit)
	if l == nil {
		t.Fatalf("Claim(%s, %v): nothing due", owner, now)
	}
	if l.Owner != owner || !l.Expires.Equal(now.Add(time.Minute)) {
		t.Fatalf("lease = %+v, want owner %s expiring %v", l, owner, now.Add(time.Minute))
	}
	if len(ds) == 0 {
		t.Fatalf("Claim: lease on %s with no deliveries", l.Domain)
	}
	for _, d := range ds {
		if d.Domain != l.Domain {
			t.Fatalf("Claim: lease on %s returned delivery for %s", l.Domain, d.Domain)
		}
	}
	return l, ds
}

func complete(t *testing.T, s store.Store, l *store.Lease, rs ...store.Result) {
	t.Helper()
	if err := s.Complete(ctx(), l, rs); err != nil {
		t.Fatalf("Complete: %v", err)
	}
}

func assertEmpty(t *testing.T, s store.Store) {
	t.Helper()
	if ds := listAll(t, s, store.Filter{}); len(ds) != 0 {
		t.Fatalf("List = %v, want empty", keys(ds))
	}
	if _, ok, err := s.NextDue(ctx()); err != nil || ok {
		t.Fatalf("NextDue: ok=%v err=%v, want nothing", ok, err)
	}
}

// ---- tests ----

func testEnqueueSize(t *testing.T, h Harness) {
	s := h.Open(t)
	for i, body := range []string{"", "x", "Subject: hi\r\n\r\nbody\r\n"} {
		e := env(fmt.Sprintf("size%d", i), T0, map[string][]string{"a.test": {"u"}})
		n, err := s.Enqueue(ctx(), e, bytes.NewReader([]byte(body)))
		if err != nil || n != int64(len(body)) {
			t.Fatalf("Enqueue(%q) = %d, %v", body, n, err)
		}
		if d := mustGet(t, s, e.ID, "a.test"); d.Size != n {
			t.Fatalf("Delivery.Size = %d, want %d", d.Size, n)
		}
	}
}

// chunkyReader returns its data in odd-sized reads.
type chunkyReader struct {
	data []byte
	rng  *rand.Rand
}

func (r *chunkyReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(r.data), 1+r.rng.IntN(100_000))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

func testBodyRoundTrip(t *testing.T, h Harness) {
	s := h.Open(t)
	rng := rand.New(rand.NewPCG(1, 2))
	binary := make([]byte, 0, 256*4+4)
	for range 4 {
		for b := range 256 {
			binary = append(binary, byte(b))
		}
	}
	binary = append(binary, "\r\n.\r"...) // no final newline, a dot line inside
	big := make([]byte, 5<<20+123)
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	bodies := map[string][]byte{
		"text":   []byte("Received: from x\r\nSubject: t\r\n\r\nline\r\n.\r\n..dot\r\n"),
		"utf8":   []byte("Subject: =?utf-8?q?x?=\r\n\r\nGrüße, 日本語 ✉\r\n"),
		"binary": binary,
		"big":    big,
	}
	for name, body := range bodies {
		e := env("body-"+name, T0, map[string][]string{"a.test": {"u"}, "b.test": {"v"}})
		n, err := s.Enqueue(ctx(), e, &chunkyReader{data: body, rng: rng})
		if err != nil || n != int64(len(body)) {
			t.Fatalf("%s: Enqueue = %d, %v; want %d", name, n, err, len(body))
		}
	}
	for name, body := range bodies {
		rc, err := s.Body(ctx(), "body-"+name)
		if err != nil {
			t.Fatalf("%s: Body: %v", name, err)
		}
		hw := sha256.New()
		n, err := io.Copy(hw, rc)
		rc.Close()
		if err != nil || n != int64(len(body)) {
			t.Fatalf("%s: read %d bytes, %v; want %d", name, n, err, len(body))
		}
		if want := sha256.Sum256(body); !bytes.Equal(hw.Sum(nil), want[:]) {
			t.Fatalf("%s: body differs after round trip", name)
		}
	}
}

func testDeliveriesPerDomain(t *testing.T, h Harness) {
	s := h.Open(t)
	recv := T0.Add(-3 * time.Minute)
	e := env("multi", recv, map[string][]string{
		"a.test": {"u1", "u2"},
		"b.test": {"v"},
		"c.test": {"w1", "w2", "w3"},
	})
	enqueue(t, s, e, "body")
	ds := listAll(t, s, store.Filter{})
	if got, want := keys(ds), []string{"multi/a.test", "multi/b.test", "multi/c.test"}; !slices.Equal(got, want) {
		t.Fatalf("deliveries = %v, want %v", got, want)
	}
	for _, d := range ds {
		if !reflect.DeepEqual(d.Recipients, e.Domains[d.Domain]) {
			t.Errorf("%s: recipients = %+v, want %+v", d.Domain, d.Recipients, e.Domains[d.Domain])
		}
		if !d.NextAttempt.Equal(recv) || d.Attempts != 0 || d.Held || d.LastError != "" || d.Size != 4 {
			t.Errorf("%s: fresh delivery = %+v", d.Domain, d)
		}
		if d.State() != "queued" {
			t.Errorf("%s: State = %q", d.Domain, d.State())
		}
		if d.Envelope.Domains != nil {
			t.Errorf("%s: Envelope.Domains = %v, want nil", d.Domain, d.Envelope.Domains)
		}
	}
	// All three are due, each under its own lease.
	seen := map[string]bool{}
	for i := range 3 {
		l, ds := mustClaim(t, s, fmt.Sprintf("w%d", i), T0, 10)
		if seen[l.Domain] || len(ds) != 1 {
			t.Fatalf("claim %d: domain %s again or %d deliveries", i, l.Domain, len(ds))
		}
		seen[l.Domain] = true
	}
	if l, _ := claim(t, s, "w9", T0, 10); l != nil {
		t.Fatalf("fourth claim got %s", l.Domain)
	}
}

func testEnvelopeRoundTrip(t *testing.T, h Harness) {
	s := h.Open(t)
	e := &store.Envelope{
		ID:       "envrt",
		Sender:   "bücher@例え.test",
		Received: time.Date(2026, 1, 1, 11, 59, 58, 123456789, time.UTC),
		Client:   store.Client{Addr: "2001:db8::25", Name: "mx.sender.test", HELO: "mx.sender.test", Proto: "UTF8SMTPS"},
		Body:     "8BITMIME",
		UTF8:     true,
		Ret:      "HDRS",
		EnvID:    "QQ314159",
		Notice:   true,
		Domains: map[string][]store.Recipient{
			"a.test": {
				{Addr: "one@a.test", Notify: "FAILURE,DELAY", ORcpt: "rfc822;one@a.test"},
				{Addr: "two@a.test", Notify: "NEVER"},
			},
			"xn--r8jz45g.test": {{Addr: "ü@xn--r8jz45g.test", ORcpt: "utf-8;\u00fc@\u4f8b\u3048.test"}},
		},
	}
	enqueue(t, s, e, "x")
	want := *e
	want.Domains = nil
	for dom, rcpts := range e.Domains {
		d := mustGet(t, s, "envrt", dom)
		if !reflect.DeepEqual(d.Recipients, rcpts) {
			t.Errorf("%s: recipients = %+v, want %+v", dom, d.Recipients, rcpts)
		}
		got := d.Envelope
		if !got.Received.Equal(want.Received) {
			t.Errorf("Received = %v, want %v", got.Received, want.Received)
		}
		got.Received = want.Received
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: envelope = %+v\nwant %+v", dom, got, want)
		}
		if !d.NextAttempt.Equal(e.Received) {
			t.Errorf("%s: NextAttempt = %v, want %v", dom, d.NextAttempt, e.Received)
		}
	}
	// Null sender.
	n := env("nullsender", T0, map[string][]string{"a.test": {"u"}})
	n.Sender = ""
	enqueue(t, s, n, "x")
	if d := mustGet(t, s, "nullsender", "a.test"); d.Envelope.Sender != "" {
		t.Errorf("null sender came back as %q", d.Envelope.Sender)
	}
}

var errBoom = errors.New("storetest: reader failed")

type failingReader struct{ left int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, errBoom
	}
	n := min(len(p), r.left)
	for i := range p[:n] {
		p[i] = 'x'
	}
	r.left -= n
	return n, nil
}

func testFailingBody(t *testing.T, h Harness) {
	s := h.Open(t)
	e := env("failing", T0, map[string][]string{"a.test": {"u"}, "b.test": {"v"}})
	if _, err := s.Enqueue(ctx(), e, &failingReader{left: 300_000}); !errors.Is(err, errBoom) {
		t.Fatalf("Enqueue err = %v, want the reader's error", err)
	}
	assertEmpty(t, s)
	if _, err := s.Body(ctx(), "failing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Body after failed Enqueue: %v, want ErrNotFound", err)
	}
	if l, _ := claim(t, s, "w", T0.Add(time.Hour), 10); l != nil {
		t.Fatalf("claimed %s after failed Enqueue", l.Domain)
	}
	// The id is free again.
	simple(t, s, "failing", "a.test", T0)
}

func testBodyNotFound(t *testing.T, h Harness) {
	s := h.Open(t)
	if _, err := s.Body(ctx(), "nosuchid"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Body(unknown) = %v, want ErrNotFound", err)
	}
}

func testClaimNothingDue(t *testing.T, h Harness) {
	s := h.Open(t)
	if l, ds, err := s.Claim(ctx(), "w", T0, time.Minute, 10); l != nil || ds != nil || err != nil {
		t.Fatalf("Claim on empty store = %v, %v, %v", l, ds, err)
	}
	simple(t, s, "m1", "a.test", T0)
	if l, _ := claim(t, s, "w", T0.Add(-time.Second), 10); l != nil {
		t.Fatalf("claimed %s before it was due", l.Domain)
	}
	if _, ds := mustClaim(t, s, "w", T0, 10); !slices.Equal(ids(ds), []string{"m1"}) {
		t.Fatalf("Claim at due time = %v", ids(ds))
	}
}

// A domain in Envelope.Deferred starts as one failed attempt, due at its
// Next; the message's other domains are due at arrival as usual.
func testEnqueueDeferred(t *testing.T, h Harness) {
	s := h.Open(t)
	e := env("m1", T0, map[string][]string{"down.test": {"a"}, "up.test": {"b"}})
	later := T0.Add(10 * time.Minute)
	e.Deferred = map[string]store.Deferral{"down.test": {Next: later, Error: "primary down"}}
	enqueue(t, s, e, "body\r\n")
	ds, err := s.List(ctx(), store.Filter{}, store.Page{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]store.Delivery{}
	for _, d := range ds {
		got[d.Domain] = d
	}
	if d := got["down.test"]; d.Attempts != 1 || !d.NextAttempt.Equal(later) || d.LastError != "primary down" {
		t.Fatalf("deferred delivery = attempts %d next %v error %q", d.Attempts, d.NextAttempt, d.LastError)
	}
	if d := got["up.test"]; d.Attempts != 0 || !d.NextAttempt.Equal(T0) || d.LastError != "" {
		t.Fatalf("other delivery = attempts %d next %v error %q", d.Attempts, d.NextAttempt, d.LastError)
	}
	l, ds := mustClaim(t, s, "w", T0, 10)
	if l.Domain != "up.test" || len(ds) != 1 {
		t.Fatalf("Claim at arrival = %s %v, want up.test only", l.Domain, ids(ds))
	}
	if err := s.ReleaseLease(ctx(), l); err != nil {
		t.Fatal(err)
	}
	if l, _ := claim(t, s, "w2", later.Add(-time.Second), 10); l != nil && l.Domain == "down.test" {
		t.Fatal("deferred domain claimed before its Next")
	}
	if n, err := s.Flush(ctx(), store.Filter{Domain: "down.test"}, T0); err != nil || n != 1 {
		t.Fatalf("Flush(down.test) = %d, %v; want 1", n, err)
	}
	if l, ds := mustClaim(t, s, "w3", T0, 10); l.Domain != "down.test" || ds[0].Attempts != 1 {
		t.Fatalf("after flush: claimed %s %+v", l.Domain, ds)
	}
}

func testClaimOrder(t *testing.T, h Harness) {
	s := h.Open(t)
	// Enqueued out of order; the last one is not due yet.
	simple(t, s, "m3", "a.test", T0.Add(-1*time.Minute))
	simple(t, s, "m1", "a.test", T0.Add(-3*time.Minute))
	simple(t, s, "m4", "a.test", T0.Add(time.Minute))
	simple(t, s, "m2", "a.test", T0.Add(-2*time.Minute))
	l, ds := mustClaim(t, s, "w", T0, 2)
	if !slices.Equal(ids(ds), []string{"m1", "m2"}) {
		t.Fatalf("Claim(limit 2) = %v, want [m1 m2]", ids(ds))
	}
	more, err := s.More(ctx(), l, T0, 10, ids(ds))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(more), []string{"m3"}) {
		t.Fatalf("More = %v, want [m3] (m4 not due)", ids(more))
	}
}

func testClaimOldestDomain(t *testing.T, h Harness) {
	s := h.Open(t)
	simple(t, s, "m1", "late.test", T0.Add(-1*time.Minute))
	simple(t, s, "m2", "early.test", T0.Add(-5*time.Minute))
	simple(t, s, "m3", "middle.test", T0.Add(-3*time.Minute))
	var got []string
	for i := range 3 {
		l, _ := mustClaim(t, s, fmt.Sprintf("w%d", i), T0, 10)
		got = append(got, l.Domain)
	}
	if want := []string{"early.test", "middle.test", "late.test"}; !slices.Equal(got, want) {
		t.Fatalf("claim order = %v, want %v", got, want)
	}
}

func testLeaseExclusive(t *testing.T, h Harness) {
	s := h.Open(t)
	simple(t, s, "m1", "a.test", T0)
	la, _ := mustClaim(t, s, "A", T0, 10)
	for _, now := range []time.Time{T0, T0.Add(30 * time.Second), T0.Add(time.Minute - time.Nanosecond)} {
		if l, _ := claim(t, s, "B", now, 10); l != nil {
			t.Fatalf("B claimed %s at %v while A's lease lives", l.Domain, now)
		}
	}
	// Not even A gets a second lease on the same domain.
	if l, _ := claim(t, s, "A", T0, 10); l != nil {
		t.Fatalf("A claimed %s twice", l.Domain)
	}
	lb, ds := mustClaim(t, s, "B", T0.Add(time.Minute+time.Second), 10)
	if lb.Domain != "a.test" || len(ds) != 1 {
		t.Fatalf("after expiry B got %+v %v", lb, ids(ds))
	}
	if lb.Token <= la.Token {
		t.Fatalf("token did not increase: A %d, B %d", la.Token, lb.Token)
	}
}

func testStaleToken(t *testing.T, h Harness) {
	s := h.Open(t)
	simple(t, s, "m1", "a.test", T0)
	la, _ := mustClaim(t, s, "A", T0, 10)
	later := T0.Add(2 * time.Minute)
	lb, _ := mustClaim(t, s, "B", later, 10)
	before := mustGet(t, s, "m1", "a.test")

	err := s.Complete(ctx(), la, []store.Result{{ID: "m1", Delivered: []string{"u@a.test"}, Attempted: true}})
	if !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("stale Complete = %v, want ErrLeaseLost", err)
	}
	err = s.Complete(ctx(), la, []store.Result{{ID: "m1", Next: T0.Add(time.Hour), LastError: "stale", Attempted: true}})
	if !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("stale Complete = %v, want ErrLeaseLost", err)
	}
	if err := s.Renew(ctx(), la, later, time.Minute); !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("stale Renew = %v, want ErrLeaseLost", err)
	}
	if after := mustGet(t, s, "m1", "a.test"); !reflect.DeepEqual(after, before) {
		t.Fatalf("stale writes changed the delivery:\n%+v\nwas\n%+v", after, before)
	}
	readBody(t, s, "m1")
	// Releasing the stale lease does not release B's.
	if err := s.ReleaseLease(ctx(), la); err != nil {
		t.Fatalf("ReleaseLease(stale) = %v", err)
	}
	if l, _ := claim(t, s, "C", later, 10); l != nil {
		t.Fatalf("C claimed %s: stale release freed B's lease", l.Domain)
	}
	// B's lease still works.
	if err := s.Renew(ctx(), lb, later, time.Minute); err != nil {
		t.Fatalf("B Renew: %v", err)
	}
	complete(t, s, lb, store.Result{ID: "m1", Delivered: []string{"u@a.test"}, Attempted: true})
	assertEmpty(t, s)
}

func testRenew(t *testing.T, h Harness) {
	s := h.Open(t)
	simple(t, s, "m1", "a.test", T0)
	la, _ := mustClaim(t, s, "A", T0, 10) // expires T0+1m
	if err := s.Renew(ctx(), la, T0.Add(30*time.Second), time.Minute); err != nil {
		t.Fatalf("Renew: %v", err) // now expires T0+1m30s
	}
	if l, _ := claim(t, s, "B", T0.Add(80*time.Second), 10); l != nil {
		t.Fatalf("B claimed %s before the renewed lease expired", l.Domain)
	}
	lb, _ := mustClaim(t, s, "B", T0.Add(91*time.Second), 10)
	if lb.Token <= la.Token {
		t.Fatalf("token did not increase: %d then %d", la.Token, lb.Token)
	}
}

func testRelease(t *testing.T, h Harness) {
	s := h.Open(t)
	simple(t, s, "m1", "a.test", T0)
	la, _ := mustClaim(t, s, "A", T0, 10)
	if err := s.ReleaseLease(ctx(), la); err != nil {
		t.Fatalf("ReleaseLease: %v", err)
	}
	if err := s.ReleaseLease(ctx(), la); err != nil {
		t.Fatalf("second ReleaseLease: %v", err)
	}
	lb, _ := mustClaim(t, s, "B", T0, 10)
	if lb.Token <= la.Token {
		t.Fatalf("token did not increase after release: %d then %d", la.Token, lb.Token)
	}
	if err := s.Complete(ctx(), la, []store.Result{{ID: "m1", Delivered: []string{"u@a.test"}}}); !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("Complete on released lease = %v, want ErrLeaseLost", err)
	}
}

func testComplete(t *testing.T, h Harness) {
	s := h.Open(t)
	e := env("m1", T0, map[string][]string{"a.test": {"r1", "r2", "r3"}, "b.test": {"s1"}})
	enqueue(t, s, e, "the body")
	simple(t, s, "m2", "a.test", T0)

	l, ds := mustClaim(t, s, "A", T0, 10)
	if l.Domain != "a.test" || !slices.Equal(ids(ds), []string{"m1", "m2"}) {
		t.Fatalf("claimed %s %v", l.Domain, ids(ds))
	}
	next := T0.Add(10 * time.Minute)
	complete(t, s, l,
		store.Result{ID: "m1", Delivered: []string{"r1@a.test"}, Failed: []string{"r2@a.test"},
			Next: next, LastError: "451 4.3.0 try later", Attempted: true},
		store.Result{ID: "m2", Next: next, LastError: "connection refused", Attempted: true},
	)
	d := mustGet(t, s, "m1", "a.test")
	if !reflect.DeepEqual(d.Recipients, []store.Recipient{{Addr: "r3@a.test"}}) {
		t.Fatalf("recipients left = %+v, want r3 only", d.Recipients)
	}
	if d.Attempts != 1 || !d.NextAttempt.Equal(next) || d.LastError != "451 4.3.0 try later" {
		t.Fatalf("after attempt: %+v", d)
	}
	if d2 := mustGet(t, s, "m2", "a.test"); d2.Attempts != 1 || d2.LastError != "connection refused" || len(d2.Recipients) != 1 {
		t.Fatalf("m2 after attempt: %+v", d2)
	}
	if d := mustGet(t, s, "m1", "b.test"); d.Attempts != 0 || !d.NextAttempt.Equal(T0) {
		t.Fatalf("other domain touched: %+v", d)
	}
	// Nothing more due in a.test before next.
	if more, err := s.More(ctx(), l, T0, 10, nil); err != nil || len(more) != 0 {
		t.Fatalf("More = %v, %v; want none", ids(more), err)
	}

	// The last recipient of a.test: that delivery goes, the message stays.
	complete(t, s, l, store.Result{ID: "m1", Delivered: []string{"r3@a.test"}, Attempted: true})
	if _, ok := get(t, s, "m1", "a.test"); ok {
		t.Fatal("delivery with no recipients left still listed")
	}
	if b := readBody(t, s, "m1"); string(b) != "the body" {
		t.Fatalf("body of a message with a delivery left = %q", b)
	}
	if err := s.ReleaseLease(ctx(), l); err != nil {
		t.Fatal(err)
	}

	// The last delivery: the message and its body go.
	lb, ds := mustClaim(t, s, "B", T0, 10)
	if lb.Domain != "b.test" || !slices.Equal(ids(ds), []string{"m1"}) {
		t.Fatalf("claimed %s %v, want b.test [m1]", lb.Domain, ids(ds))
	}
	complete(t, s, lb, store.Result{ID: "m1", Failed: []string{"s1@b.test"}, Attempted: true})
	if ds := listAll(t, s, store.Filter{ID: "m1"}); len(ds) != 0 {
		t.Fatalf("m1 still listed: %v", keys(ds))
	}
	if _, err := s.Body(ctx(), "m1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Body of a finished message = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx(), "m1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Delete of a finished message = %v, want ErrNotFound", err)
	}
	if got := keys(listAll(t, s, store.Filter{})); !slices.Equal(got, []string{"m2/a.test"}) {
		t.Fatalf("left = %v", got)
	}
}

func testCompleteNotAttempted(t *testing.T, h Harness) {
	s := h.Open(t)
	simple(t, s, "m1", "a.test", T0)
	l, _ := mustClaim(t, s, "A", T0, 10)
	complete(t, s, l, store.Result{ID: "m1", Next: T0.Add(time.Hour), LastError: "domain down", Attempted: false})
	d := mustGet(t, s, "m1", "a.test")
	if d.Attempts != 0 || !d.NextAttempt.Equal(T0.Add(time.Hour)) || d.LastError != "domain down" {
		t.Fatalf("after skipped attempt: %+v", d)
	}
	complete(t, s, l, store.Result{ID: "m1", Next: T0.Add(2 * time.Hour), LastError: "x", Attempted: true})
	complete(t, s, l, store.Result{ID: "m1", Next: T0.Add(3 * time.Hour), LastError: "y", Attempted: true})
	if d := mustGet(t, s, "m1", "a.test"); d.Attempts != 2 || d.LastError != "y" || !d.NextAttempt.Equal(T0.Add(3*time.Hour)) {
		t.Fatalf("after two attempts: %+v", d)
	}
	// An empty Complete is fine.
	complete(t, s, l)
}

func testMore(t *testing.T, h Harness) {
	s := h.Open(t)
	for i := range 7 {
		simple(t, s, fmt.Sprintf("m%d", i), "a.test", T0.Add(time.Duration(i)*time.Second))
	}
	simple(t, s, "other", "b.test", T0.Add(-time.Hour))
	l, ds := mustClaim(t, s, "A", T0.Add(time.Hour), 2)
	if l.Domain != "b.test" {
		t.Fatalf("first claim got %s", l.Domain)
	}
	l, ds = mustClaim(t, s, "A", T0.Add(time.Hour), 2)
	if l.Domain != "a.test" || !slices.Equal(ids(ds), []string{"m0", "m1"}) {
		t.Fatalf("Claim = %s %v", l.Domain, ids(ds))
	}
	working := ids(ds)
	more, err := s.More(ctx(), l, T0.Add(time.Hour), 3, working)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(more), []string{"m2", "m3", "m4"}) {
		t.Fatalf("More(limit 3) = %v", ids(more))
	}
	// Skip need not be a prefix.
	more, err = s.More(ctx(), l, T0.Add(time.Hour), 10, []string{"m0", "m3", "m5"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(more), []string{"m1", "m2", "m4", "m6"}) {
		t.Fatalf("More(skip m0 m3 m5) = %v", ids(more))
	}
	// Only what is due at now.
	more, err = s.More(ctx(), l, T0.Add(3*time.Second), 10, working)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(more), []string{"m2", "m3"}) {
		t.Fatalf("More(now T0+3s) = %v", ids(more))
	}
}

func testNextDue(t *testing.T, h Harness) {
	s := h.Open(t)
	if _, ok, err := s.NextDue(ctx()); ok || err != nil {
		t.Fatalf("NextDue on empty store: ok=%v err=%v", ok, err)
	}
	simple(t, s, "m1", "a.test", T0.Add(5*time.Minute))
	simple(t, s, "m2", "b.test", T0.Add(2*time.Minute))
	simple(t, s, "m3", "c.test", T0.Add(time.Minute))
	if n, err := s.Hold(ctx(), store.Filter{ID: "m3"}); err != nil || n != 1 {
		t.Fatalf("Hold = %d, %v", n, err)
	}
	due, ok, err := s.NextDue(ctx())
	if err != nil || !ok || !due.Equal(T0.Add(2*time.Minute)) {
		t.Fatalf("NextDue = %v %v %v, want T0+2m (held m3 ignored)", due, ok, err)
	}
	if n, err := s.Hold(ctx(), store.Filter{}); err != nil || n != 2 {
		t.Fatalf("Hold(all) = %d, %v; want 2", n, err)
	}
	if _, ok, err := s.NextDue(ctx()); ok || err != nil {
		t.Fatalf("NextDue with everything held: ok=%v err=%v", ok, err)
	}
}

func testWaiting(t *testing.T, h Harness) {
	s := h.Open(t)
	if w, err := s.Waiting(ctx(), T0); err != nil || len(w) != 0 {
		t.Fatalf("Waiting on empty store = %v, %v", w, err)
	}
	simple(t, s, "m1", "due.test", T0.Add(-time.Minute))
	simple(t, s, "m2", "later.test", T0.Add(time.Minute))
	simple(t, s, "m3", "held.test", T0.Add(time.Minute))
	simple(t, s, "m4", "mixed.test", T0.Add(-time.Minute))
	simple(t, s, "m5", "mixed.test", T0.Add(time.Hour))
	simple(t, s, "m6", "later.test", T0.Add(2*time.Minute))
	if _, err := s.Hold(ctx(), store.Filter{Domain: "held.test"}); err != nil {
		t.Fatal(err)
	}
	w, err := s.Waiting(ctx(), T0)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(w)
	if want := []string{"later.test", "mixed.test"}; !slices.Equal(w, want) {
		t.Fatalf("Waiting = %v, want %v", w, want)
	}
	w, err = s.Waiting(ctx(), T0.Add(2*time.Hour))
	if err != nil || len(w) != 0 {
		t.Fatalf("Waiting when all due = %v, %v", w, err)
	}
}

func seedList(t *testing.T, s store.Store) {
	t.Helper()
	for i := range 5 {
		enqueue(t, s, env(fmt.Sprintf("L%d", i), T0, map[string][]string{"a.test": {"u"}, "b.test": {"v"}}), "x")
	}
	enqueue(t, s, env("L9", T0, map[string][]string{"c.test": {"w"}}), "x")
}

func testListFilters(t *testing.T, h Harness) {
	s := h.Open(t)
	seedList(t, s)
	cases := []struct {
		f    store.Filter
		want []string
	}{
		{store.Filter{ID: "L2"}, []string{"L2/a.test", "L2/b.test"}},
		{store.Filter{Domain: "b.test"}, []string{"L0/b.test", "L1/b.test", "L2/b.test", "L3/b.test", "L4/b.test"}},
		{store.Filter{ID: "L3", Domain: "a.test"}, []string{"L3/a.test"}},
		{store.Filter{ID: "L9", Domain: "a.test"}, nil},
		{store.Filter{ID: "nope"}, nil},
		{store.Filter{Domain: "nope.test"}, nil},
	}
	for _, c := range cases {
		if got := keys(listAll(t, s, c.f)); !slices.Equal(got, c.want) {
			t.Errorf("List(%+v) = %v, want %v", c.f, got, c.want)
		}
	}
}

func testListPagination(t *testing.T, h Harness) {
	s := h.Open(t)
	seedList(t, s)
	want := []string{"L0/a.test", "L0/b.test", "L1/a.test", "L1/b.test", "L2/a.test", "L2/b.test",
		"L3/a.test", "L3/b.test", "L4/a.test", "L4/b.test", "L9/c.test"}
	var got []string
	p := store.Page{Limit: 3}
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
		ds, err := s.List(ctx(), store.Filter{}, p)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) > 3 {
			t.Fatalf("page of %d > limit 3", len(ds))
		}
		if len(ds) == 0 {
			break
		}
		got = append(got, keys(ds)...)
		p.After = Cursor(ds[len(ds)-1])
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paged List = %v\nwant %v", got, want)
	}
	// A cursor in the middle of a message, with a filter.
	ds, err := s.List(ctx(), store.Filter{Domain: "b.test"}, store.Page{After: "L1 a.test", Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	if got := keys(ds); !slices.Equal(got, []string{"L1/b.test", "L2/b.test"}) {
		t.Fatalf("List(after L1 a.test, b.test) = %v", got)
	}
}

func testFlush(t *testing.T, h Harness) {
	s := h.Open(t)
	later := T0.Add(time.Hour)
	enqueue(t, s, env("f1", later, map[string][]string{"a.test": {"u"}, "b.test": {"v"}}), "x")
	enqueue(t, s, env("f2", later, map[string][]string{"a.test": {"u"}}), "x")
	enqueue(t, s, env("f3", later, map[string][]string{"b.test": {"u"}, "c.test": {"v"}}), "x")
	enqueue(t, s, env("f4", later, map[string][]string{"a.test": {"u"}}), "x")
	if n, err := s.Hold(ctx(), store.Filter{ID: "f4"}); err != nil || n != 1 {
		t.Fatalf("Hold = %d, %v", n, err)
	}
	if l, _ := claim(t, s, "w", T0, 10); l != nil {
		t.Fatalf("claimed %s before flush", l.Domain)
	}
	dueNow := func(id, dom string) bool {
		d := mustGet(t, s, id, dom)
		return !d.NextAttempt.After(T0)
	}

	// One domain.
	if n, err := s.Flush(ctx(), store.Filter{Domain: "a.test"}, T0); err != nil || n != 2 {
		t.Fatalf("Flush(a.test) = %d, %v; want 2 (held f4 excluded)", n, err)
	}
	if !dueNow("f1", "a.test") || !dueNow("f2", "a.test") || dueNow("f1", "b.test") {
		t.Fatal("Flush(domain) flushed the wrong deliveries")
	}
	if d := mustGet(t, s, "f4", "a.test"); !d.Held || !d.NextAttempt.Equal(later) {
		t.Fatalf("held delivery touched by Flush: %+v", d)
	}
	// One message.
	if n, err := s.Flush(ctx(), store.Filter{ID: "f3"}, T0); err != nil || n != 2 {
		t.Fatalf("Flush(f3) = %d, %v; want 2", n, err)
	}
	if !dueNow("f3", "b.test") || !dueNow("f3", "c.test") || dueNow("f1", "b.test") {
		t.Fatal("Flush(id) flushed the wrong deliveries")
	}
	// Everything: only f1/b.test was still waiting.
	if n, err := s.Flush(ctx(), store.Filter{}, T0); err != nil || n != 1 {
		t.Fatalf("Flush(all) = %d, %v; want 1 (the others are due already)", n, err)
	}
	// Due already: nothing to do, and nothing moves later.
	if n, err := s.Flush(ctx(), store.Filter{}, T0.Add(time.Minute)); err != nil || n != 0 {
		t.Fatalf("second Flush(all) = %d, %v; want 0", n, err)
	}
	if !dueNow("f1", "b.test") || mustGet(t, s, "f4", "a.test").NextAttempt.Before(later) {
		t.Fatal("Flush(all) wrong")
	}
	got := map[string]bool{}
	for range 4 { // bounded: an engine that hands out one domain twice must not hang the suite
		l, _ := claim(t, s, "w", T0, 10)
		if l == nil {
			break
		}
		got[l.Domain] = true
	}
	if len(got) != 3 {
		t.Fatalf("after flush claimed %v, want a, b and c", got)
	}
	if n, err := s.Flush(ctx(), store.Filter{ID: "nope"}, T0); err != nil || n != 0 {
		t.Fatalf("Flush(unknown) = %d, %v", n, err)
	}
}

func testHoldUnhold(t *testing.T, h Harness) {
	s := h.Open(t)
	enqueue(t, s, env("h1", T0, map[string][]string{"a.test": {"u"}, "b.test": {"v"}}), "x")
	simple(t, s, "h2", "a.test", T0)
	if n, err := s.Hold(ctx(), store.Filter{ID: "h1"}); err != nil || n != 2 {
		t.Fatalf("Hold(h1) = %d, %v; want 2", n, err)
	}
	if n, err := s.Hold(ctx(), store.Filter{ID: "h1"}); err != nil || n != 0 {
		t.Fatalf("Hold(h1) again = %d, %v; want 0 changed", n, err)
	}
	if d := mustGet(t, s, "h1", "b.test"); !d.Held || d.State() != "held" {
		t.Fatalf("not held: %+v", d)
	}
	// Held work is never claimed, however late.
	far := T0.Add(100 * 24 * time.Hour)
	l, ds := mustClaim(t, s, "w", far, 10)
	if l.Domain != "a.test" || !slices.Equal(ids(ds), []string{"h2"}) {
		t.Fatalf("claimed %s %v", l.Domain, ids(ds))
	}
	if more, err := s.More(ctx(), l, far, 10, nil); err != nil || !slices.Equal(ids(more), []string{"h2"}) {
		t.Fatalf("More = %v, %v; held h1 must not appear", ids(more), err)
	}
	if l, _ := claim(t, s, "w2", far, 10); l != nil {
		t.Fatalf("claimed held %s", l.Domain)
	}
	// Hold by domain counts only the ones that changed.
	if n, err := s.Hold(ctx(), store.Filter{Domain: "a.test"}); err != nil || n != 1 {
		t.Fatalf("Hold(a.test) = %d, %v; want 1", n, err)
	}
	// Unhold makes them due at now.
	now := T0.Add(time.Hour)
	if n, err := s.Unhold(ctx(), store.Filter{Domain: "b.test"}, now); err != nil || n != 1 {
		t.Fatalf("Unhold(b.test) = %d, %v; want 1", n, err)
	}
	d := mustGet(t, s, "h1", "b.test")
	if d.Held || !d.NextAttempt.Equal(now) {
		t.Fatalf("after Unhold: %+v", d)
	}
	if mustGet(t, s, "h1", "a.test").Held != true {
		t.Fatal("Unhold(b.test) released a.test")
	}
	if n, err := s.Unhold(ctx(), store.Filter{}, now); err != nil || n != 2 {
		t.Fatalf("Unhold(all) = %d, %v; want 2", n, err)
	}
	if n, err := s.Unhold(ctx(), store.Filter{}, now); err != nil || n != 0 {
		t.Fatalf("Unhold(all) again = %d, %v; want 0", n, err)
	}
	lb, ds := mustClaim(t, s, "w3", now, 10)
	if lb.Domain != "b.test" || !slices.Equal(ids(ds), []string{"h1"}) {
		t.Fatalf("after Unhold claimed %s %v", lb.Domain, ids(ds))
	}
}

func testDelete(t *testing.T, h Harness) {
	s := h.Open(t)
	enqueue(t, s, env("d1", T0, map[string][]string{"a.test": {"u"}, "b.test": {"v"}}), "x")
	simple(t, s, "d2", "a.test", T0)
	if err := s.Delete(ctx(), "d1"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if ds := listAll(t, s, store.Filter{ID: "d1"}); len(ds) != 0 {
		t.Fatalf("deleted message listed: %v", keys(ds))
	}
	if _, err := s.Body(ctx(), "d1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Body(deleted) = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx(), "d1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Delete again = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx(), "never"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Delete(unknown) = %v, want ErrNotFound", err)
	}
	if got := keys(listAll(t, s, store.Filter{})); !slices.Equal(got, []string{"d2/a.test"}) {
		t.Fatalf("left = %v", got)
	}
	// Deleting a leased delivery: the holder's Complete then finds nothing to do.
	l, _ := mustClaim(t, s, "w", T0, 10)
	if err := s.Delete(ctx(), "d2"); err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(ctx(), l, []store.Result{{ID: "d2", Next: T0.Add(time.Hour), Attempted: true}}); err != nil {
		t.Fatalf("Complete after Delete: %v", err)
	}
	assertEmpty(t, s)
}

func testPersistence(t *testing.T, h Harness) {
	if h.Reopen == nil {
		t.Skip("engine has no Reopen")
	}
	s := h.Open(t)
	big := bytes.Repeat([]byte("0123456789abcdef\r\n"), 100_000)
	e := &store.Envelope{ID: "p1", Sender: "s@x.test", Received: T0, Body: "8BITMIME", EnvID: "E1",
		Domains: map[string][]store.Recipient{"a.test": {{Addr: "u@a.test", Notify: "NEVER"}}, "b.test": {{Addr: "v@b.test"}}}}
	if _, err := s.Enqueue(ctx(), e, bytes.NewReader(big)); err != nil {
		t.Fatal(err)
	}
	simple(t, s, "p2", "c.test", T0)
	simple(t, s, "p3", "a.test", T0)
	if err := s.Delete(ctx(), "p3"); err != nil {
		t.Fatal(err)
	}
	l, _ := mustClaim(t, s, "A", T0, 10)
	if l.Domain != "a.test" {
		t.Fatalf("claimed %s", l.Domain)
	}
	complete(t, s, l, store.Result{ID: "p1", Next: T0.Add(time.Hour), LastError: "451", Attempted: true})
	if _, err := s.Hold(ctx(), store.Filter{ID: "p2"}); err != nil {
		t.Fatal(err)
	}
	before := listAll(t, s, store.Filter{})

	s = h.Reopen(t, s)
	after := listAll(t, s, store.Filter{})
	if !reflect.DeepEqual(normalise(after), normalise(before)) {
		t.Fatalf("after reopen:\n%+v\nbefore:\n%+v", after, before)
	}
	if got := readBody(t, s, "p1"); !bytes.Equal(got, big) {
		t.Fatal("body differs after reopen")
	}
	if _, err := s.Body(ctx(), "p3"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted body after reopen: %v", err)
	}
	// Tokens keep increasing across restarts.
	l2, _ := mustClaim(t, s, "B", T0.Add(2*time.Hour), 10)
	if l2.Domain != "a.test" && l2.Domain != "b.test" {
		t.Fatalf("claimed %s", l2.Domain)
	}
	if l2.Domain == "a.test" && l2.Token <= l.Token {
		t.Fatalf("token after reopen %d <= %d", l2.Token, l.Token)
	}
	// And the reopened store takes new mail.
	simple(t, s, "p4", "d.test", T0)
	s = h.Reopen(t, s)
	mustGet(t, s, "p4", "d.test")
}

// normalise makes times comparable with DeepEqual.
func normalise(ds []store.Delivery) []store.Delivery {
	out := slices.Clone(ds)
	for i := range out {
		out[i].NextAttempt = out[i].NextAttempt.UTC()
		out[i].Envelope.Received = out[i].Envelope.Received.UTC()
	}
	return out
}

func testConcurrentEnqueue(t *testing.T, h Harness) {
	s := h.Open(t)
	const workers, each = 20, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := fmt.Sprintf("c%02d-%02d", w, i)
				dom := fmt.Sprintf("d%d.test", i%3)
				body := bytes.Repeat([]byte(id+"\r\n"), 100+w)
				e := env(id, T0.Add(time.Duration(w*each+i)*time.Millisecond), map[string][]string{dom: {"u"}, "all.test": {id}})
				n, err := s.Enqueue(ctx(), e, bytes.NewReader(body))
				if err == nil && n != int64(len(body)) {
					err = fmt.Errorf("%s: size %d, want %d", id, n, len(body))
				}
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ds := listAll(t, s, store.Filter{})
	if len(ds) != 2*workers*each {
		t.Fatalf("%d deliveries, want %d", len(ds), 2*workers*each)
	}
	for w := range workers {
		for i := range each {
			id := fmt.Sprintf("c%02d-%02d", w, i)
			if got, want := readBody(t, s, id), bytes.Repeat([]byte(id+"\r\n"), 100+w); !bytes.Equal(got, want) {
				t.Fatalf("%s: body differs", id)
			}
		}
	}
	if ds := listAll(t, s, store.Filter{Domain: "all.test"}); len(ds) != workers*each {
		t.Fatalf("all.test has %d deliveries, want %d", len(ds), workers*each)
	}
}
