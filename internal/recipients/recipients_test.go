package recipients

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"backupmx/internal/config"
)

// primary is a test primary on loopback: RCPT is 250 for users, 550 for
// anyone else, 451 for "busy"; it records every MAIL FROM and RCPT.
type primary struct {
	addr  string
	users map[string]bool
	srv   *smtp.Server

	mu    sync.Mutex
	froms []string
	rcpts []string
}

func startPrimary(t *testing.T, users ...string) *primary {
	t.Helper()
	p := &primary{users: map[string]bool{}}
	for _, u := range users {
		p.users[u] = true
	}
	p.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &primarySession{p}, nil }))
	p.srv.Domain = "primary.test"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = l.Addr().String()
	go p.srv.Serve(l)
	t.Cleanup(func() { p.srv.Close() })
	return p
}

func (p *primary) calls() ([]string, []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.froms...), append([]string(nil), p.rcpts...)
}

type primarySession struct{ p *primary }

func (s *primarySession) Mail(from string, _ *smtp.MailOptions) error {
	s.p.mu.Lock()
	s.p.froms = append(s.p.froms, from)
	s.p.mu.Unlock()
	return nil
}

func (s *primarySession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.p.mu.Lock()
	s.p.rcpts = append(s.p.rcpts, to)
	s.p.mu.Unlock()
	switch {
	case to == "busy@example.test":
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
	case !s.p.users[to]:
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	return nil
}

func (s *primarySession) Data(r io.Reader) error { return nil }
func (s *primarySession) Reset()                 {}
func (s *primarySession) Logout() error          { return nil }

func parse(t *testing.T, text string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("hostname = \"mx2.backup.test\"\n[dnsbl]\nzones = []\n" + text)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestStaticListAndFileReload(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "rcpts")
	os.WriteFile(file, []byte("# staff\nbob\nCarol@Example.Test\n\n"), 0o600)
	cfg := parse(t, `
[[domain]]
name = "example.test"
primary = ["127.0.0.1:1"]
recipients = ["Alice"]
recipients_file = "`+file+`"
[[domain]]
name = "open.test"
`)
	v, err := New(cfg, nil, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	check := func(local, domain string, want Verdict) {
		t.Helper()
		if got, how := v.Check(context.Background(), local, domain); got != want {
			t.Errorf("%s@%s: %v (%s), want %v", local, domain, got, how, want)
		}
	}
	check("alice", "example.test", Accept)
	check("ALICE", "example.test", Accept)
	check("bob", "example.test", Accept)
	check("carol", "example.test", Accept)
	check("dave", "example.test", Unknown)
	check("anyone", "open.test", Accept) // no list, no verify: open

	os.WriteFile(file, []byte("dave\n"), 0o600)
	if err := v.Reload(); err != nil {
		t.Fatal(err)
	}
	check("dave", "example.test", Accept)
	check("bob", "example.test", Unknown)
	check("alice", "example.test", Accept) // the static list stays

	os.Remove(file) // a broken reload keeps the last good list
	if err := v.Reload(); err == nil {
		t.Error("Reload of a missing file: no error")
	}
	check("dave", "example.test", Accept)
}

func TestCallout(t *testing.T) {
	p := startPrimary(t, "alice@example.test")
	cfg := parse(t, `
[[domain]]
name = "example.test"
primary = ["`+p.addr+`"]
verify = "primary"
`)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	v, err := New(cfg, &SMTPCallout{Config: cfg, Timeout: 5 * time.Second}, func() time.Time { return now }, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tt := range []struct {
		local string
		want  Verdict
		how   string
	}{
		{"alice", Accept, "callout"},
		{"alice", Accept, "cache"},
		{"nobody", Unknown, "callout"},
		{"nobody", Unknown, "cache"},
		{"busy", Accept, "unknown-policy"}, // 451: a doubt, not an answer
		{"busy", Accept, "unknown-policy"}, // ... and not cached
	} {
		if got, how := v.Check(ctx, tt.local, "example.test"); got != tt.want || how != tt.how {
			t.Errorf("%s: %v by %s, want %v by %s", tt.local, got, how, tt.want, tt.how)
		}
	}
	froms, rcpts := p.calls()
	if len(rcpts) != 4 { // alice, nobody, busy, busy
		t.Errorf("primary saw RCPTs %v, want 4 (cache hits must not call out)", rcpts)
	}
	for _, f := range froms {
		if f != "" {
			t.Errorf("callout MAIL FROM:<%s>, want the null sender", f)
		}
	}

	// Past the negative TTL (3d) but within the positive (31d): only
	// "nobody" is asked again.
	now = now.Add(NegativeTTL + time.Hour)
	v.Check(ctx, "alice", "example.test")
	v.Check(ctx, "nobody", "example.test")
	if _, rcpts := p.calls(); len(rcpts) != 5 || rcpts[4] != "nobody@example.test" {
		t.Errorf("after 3d: RCPTs %v, want one more for nobody", rcpts)
	}
}

// verifyConfig is example.test verified by callout to primary, with the
// given unknown policy.
func verifyConfig(t *testing.T, primary, unknown string) *config.Config {
	t.Helper()
	return parse(t, `
[[domain]]
name = "example.test"
primary = ["`+primary+`"]
verify = "primary"
unknown = "`+unknown+`"
`)
}

func TestPrimaryDown(t *testing.T) {
	for _, unknown := range []string{"accept", "tempfail"} {
		t.Run(unknown, func(t *testing.T) {
			p := startPrimary(t, "alice@example.test")
			cfg := verifyConfig(t, p.addr, unknown)
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			v, _ := New(cfg, &SMTPCallout{Config: cfg, Timeout: 5 * time.Second}, func() time.Time { return now }, 0)
			ctx := context.Background()
			v.Check(ctx, "alice", "example.test")
			v.Check(ctx, "nobody", "example.test")
			p.srv.Close() // the primary goes down: connection refused

			wantUnknown := Accept
			if unknown == "tempfail" {
				wantUnknown = TempFail
			}
			check := func(local string, want Verdict, wantHow string) {
				t.Helper()
				if got, how := v.Check(ctx, local, "example.test"); got != want || how != wantHow {
					t.Errorf("%s: %v by %s, want %v by %s", local, got, how, want, wantHow)
				}
			}
			check("alice", Accept, "cache")
			check("nobody", Unknown, "cache")
			check("carol", wantUnknown, "unknown-policy")
			now = now.Add(PositiveTTL + time.Hour) // everything expired
			check("alice", Accept, "stale-cache")
			check("nobody", wantUnknown, "unknown-policy") // a stale "no" is not a 5xx
		})
	}
}

func TestLRUBounded(t *testing.T) {
	l := newLRU(3)
	for _, k := range []string{"a", "b", "c"} {
		l.put(k, cacheEntry{exists: true})
	}
	l.get("a") // a is now the most recent
	l.put("d", cacheEntry{})
	if _, ok := l.get("b"); ok {
		t.Error("b, the least recently used, was kept")
	}
	if _, ok := l.get("a"); !ok || l.len() != 3 {
		t.Errorf("a lost or len %d != 3", l.len())
	}
}

// stalledCallout never answers: it waits for its context to end.
type stalledCallout struct{ deadline chan bool }

func (s stalledCallout) Verify(ctx context.Context, domain, addr string) (Answer, error) {
	_, ok := ctx.Deadline()
	s.deadline <- ok
	<-ctx.Done()
	return Answer{}, ctx.Err()
}

// TestCheckWithinBoundsCallout: CheckWithin gives the callout (and only it)
// a deadline; a primary that never answers costs the timeout and the
// unknown policy's verdict.
func TestCheckWithinBoundsCallout(t *testing.T) {
	cfg := verifyConfig(t, "127.0.0.1:1", "tempfail")
	sc := stalledCallout{deadline: make(chan bool, 1)}
	v, _ := New(cfg, sc, time.Now, 0)
	start := time.Now()
	got, how := v.CheckWithin(50*time.Millisecond, "carol", "example.test")
	if got != TempFail || how != "unknown-policy" {
		t.Fatalf("stalled callout: %v by %s, want TempFail by unknown-policy", got, how)
	}
	if !<-sc.deadline {
		t.Fatal("the callout got no deadline")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("CheckWithin took %v with a 50ms timeout", d)
	}
}
