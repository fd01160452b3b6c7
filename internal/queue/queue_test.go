package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"backupmx/internal/config"
	"backupmx/internal/relay"
	"backupmx/internal/store"
	"backupmx/internal/store/embedded"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// sent is one message a fake primary accepted.
type sent struct {
	domain, id, sender string
	rcpts              []string
	body               string
}

// fakeNet plays every primary and notice host: a domain is up or down, and a
// recipient may be given a fixed reply.
type fakeNet struct {
	mu                    sync.Mutex
	up                    map[string]bool
	replies               map[string]relay.Reply // recipient → reply instead of 250
	got                   []sent
	probes                int
	probeAt               []time.Time         // when each probe started
	noDSN                 bool                // the primaries do not support DSN
	onDial                func(domain string) // called (unlocked) before each dial
	refuse                int                 // refuse this many dials even to domains up
	onSend                func()              // called (unlocked) at the start of each Send
	silent                bool                // probes get no answer: they wait until their budget ends
	inFlight, maxInFlight int                 // probes under way, and the most at once
}

func newFakeNet() *fakeNet {
	return &fakeNet{up: map[string]bool{}, replies: map[string]relay.Reply{}}
}

func (n *fakeNet) setUp(domain string, up bool) {
	n.mu.Lock()
	n.up[domain] = up
	n.mu.Unlock()
}

func (n *fakeNet) received() []sent {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]sent(nil), n.got...)
}

func (n *fakeNet) Dial(ctx context.Context, domain string) (relay.Session, error) {
	if n.onDial != nil {
		n.onDial(domain)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.refuse > 0 {
		n.refuse--
		return nil, errors.New("dial tcp 127.0.0.1:2526: connect: connection refused")
	}
	if !n.up[domain] {
		return nil, errors.New("dial tcp 127.0.0.1:2526: connect: connection refused")
	}
	return &fakeSession{n: n, domain: domain}, nil
}

func (n *fakeNet) Probe(ctx context.Context, domain string) error {
	n.mu.Lock()
	n.probes++
	n.probeAt = append(n.probeAt, time.Now())
	silent := n.silent
	n.inFlight++
	n.maxInFlight = max(n.maxInFlight, n.inFlight)
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		n.inFlight--
		n.mu.Unlock()
	}()
	if silent { // a primary that drops SYNs
		<-ctx.Done()
		return ctx.Err()
	}
	s, err := n.Dial(ctx, domain)
	if err == nil {
		s.Close()
	}
	return err
}

type fakeSession struct {
	n      *fakeNet
	domain string
}

func (s *fakeSession) Host() string { return "127.0.0.1:2526" }
func (s *fakeSession) TLS() string  { return "" }
func (s *fakeSession) Close() error { return nil }
func (s *fakeSession) Send(ctx context.Context, d *store.Delivery, body io.Reader) (relay.Result, error) {
	if s.n.onSend != nil {
		s.n.onSend()
	}
	if err := ctx.Err(); err != nil { // like the real relay: cancelled means cut off
		return relay.Result{}, err
	}
	b, err := io.ReadAll(body)
	if err != nil {
		return relay.Result{}, err
	}
	s.n.mu.Lock()
	defer s.n.mu.Unlock()
	var res relay.Result
	var ok []string
	for _, r := range d.Recipients {
		rep, has := s.n.replies[r.Addr]
		switch {
		case !has:
			ok = append(ok, r.Addr)
		case rep.Permanent():
			res.Rejected = append(res.Rejected, relay.RcptStatus{Addr: r.Addr, Reply: rep})
		default:
			res.Deferred = append(res.Deferred, relay.RcptStatus{Addr: r.Addr, Reply: rep})
		}
	}
	res.NoDSN = s.n.noDSN
	if len(ok) > 0 {
		res.Accepted = ok
		s.n.got = append(s.n.got, sent{domain: s.domain, id: d.ID, sender: d.Envelope.Sender, rcpts: ok, body: string(b)})
	}
	return res, nil
}

