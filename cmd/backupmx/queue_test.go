package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"backupmx/internal/admin"
	"backupmx/internal/store"
)

// queueMemStore is the part of store.Store the admin API uses, in memory; the
// embedded nil interface panics if anything else is called.
type queueMemStore struct {
	store.Store
	mu     sync.Mutex
	ds     []store.Delivery // sorted by (ID, Domain)
	bodies map[string]string
}

func (m *queueMemStore) match(d *store.Delivery, f store.Filter) bool {
	return (f.ID == "" || d.ID == f.ID) && (f.Domain == "" || d.Domain == f.Domain)
}

func (m *queueMemStore) List(_ context.Context, f store.Filter, p store.Page) ([]store.Delivery, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []store.Delivery
	for _, d := range m.ds {
		if len(out) < p.Limit && m.match(&d, f) && d.ID+" "+d.Domain > p.After {
			out = append(out, d)
		}
	}
	return out, nil
}

func (m *queueMemStore) Body(_ context.Context, id string) (io.ReadCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.bodies[id]
	if !ok {
		return nil, store.ErrNotFound
	}
	return io.NopCloser(strings.NewReader(b)), nil
}

func (m *queueMemStore) Delete(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.bodies[id]; !ok {
		return store.ErrNotFound
	}
	delete(m.bodies, id)
	var keep []store.Delivery
	for _, d := range m.ds {
		if d.ID != id {
			keep = append(keep, d)
		}
	}
	m.ds = keep
	return nil
}

func (m *queueMemStore) update(f store.Filter, fn func(*store.Delivery) bool) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for i := range m.ds {
		if m.match(&m.ds[i], f) && fn(&m.ds[i]) {
			n++
		}
	}
	return n, nil
}

func (m *queueMemStore) Flush(_ context.Context, f store.Filter, now time.Time) (int, error) {
	return m.update(f, func(d *store.Delivery) bool {
		if d.Held {
			return false
		}
		d.NextAttempt = now
		return true
	})
}

func (m *queueMemStore) Hold(_ context.Context, f store.Filter) (int, error) {
	return m.update(f, func(d *store.Delivery) bool { was := d.Held; d.Held = true; return !was })
}

func (m *queueMemStore) Unhold(_ context.Context, f store.Filter, now time.Time) (int, error) {
	return m.update(f, func(d *store.Delivery) bool { was := d.Held; d.Held = false; return was })
}

