package smtpd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"backupmx/internal/config"
	"backupmx/internal/store"
)

// fakeStore keeps enqueued messages in memory and can be told to fail.
type fakeStore struct {
	store.Store // the rest is unused here: calling it panics

	mu   sync.Mutex
	fail error
	msgs []stored
}

type stored struct {
	env  store.Envelope
	body []byte
}

func (f *fakeStore) Enqueue(ctx context.Context, env *store.Envelope, body io.Reader) (int64, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return 0, fmt.Errorf("fake: reading body: %w", err) // nothing kept
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return 0, f.fail
	}
	f.msgs = append(f.msgs, stored{env: *env, body: b})
	return int64(len(b)), nil
}

func (f *fakeStore) setFail(err error) {
	f.mu.Lock()
	f.fail = err
	f.mu.Unlock()
}

func (f *fakeStore) all() []stored {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]stored(nil), f.msgs...)
}

// fakeResolver answers from maps; anything else is "not found".
type fakeResolver struct {
	addr map[string][]string // ip → names
	host map[string][]string // name → ips
	mx   map[string][]*net.MX
}

var errNotFound = errors.New("fake dns: not found")

func (r fakeResolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	if v, ok := r.addr[addr]; ok {
		return v, nil
	}
	return nil, errNotFound
}

func (r fakeResolver) LookupHost(ctx context.Context, host string) ([]string, error) {
	if v, ok := r.host[strings.TrimSuffix(host, ".")]; ok {
		return v, nil
	}
	return nil, errNotFound
}

func (r fakeResolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	if v, ok := r.mx[name]; ok {
		return v, nil
	}
	return nil, errNotFound
}

const baseConfig = `
hostname = "mx2.backup.test"
[smtp]
max_message_size = 2000
max_recipients = 5
command_timeout = "5s"
data_timeout = "2s"
pregreet_wait = "0s"
[dnsbl]
zones = [] # tests that need blocklists use dnstest
[[domain]]
name = "example.test"
primary = ["127.0.0.1:2525"]
[[domain]]
name = "second.test"
primary = ["mx.second.test:25"]
[[domain]]
name = "byname.test"
primary = ["mx.byname.test:25"]
[[domain]]
name = "bymx.test"
`

type testServer struct {
	*Server
	addr  string
	store *fakeStore

	mu      sync.Mutex
	queued  [][]string
	flushed []string
}

func (ts *testServer) kicks() ([][]string, []string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([][]string(nil), ts.queued...), append([]string(nil), ts.flushed...)
}

// newTestServer serves baseConfig, changed by each edit, on a loopback port.
func newTestServer(t *testing.T, edits ...func(*config.Config)) *testServer {
	t.Helper()
	return buildTestServer(t, edits...).start(t)
}

// buildTestServer is newTestServer without the start, for tests that set
// more Server fields first.
func buildTestServer(t *testing.T, edits ...func(*config.Config)) *testServer {
	t.Helper()
	cfg, err := config.Parse(baseConfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range edits {
		e(cfg)
	}
	ts := &testServer{store: &fakeStore{}}
	ts.Server = &Server{
		Config: cfg,
		Store:  ts.store,
		Log:    slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:    func() time.Time { return time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) },
		Resolver: fakeResolver{
			addr: map[string][]string{"127.0.0.1": {"client.example.net."}},
			host: map[string][]string{
				"client.example.net": {"127.0.0.1"},
				"mx.second.test":     {"192.0.2.1"},
				"mx.byname.test":     {"192.0.2.7", "127.0.0.1"},
				"mx.bymx.test":       {"127.0.0.1"},
			},
			mx: map[string][]*net.MX{"bymx.test": {
				{Host: "mx.bymx.test.", Pref: 10},
				{Host: "mx2.backup.test.", Pref: 20},
			}},
		},
		Arrival: func(d []string) (map[string]store.Deferral, func()) {
			return nil, func() {
				ts.mu.Lock()
				ts.queued = append(ts.queued, d)
				ts.mu.Unlock()
			}
		},
		ETRN: func(d string) error {
			ts.mu.Lock()
			ts.flushed = append(ts.flushed, d)
			ts.mu.Unlock()
			return nil
		},
	}
	return ts
}

func (ts *testServer) start(t *testing.T) *testServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = l.Addr().String()
	done := make(chan error, 1)
	go func() { done <- ts.Serve(l) }()
	t.Cleanup(func() {
		ts.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ts
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// step is one turn of a dialogue: send is written as is (several pipelined
// commands, or a body), then one reply is read per want, each of which must
// start with want (multi-line replies are joined with "\n").
type step struct {
	send string
	want []string
}

func cmd(line string, want ...string) step { return step{send: line + "\r\n", want: want} }

type client struct {
	t    *testing.T
	conn net.Conn
	text *textproto.Conn
}

// dial connects and checks the greeting.
func dial(t *testing.T, addr string) *client {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &client{t: t, conn: nc, text: textproto.NewConn(nc)}
	c.expect("220 mx2.backup.test ESMTP")
	return c
}

func (c *client) run(steps ...step) {
	c.t.Helper()
	for _, s := range steps {
		if s.send != "" {
			c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c.conn, s.send); err != nil {
				c.t.Fatalf("send %q: %v", s.send, err)
			}
		}
		c.expect(s.want...)
	}
}

func (c *client) expect(want ...string) {
	c.t.Helper()
	for _, w := range want {
		got := c.read()
		if !strings.HasPrefix(got, w) {
			c.t.Fatalf("reply %q, want prefix %q", got, w)
		}
	}
}

// read returns the next reply, lines joined by "\n" ("code text" for each).
func (c *client) read() string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var lines []string
	for {
		l, err := c.text.ReadLine()
		if err != nil {
			c.t.Fatalf("reading reply: %v (so far %q)", err, lines)
		}
		lines = append(lines, l)
		if len(l) < 4 || l[3] != '-' {
			return strings.Join(lines, "\n")
		}
	}
}

// closed reports whether the server hung up (after any replies still pending):
// EOF, or a reset when it closed with our bytes unread.
func (c *client) closed() bool {
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, bufio.NewReader(c.text.R))
	var ne net.Error
	return !errors.As(err, &ne) || !ne.Timeout()
}

// transaction is the usual opening: EHLO, MAIL, one RCPT per address.
func transaction(from string, rcpts ...string) []step {
	s := []step{cmd("EHLO client.test", "250"), cmd("MAIL FROM:<"+from+">", "250 2.0.0")}
	for _, r := range rcpts {
		s = append(s, cmd("RCPT TO:<"+r+">", "250 2.0.0"))
	}
	return s
}