type harness struct {
	t     *testing.T
	clock *fakeClock
	net   *fakeNet
	st    store.Store
	cfg   *config.Config
	s     *Scheduler
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newHarness(t *testing.T, extra string) *harness {
	t.Helper()
	cfg, err := config.Parse(`hostname = "mx-backup.test"
[store]
dir = "` + t.TempDir() + `"
[queue]
probe_interval = "50ms"
` + extra + `
[[domain]]
name = "example.test"
primary = ["127.0.0.1:2526"]
[[domain]]
name = "other.test"
primary = ["127.0.0.1:2527"]
`)
	if err != nil {
		t.Fatal(err)
	}
	st, err := embedded.Open(cfg.Store.Dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h := &harness{t: t, clock: &fakeClock{t: t0}, net: newFakeNet(), st: st, cfg: cfg}
	h.s = &Scheduler{Store: st, Dialer: h.net, Config: cfg, Log: slog.New(slog.DiscardHandler), Now: h.clock.Now, Owner: "test"}
	return h
}

// enqueue stores a message from sender to rcpts, received now.
func (h *harness) enqueue(sender string, rcpts ...string) string {
	h.t.Helper()
	now := h.clock.Now()
	env := &store.Envelope{ID: store.NewID(now), Sender: sender, Received: now, Domains: map[string][]store.Recipient{}}
	for _, r := range rcpts {
		d := r[strings.LastIndexByte(r, '@')+1:]
		env.Domains[d] = append(env.Domains[d], store.Recipient{Addr: r})
	}
	body := fmt.Sprintf("Received: by test\r\nFrom: <%s>\r\nSubject: test %s\r\nMessage-ID: <%s@test>\r\n\r\nhello\r\n", sender, env.ID, env.ID)
	if _, err := h.st.Enqueue(context.Background(), env, strings.NewReader(body)); err != nil {
		h.t.Fatal(err)
	}
	return env.ID
}

func (h *harness) runDue() {
	h.t.Helper()
	if err := h.s.RunDue(context.Background()); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) list(f store.Filter) []store.Delivery {
	h.t.Helper()
	ds, err := h.st.List(context.Background(), f, store.Page{Limit: 1000})
	if err != nil {
		h.t.Fatal(err)
	}
	return ds
}

func TestNextAttemptPolicy(t *testing.T) {
	iv := []time.Duration{10 * time.Minute, 10 * time.Minute, 10 * time.Minute, 10 * time.Minute, 10 * time.Minute, 10 * time.Minute, time.Hour}
	exp := t0.Add(15 * 24 * time.Hour)
	at := t0
	var offsets []time.Duration
	for n := 1; n <= 10; n++ {
		at = NextAttempt(n, at, exp, iv)
		offsets = append(offsets, at.Sub(t0))
	}
	want := []time.Duration{10, 20, 30, 40, 50, 60, 120, 180, 240, 300}
	for i, w := range want {
		if offsets[i] != w*time.Minute {
			t.Fatalf("attempt %d: next at +%v, want +%vm (all: %v)", i+1, offsets[i], w, offsets)
		}
	}
	if got := NextAttempt(7, exp.Add(-30*time.Minute), exp, iv); !got.Equal(exp) {
		t.Fatalf("next attempt not capped at expiry: %v", got)
	}
}

// TestRetryScheduleFakeClock: with the primary down, attempts happen at
// 0, 10, 20, … 60 minutes, then hourly, and never between.
func TestRetryScheduleFakeClock(t *testing.T) {
	h := newHarness(t, "")
	id := h.enqueue("alice@sender.test", "bob@example.test")
	var attempts []time.Duration
	last := 0
	// Walk the clock minute by minute through 4 hours.
	for m := 0; m <= 240; m++ {
		h.clock.Set(t0.Add(time.Duration(m) * time.Minute))
		h.runDue()
		ds := h.list(store.Filter{ID: id})
		if len(ds) != 1 {
			t.Fatalf("minute %d: %d deliveries", m, len(ds))
		}
		if ds[0].Attempts != last {
			if ds[0].Attempts != last+1 {
				t.Fatalf("minute %d: attempts jumped from %d to %d", m, last, ds[0].Attempts)
			}
			last = ds[0].Attempts
			attempts = append(attempts, time.Duration(m)*time.Minute)
			if !strings.Contains(ds[0].LastError, "connection refused") {
				t.Fatalf("last_error = %q", ds[0].LastError)
			}
		}
	}
	want := []time.Duration{0, 10, 20, 30, 40, 50, 60, 120, 180, 240}
	if fmt.Sprint(attempts) != fmt.Sprint(scale(want, time.Minute)) {
		t.Fatalf("attempts at %v, want %v", attempts, scale(want, time.Minute))
	}
}

func scale(v []time.Duration, u time.Duration) []time.Duration {
	out := make([]time.Duration, len(v))
	for i := range v {
		out[i] = v[i] * u
	}
	return out
}

// TestExpirySendsDSN: after the retention, the sender gets an RFC 3464 DSN
// through the notices route and the message leaves the queue.
func TestExpirySendsDSN(t *testing.T) {
	h := newHarness(t, "")
	id := h.enqueue("alice@sender.test", "bob@example.test", "carol@example.test")
	h.runDue() // first attempt fails
	h.clock.Set(t0.Add(15*24*time.Hour + time.Minute))
	h.net.setUp("sender.test", true)
	h.runDue() // last attempt fails → expired → DSN queued → DSN delivered
	if ds := h.list(store.Filter{ID: id}); len(ds) != 0 {
		t.Fatalf("expired message still queued: %+v", ds)
	}
	got := h.net.received()
	if len(got) != 1 {
		t.Fatalf("want 1 DSN, got %d messages", len(got))
	}
	m := got[0]
	if m.domain != "sender.test" || m.sender != "" || m.rcpts[0] != "alice@sender.test" {
		t.Fatalf("DSN envelope: domain %q sender %q rcpts %v", m.domain, m.sender, m.rcpts)
	}
	for _, want := range []string{"multipart/report", "report-type=delivery-status", "message/delivery-status",
		"Action: failed", "Status: 4.4.7", "Final-Recipient: rfc822; bob@example.test",
		"Final-Recipient: rfc822; carol@example.test", "Subject: test " + id} {
		if !strings.Contains(m.body, want) {
			t.Errorf("DSN lacks %q:\n%s", want, m.body)
		}
	}
	if rest := h.list(store.Filter{}); len(rest) != 0 {
		t.Fatalf("queue not empty: %+v", rest)
	}
}

// TestExpiryNullSenderNoDSN: a bounce is never bounced.
func TestExpiryNullSenderNoDSN(t *testing.T) {
	h := newHarness(t, "")
	h.enqueue("", "bob@example.test")
	h.runDue()
	h.clock.Set(t0.Add(16 * 24 * time.Hour))
	h.runDue()
	if rest := h.list(store.Filter{}); len(rest) != 0 {
		t.Fatalf("queue not empty: %+v", rest)
	}
	if got := h.net.received(); len(got) != 0 {
		t.Fatalf("DSN sent for a null sender: %+v", got)
	}
}

// TestRecipientRejectedGetsDSN: 5xx for one recipient bounces that one only.
func TestRecipientRejectedGetsDSN(t *testing.T) {
	h := newHarness(t, "")
	h.net.setUp("example.test", true)
	h.net.setUp("sender.test", true)
	h.net.replies["nobody@example.test"] = relay.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}
	h.enqueue("alice@sender.test", "bob@example.test", "nobody@example.test")
	h.runDue()
	got := h.net.received()
	if len(got) != 2 {
		t.Fatalf("want the message and a DSN, got %d", len(got))
	}
	var dsnBody string
	for _, g := range got {
		if g.domain == "sender.test" {
			dsnBody = g.body
		} else if fmt.Sprint(g.rcpts) != "[bob@example.test]" {
			t.Fatalf("delivered to %v", g.rcpts)
		}
	}
	for _, want := range []string{"Final-Recipient: rfc822; nobody@example.test", "Status: 5.1.1", "no such user"} {
		if !strings.Contains(dsnBody, want) {
			t.Errorf("DSN lacks %q:\n%s", want, dsnBody)
		}
	}
	if rest := h.list(store.Filter{}); len(rest) != 0 {
		t.Fatalf("queue not empty: %+v", rest)
	}
}

// TestTemporaryRecipientFailureDefers: 4xx for a recipient keeps it queued.
func TestTemporaryRecipientFailureDefers(t *testing.T) {
	h := newHarness(t, "")
	h.net.setUp("example.test", true)
	h.net.replies["full@example.test"] = relay.Reply{Code: 452, Enhanced: "4.2.2", Text: "mailbox full"}
	id := h.enqueue("alice@sender.test", "bob@example.test", "full@example.test")
	h.runDue()
	ds := h.list(store.Filter{ID: id})
	if len(ds) != 1 || len(ds[0].Recipients) != 1 || ds[0].Recipients[0].Addr != "full@example.test" {
		t.Fatalf("want only full@ left, got %+v", ds)
	}
	if ds[0].Attempts != 1 || !ds[0].NextAttempt.Equal(t0.Add(10*time.Minute)) || !strings.Contains(ds[0].LastError, "mailbox full") {
		t.Fatalf("bad schedule: attempts %d next %v err %q", ds[0].Attempts, ds[0].NextAttempt, ds[0].LastError)
	}
}

// TestSuccessFlushesDomain: when a delivery to a domain succeeds, the mail
// that was waiting for it goes at once, not at its scheduled time.
func TestSuccessFlushesDomain(t *testing.T) {
	h := newHarness(t, "")
	var old []string
	for range 5 {
		old = append(old, h.enqueue("alice@sender.test", "bob@example.test"))
	}
	h.enqueue("alice@sender.test", "x@other.test") // another domain stays put
	h.runDue()
	h.clock.Set(t0.Add(3 * time.Minute))
	h.net.setUp("example.test", true)
	h.enqueue("alice@sender.test", "new@example.test")
	h.runDue()
	if got := len(h.net.received()); got != 6 {
		t.Fatalf("delivered %d, want 6 (the new one and the 5 waiting)", got)
	}
	rest := h.list(store.Filter{})
	if len(rest) != 1 || rest[0].Domain != "other.test" {
		t.Fatalf("left: %+v", rest)
	}
}

// TestProbesPaced: a probe round starts at most queue.probe_rate probes a
// second, so thousands of down domains are not probed in one burst.
func TestProbesPaced(t *testing.T) {
	h := newHarness(t, "probe_rate = 20\n[[domain]]\nname = \"third.test\"\n[[domain]]\nname = \"fourth.test\"")
	for _, d := range []string{"example.test", "other.test", "third.test", "fourth.test"} {
		h.enqueue("alice@sender.test", "bob@"+d)
	}
	h.runDue() // every primary is down: all four deferred, waiting
	h.net.mu.Lock()
	h.net.probeAt = nil
	h.net.mu.Unlock()
	h.s.probeAll(context.Background())
	h.net.mu.Lock()
	at := append([]time.Time(nil), h.net.probeAt...)
	h.net.mu.Unlock()
	if len(at) != 4 {
		t.Fatalf("%d probes, want 4", len(at))
	}
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	for i := 1; i < len(at); i++ {
		// 20 a second: 50 ms apart (a ticker may fire a little early).
		if gap := at[i].Sub(at[i-1]); gap < 40*time.Millisecond {
			t.Errorf("probes %d and %d started %v apart, want ≥ 50 ms", i-1, i, gap)
		}
	}
}

// TestSilentPrimariesProbedTogether: probes of primaries that never answer
// (dropped SYNs) wait their whole budget; the round starts them at its pace
// without waiting for earlier ones to time out (it held 64 at a time, so
// 10,000 such domains took 40 minutes a round).
func TestSilentPrimariesProbedTogether(t *testing.T) {
	var extra strings.Builder
	extra.WriteString("probe_rate = 1000\n")
	const n = 100
	for i := range n {
		fmt.Fprintf(&extra, "[[domain]]\nname = \"d%d.test\"\nprimary = [\"127.0.0.1:2526\"]\n", i)
	}
	h := newHarness(t, extra.String())
	for i := range n {
		h.enqueue("alice@sender.test", fmt.Sprintf("bob@d%d.test", i))
	}
	h.runDue() // every primary is down: all deferred, waiting
	h.net.mu.Lock()
	h.net.silent = true
	h.net.probes = 0
	h.net.mu.Unlock()
	h.s.ProbeBudget = time.Second
	h.s.probeAll(context.Background())
	h.net.mu.Lock()
	probes, most := h.net.probes, h.net.maxInFlight
	h.net.mu.Unlock()
	if probes != n {
		t.Fatalf("%d probes, want %d", probes, n)
	}
	// Started 1 ms apart, each waiting 1 s: all of them at once unless
	// the round holds them back (a very slow machine may let a few end).
	if most < n*3/4 {
		t.Fatalf("at most %d probes in flight of %d", most, n)
	}
}

func TestProbeConcurrency(t *testing.T) {
	for _, tc := range []struct {
		rate   int
		budget time.Duration
		want   int
	}{
		{100, 15 * time.Second, maxProbes}, // the defaults: 1,500, bounded
		{20, 15 * time.Second, 300},
		{1, 5 * time.Second, 16},
		{10, 1500 * time.Millisecond, 20},
		{0, time.Second, 16},
	} {
		if got := probeConcurrency(tc.rate, tc.budget); got != tc.want {
			t.Errorf("probeConcurrency(%d, %v) = %d, want %d", tc.rate, tc.budget, got, tc.want)
		}
	}
}

// TestProbeFlushes: Run probes a down primary and flushes it when it answers.
func TestProbeFlushes(t *testing.T) {
	h := newHarness(t, "")
	h.s.Now = time.Now
	h.clock.Set(time.Now())
	for range 3 {
		h.enqueue("alice@sender.test", "bob@example.test")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, func() bool {
		ds := h.list(store.Filter{})
		return len(ds) == 3 && ds[0].Attempts == 1
	})
	h.net.setUp("example.test", true)
	waitFor(t, func() bool { return len(h.list(store.Filter{})) == 0 })
	if len(h.net.received()) != 3 {
		t.Fatalf("delivered %d", len(h.net.received()))
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBacklogDeliveredOnce: a backlog larger than a batch goes through the
// feeder, the senders and the recorder with every message delivered exactly
// once, in one work cycle.
func TestBacklogDeliveredOnce(t *testing.T) {
	h := newHarness(t, "batch = 16\nsessions = 3")
	h.net.setUp("example.test", true)
	want := map[string]bool{}
	for range 300 {
		want[h.enqueue("alice@sender.test", "bob@example.test")] = true
	}
	h.runDue()
	got := map[string]int{}
	for _, m := range h.net.received() {
		got[m.id]++
	}
	for id := range want {
		if got[id] != 1 {
			t.Fatalf("%s delivered %d times", id, got[id])
		}
	}
	if len(got) != len(want) {
		t.Fatalf("delivered %d distinct, want %d", len(got), len(want))
	}
	if rest := h.list(store.Filter{}); len(rest) != 0 {
		t.Fatalf("%d left in the queue", len(rest))
	}
}

// TestArrivalDefersDownDomains: mail arriving for a primary known to be down
// is stored as one failed attempt due at the first retry and doesn't wake the
// loop; mail for any other domain is due now and does, and so does mail for
// a domain flushed since.
func TestArrivalDefersDownDomains(t *testing.T) {
	h := newHarness(t, "")
	h.enqueue("alice@sender.test", "bob@example.test")
	h.runDue() // the dial fails: example.test is down
	drain := func() bool {
		select {
		case <-h.s.kick:
			return true
		default:
			return false
		}
	}
	drain()
	now := h.clock.Now()
	deferred, queued := h.s.Arrival([]string{"example.test"})
	d, ok := deferred["example.test"]
	if !ok || !d.Next.Equal(now.Add(10*time.Minute)) || !strings.HasPrefix(d.Error, "delivery temporarily suspended: ") {
		t.Fatalf("Arrival for a down domain = %+v", deferred)
	}
	queued()
	if drain() {
		t.Fatal("kicked for a domain known down")
	}
	deferred, queued = h.s.Arrival([]string{"example.test", "other.test"})
	if _, ok := deferred["other.test"]; ok || len(deferred) != 1 {
		t.Fatalf("Arrival deferred %v, want example.test only", deferred)
	}
	queued()
	if !drain() {
		t.Fatal("no kick for a domain not known down")
	}
	if err := h.s.FlushDomain(context.Background(), "example.test", "test"); err != nil {
		t.Fatal(err)
	}
	drain()
	deferred, queued = h.s.Arrival([]string{"example.test"})
	queued()
	if len(deferred) != 0 || !drain() {
		t.Fatalf("a flushed domain is still treated as down (deferred %v)", deferred)
	}
}

// TestArrivalRacingFlush: a message deferred at arrival whose domain is
// flushed (the probe answered) before the message is stored is made due by
// queued, not left waiting for its retry.
func TestArrivalRacingFlush(t *testing.T) {
	arrivalRacing(t, func(h *harness, now time.Time) {
		if err := h.s.FlushDomain(context.Background(), "example.test", "probe answered"); err != nil {
			t.Fatal(err)
		}
	})
}

// TestAdminFlushRacingArrival: the same with the admin API's flush, which
// the scheduler hears of before the store changes (Flushing); the store's
// flush cannot see the message, which is not committed yet.
func TestAdminFlushRacingArrival(t *testing.T) {
	h := arrivalRacing(t, func(h *harness, now time.Time) {
		h.s.Flushing() // what POST /v1/flush does: Flushing, the store's flush, Kick
		if _, err := h.st.Flush(context.Background(), store.Filter{}, now); err != nil {
			t.Fatal(err)
		}
		h.s.Kick()
	})
	// And a domain flushed by the operator is no longer treated as down.
	d, queued := h.s.Arrival([]string{"example.test"})
	queued()
	if len(d) != 0 {
		t.Fatalf("still deferred after the admin flush: %v", d)
	}
}

// arrivalRacing defers a message at arrival (its domain is down), runs
// flush before the message is stored, and fails unless the message is due
// soon after it is durable.
func arrivalRacing(t *testing.T, flush func(h *harness, now time.Time)) *harness {
	h := newHarness(t, "")
	h.enqueue("alice@sender.test", "bob@example.test")
	h.runDue() // example.test is down
	now := h.clock.Now()
	env := &store.Envelope{ID: store.NewID(now), Sender: "alice@sender.test", Received: now,
		Domains: map[string][]store.Recipient{"example.test": {{Addr: "carol@example.test"}}}}
	var queued func()
	env.Deferred, queued = h.s.Arrival([]string{"example.test"})
	if len(env.Deferred) != 1 {
		t.Fatalf("not deferred: %v", env.Deferred)
	}
	flush(h, now)
	if _, err := h.st.Enqueue(context.Background(), env, strings.NewReader("Subject: x\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	queued()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ds := h.list(store.Filter{ID: env.ID})
		if len(ds) == 1 && !ds[0].NextAttempt.After(now) {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("the message stays deferred after a flush it raced: %+v", ds)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFlushDuringDownCycle: a flush that arrives while a work cycle is
// deferring mail for a dead primary is not lost: the cycle dials again, and
// what it deferred before the flush is due again, not pushed back 10 minutes.
func TestFlushDuringDownCycle(t *testing.T) {
	h := newHarness(t, "batch = 8\nsessions = 1")
	for range 40 {
		h.enqueue("alice@sender.test", "bob@example.test")
	}
	var once sync.Once
	h.net.onDial = func(string) {
		once.Do(func() {
			// The primary comes back and the operator flushes while this
			// dial (which still fails) is in progress.
			h.net.setUp("example.test", true)
			h.net.mu.Lock()
			h.net.refuse = 1
			h.net.mu.Unlock()
			if err := h.s.FlushDomain(context.Background(), "example.test", "test"); err != nil {
				t.Error(err)
			}
		})
	}
	h.runDue()
	if rest := h.list(store.Filter{}); len(rest) != 0 {
		t.Fatalf("%d deliveries left after the flush (first: %+v)", len(rest), rest[0])
	}
	if got := len(h.net.received()); got != 40 {
		t.Fatalf("delivered %d, want 40", got)
	}
}

// TestStopFinishesSends: stopping the scheduler lets a delivery in progress
// finish and be recorded, so it is not sent again after a restart.
func TestStopFinishesSends(t *testing.T) {
	h := newHarness(t, "")
	h.s.Now = time.Now
	h.clock.Set(time.Now())
	h.net.setUp("example.test", true)
	id := h.enqueue("alice@sender.test", "bob@example.test")
	ctx, cancel := context.WithCancel(context.Background())
	h.net.onSend = func() {
		cancel()                           // the server is told to stop mid-send…
		time.Sleep(200 * time.Millisecond) // …while the primary is slow
	}
	if err := h.s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if got := h.net.received(); len(got) != 1 || got[0].id != id {
		t.Fatalf("received %+v", got)
	}
	if rest := h.list(store.Filter{}); len(rest) != 0 {
		t.Fatalf("the finished delivery was not recorded: %+v", rest)
	}
}

// completeHook is a store that calls before ahead of every Complete.
type completeHook struct {
	store.Store
	before func()
}

func (c completeHook) Complete(ctx context.Context, l *store.Lease, rs []store.Result) error {
	c.before()
	return c.Store.Complete(ctx, l, rs)
}

// TestDownKnownDuringCycle: from the primary's first refusal on, mail
// arriving for the domain is deferred at arrival, even while the cycle that
// was refused is still deferring what it claimed (before, the domain counted
// as down only once that cycle ended, and a burst arriving meanwhile was
// claimed and tried by it).
func TestDownKnownDuringCycle(t *testing.T) {
	h := newHarness(t, "batch = 8\nsessions = 1")
	for range 40 {
		h.enqueue("alice@sender.test", "bob@example.test")
	}
	completes := 0
	var deferredMid map[string]store.Deferral
	dials := 0
	h.net.onDial = func(string) { dials++ }
	h.s.Store = completeHook{Store: h.st, before: func() {
		completes++
		if completes == 1 { // 32 claimed deliveries are still to come
			deferredMid, _ = h.s.Arrival([]string{"example.test"})
		}
	}}
	h.runDue()
	if completes < 2 {
		t.Fatalf("the cycle recorded its outcomes in %d Complete calls; the test needs it still running at the first", completes)
	}
	if _, ok := deferredMid["example.test"]; !ok {
		t.Fatal("Arrival during the refused cycle did not defer the domain")
	}
	if dials != 1 {
		t.Fatalf("%d dials, want 1", dials)
	}
}