// queueFixture runs the admin API over a queueMemStore holding n messages, each for
// a.example and, every third one, b.example too; it returns the config path.
func queueFixture(t *testing.T, n int, token string) (*queueMemStore, string) {
	t.Helper()
	m := &queueMemStore{bodies: map[string]string{}}
	for i := range n {
		id := fmt.Sprintf("01HZZZZZZZ%06d", i)
		env := store.Envelope{ID: id, Sender: "s@sender.test", Received: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
		if i == 0 {
			env.Sender = ""
		}
		d := store.Delivery{ID: id, Domain: "a.example", Size: int64(1000 + i), Attempts: 1,
			NextAttempt: time.Date(2030, 1, 1, 0, 10, 0, 0, time.UTC), LastError: "451 4.4.1\nno answer",
			Recipients: []store.Recipient{{Addr: "u@a.example"}, {Addr: "v@a.example"}}, Envelope: env}
		m.ds = append(m.ds, d)
		if i%3 == 0 {
			d.Domain, d.Recipients = "b.example", []store.Recipient{{Addr: "w@b.example"}}
			m.ds = append(m.ds, d)
		}
		m.bodies[id] = "Subject: message " + id + "\r\n\r\nbody\r\n"
	}
	srv := httptest.NewServer((&admin.Server{Store: m, Token: token}).Handler())
	t.Cleanup(srv.Close)
	cfg := filepath.Join(t.TempDir(), "backupmx.toml")
	text := fmt.Sprintf("hostname = \"mx.test\"\n[admin]\nlisten = %q\ntoken = %q\n", srv.Listener.Addr().String(), token)
	queueWriteFile(t, cfg, []byte(text))
	return m, cfg
}

func runQueueCapture(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = runQueue(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestQueueListJSONWalksAllPages(t *testing.T) {
	m, cfg := queueFixture(t, 10, "tok") // 10 + 4 deliveries
	code, out, errOut := runQueueCapture("list", "-config", cfg, "-json", "-limit", "3")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != len(m.ds) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(m.ds), out)
	}
	for i, line := range lines {
		var it map[string]any
		if err := json.Unmarshal([]byte(line), &it); err != nil {
			t.Fatalf("line %d: %v: %s", i, err, line)
		}
		if it["id"] != m.ds[i].ID || it["domain"] != m.ds[i].Domain {
			t.Errorf("line %d: %s %s, want %s %s", i, it["id"], it["domain"], m.ds[i].ID, m.ds[i].Domain)
		}
		for _, k := range []string{"sender", "recipients", "size", "received", "attempts", "next_attempt", "last_error", "state"} {
			if _, ok := it[k]; !ok {
				t.Errorf("line %d: no %q", i, k)
			}
		}
	}

	// -domain, with the flags after nothing positional in any order.
	code, out, _ = runQueueCapture("list", "-json", "-domain", "b.example", "-config", cfg)
	if n := strings.Count(out, "\n"); code != 0 || n != 4 {
		t.Errorf("-domain b.example: exit %d, %d lines", code, n)
	}
}

func TestQueueListTable(t *testing.T) {
	_, cfg := queueFixture(t, 4, "")
	code, out, errOut := runQueueCapture("list", "-config", cfg, "-limit", "2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 1+6+1 {
		t.Fatalf("want header, 6 rows, summary:\n%s", out)
	}
	if !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], "LAST ERROR") {
		t.Errorf("header %q", lines[0])
	}
	first := strings.Fields(lines[1])
	if first[0] != "01HZZZZZZZ000000" || first[1] != "a.example" || first[2] != "queued" || first[3] != "1" {
		t.Errorf("first row %q", lines[1])
	}
	for _, want := range []string{"<>", "u@a.example,v@a.example", "451 4.4.1 no answer", "1000"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("first row %q lacks %q", lines[1], want)
		}
	}
	if lines[7] != "6 deliveries, 0 held" {
		t.Errorf("summary %q", lines[7])
	}
	// Columns line up across pages.
	col := strings.Index(lines[0], "DOMAIN")
	for _, l := range lines[1:7] {
		if l[col:col+len("a.example")] != "a.example" && l[col:col+len("b.example")] != "b.example" {
			t.Errorf("misaligned row %q", l)
		}
	}

	_, empty := queueFixture(t, 0, "")
	if code, out, _ := runQueueCapture("list", "-config", empty); code != 0 || out != "queue is empty\n" {
		t.Errorf("empty queue: exit %d, %q", code, out)
	}
}

func TestQueueShow(t *testing.T) {
	_, cfg := queueFixture(t, 2, "tok")
	code, out, errOut := runQueueCapture("show", "-config", cfg, "01hzzzzzzz000001") // ids are case-insensitive
	if code != 0 || out != "Subject: message 01HZZZZZZZ000001\r\n\r\nbody\r\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, errOut = runQueueCapture("show", "-config", cfg, "01HZZZZZZZ999999")
	if code != 1 || out != "" || !strings.Contains(errOut, "01HZZZZZZZ999999") || !strings.Contains(errOut, "404") {
		t.Errorf("unknown id: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestQueueActions(t *testing.T) {
	m, cfg := queueFixture(t, 4, "tok")
	for _, tc := range []struct {
		args []string
		out  string
	}{
		{[]string{"hold", "a.example"}, "held 4 deliveries\n"},
		{[]string{"hold", "01HZZZZZZZ000000"}, "held 1 delivery\n"}, // its b.example part
		{[]string{"flush"}, "flushed 1 delivery\n"},                 // 01HZZZZZZZ000003's b.example part
		{[]string{"flush", "b.example"}, "flushed 1 delivery\n"},
		{[]string{"release", "01HZZZZZZZ000000"}, "released 2 deliveries\n"},
		{[]string{"flush", "A.EXAMPLE"}, "flushed 1 delivery\n"},
		{[]string{"release", "a.example"}, "released 3 deliveries\n"},
		{[]string{"delete", "01HZZZZZZZ000003"}, "deleted 01HZZZZZZZ000003\n"},
	} {
		args := append([]string{tc.args[0], "-config", cfg}, tc.args[1:]...)
		code, out, errOut := runQueueCapture(args...)
		if code != 0 || out != tc.out {
			t.Errorf("%v: exit %d, stdout %q (want %q), stderr %q", tc.args, code, out, tc.out, errOut)
		}
	}
	if len(m.ds) != 4 {
		t.Errorf("%d deliveries left, want 4", len(m.ds))
	}
	code, _, errOut := runQueueCapture("delete", "-config", cfg, "01HZZZZZZZ000003")
	if code != 1 || !strings.Contains(errOut, "404") {
		t.Errorf("second delete: exit %d, %q", code, errOut)
	}
}

func TestQueueFlagsAfterArgument(t *testing.T) {
	_, cfg := queueFixture(t, 1, "")
	if code, out, errOut := runQueueCapture("hold", "a.example", "-config", cfg); code != 0 || out != "held 1 delivery\n" {
		t.Errorf("exit %d, %q, %q", code, out, errOut)
	}
}

func TestQueueErrors(t *testing.T) {
	_, cfg := queueFixture(t, 1, "right")
	wrongTok := filepath.Join(t.TempDir(), "wrong.toml")
	b, _ := os.ReadFile(cfg)
	queueWriteFile(t, wrongTok, bytes.Replace(b, []byte(`"right"`), []byte(`"wrong"`), 1))
	noAdmin := filepath.Join(t.TempDir(), "noadmin.toml")
	queueWriteFile(t, noAdmin, []byte("hostname = \"mx.test\"\n"))
	// A port nobody listens on: take one, then close it.
	ln := httptest.NewServer(nil)
	addr := ln.Listener.Addr().String()
	ln.Close()
	down := filepath.Join(t.TempDir(), "down.toml")
	queueWriteFile(t, down, []byte(fmt.Sprintf("[admin]\nlisten = %q\n", addr)))

	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{nil, 2, "usage"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"show", "-config", cfg}, 2, "want ID"},
		{[]string{"delete", "-config", cfg, "A", "B"}, 2, "want ID"},
		{[]string{"list", "-config", cfg, "extra"}, 2, "want no arguments"},
		{[]string{"list", "-config", cfg, "-limit", "0"}, 2, "-limit"},
		{[]string{"list", "-bogus"}, 2, "flag provided but not defined"},
		{[]string{"hold", "-config", cfg}, 2, "want ID|DOMAIN"},
		{[]string{"list", "-config", filepath.Join(t.TempDir(), "missing.toml")}, 1, "missing.toml"},
		{[]string{"list", "-config", noAdmin}, 1, "admin.listen is not set"},
		{[]string{"list", "-config", wrongTok}, 1, "admin.token"},
		{[]string{"flush", "-config", down}, 1, "cannot reach the admin API"},
	} {
		code, _, errOut := runQueueCapture(tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.stderr) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errOut, tc.code, tc.stderr)
		}
	}
	if code, out, _ := runQueueCapture("help"); code != 0 || !strings.Contains(out, "usage") {
		t.Errorf("help: exit %d", code)
	}
	if code, _, _ := runQueueCapture("list", "-h"); code != 0 {
		t.Errorf("list -h: exit %d", code)
	}
}

func TestQueueClientAddress(t *testing.T) {
	for listen, want := range map[string]string{
		"127.0.0.1:8025": "http://127.0.0.1:8025",
		"0.0.0.0:8025":   "http://127.0.0.1:8025",
		"[::]:8025":      "http://[::1]:8025",
		"[::1]:8025":     "http://[::1]:8025",
		"localhost:8025": "http://localhost:8025",
	} {
		cfg := filepath.Join(t.TempDir(), "c.toml")
		queueWriteFile(t, cfg, []byte(fmt.Sprintf("[admin]\nlisten = %q\ntoken = \"t\"\n", listen)))
		c, err := queueClient(cfg)
		if err != nil || c.BaseURL != want || c.Token != "t" {
			t.Errorf("%s: %+v, %v; want %s", listen, c, err, want)
		}
	}
}

func queueWriteFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
