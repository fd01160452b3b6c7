package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"backupmx/internal/store"
)

// fakeStore is an in-memory store.Store with just enough behaviour for the
// admin API: List in (id, domain) order after an "id domain" cursor, and the
// operator actions. maxLimit mimics an engine that caps Page.Limit.
type fakeStore struct {
	mu       sync.Mutex
	ds       []store.Delivery // kept sorted by (ID, Domain)
	bodies   map[string]string
	maxLimit int
	failWith error
	changes  atomic.Int32 // Flush and Unhold calls
}

func newFakeStore() *fakeStore { return &fakeStore{bodies: map[string]string{}} }

func (f *fakeStore) add(id, domain string, rcpts ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := store.Delivery{
		ID: id, Domain: domain, Size: 100, Attempts: 2,
		NextAttempt: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC),
		LastError:   "451 4.3.0 try later",
		Envelope: store.Envelope{
			ID: id, Sender: "s@sender.test",
			Received: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
			Client:   store.Client{Addr: "192.0.2.1"},
		},
	}
	for _, r := range rcpts {
		d.Recipients = append(d.Recipients, store.Recipient{Addr: r})
	}
	f.ds = append(f.ds, d)
	slices.SortFunc(f.ds, func(a, b store.Delivery) int {
		return strings.Compare(a.ID+" "+a.Domain, b.ID+" "+b.Domain)
	})
	f.bodies[id] = "Subject: " + id + "\r\n\r\nhello\r\n"
}

func (f *fakeStore) match(d *store.Delivery, flt store.Filter) bool {
	return (flt.ID == "" || d.ID == flt.ID) && (flt.Domain == "" || d.Domain == flt.Domain)
}

func (f *fakeStore) List(ctx context.Context, flt store.Filter, p store.Page) ([]store.Delivery, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failWith != nil {
		return nil, f.failWith
	}
	limit := p.Limit
	if f.maxLimit > 0 {
		limit = min(limit, f.maxLimit)
	}
	var out []store.Delivery
	for _, d := range f.ds {
		if len(out) == limit {
			break
		}
		if f.match(&d, flt) && (p.After == "" || d.ID+" "+d.Domain > p.After) {
			out = append(out, d)
		}
	}
	return out, nil
}

func (f *fakeStore) Body(ctx context.Context, id string) (io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.bodies[id]
	if !ok {
		return nil, store.ErrNotFound
	}
	return io.NopCloser(strings.NewReader(b)), nil
}

func (f *fakeStore) Flush(ctx context.Context, flt store.Filter, now time.Time) (int, error) {
	f.changes.Add(1)
	return f.update(flt, func(d *store.Delivery) bool {
		if d.Held {
			return false
		}
		d.NextAttempt = now
		return true
	})
}

func (f *fakeStore) Hold(ctx context.Context, flt store.Filter) (int, error) {
	return f.update(flt, func(d *store.Delivery) bool {
		changed := !d.Held
		d.Held = true
		return changed
	})
}

func (f *fakeStore) Unhold(ctx context.Context, flt store.Filter, now time.Time) (int, error) {
	f.changes.Add(1)
	return f.update(flt, func(d *store.Delivery) bool {
		if !d.Held {
			return false
		}
		d.Held, d.NextAttempt = false, now
		return true
	})
}

func (f *fakeStore) update(flt store.Filter, fn func(*store.Delivery) bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for i := range f.ds {
		if f.match(&f.ds[i], flt) && fn(&f.ds[i]) {
			n++
		}
	}
	return n, nil
}

func (f *fakeStore) Delete(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.bodies[id]; !ok {
		return store.ErrNotFound
	}
	delete(f.bodies, id)
	f.ds = slices.DeleteFunc(f.ds, func(d store.Delivery) bool { return d.ID == id })
	return nil
}

func (f *fakeStore) Enqueue(context.Context, *store.Envelope, io.Reader) (int64, error) {
	return 0, errors.New("not in the fake")
}
func (f *fakeStore) Claim(context.Context, string, time.Time, time.Duration, int) (*store.Lease, []store.Delivery, error) {
	return nil, nil, nil
}
func (f *fakeStore) More(context.Context, *store.Lease, time.Time, int, []string) ([]store.Delivery, error) {
	return nil, nil
}
func (f *fakeStore) Renew(context.Context, *store.Lease, time.Time, time.Duration) error { return nil }
func (f *fakeStore) ReleaseLease(context.Context, *store.Lease) error                    { return nil }
func (f *fakeStore) Complete(context.Context, *store.Lease, []store.Result) error        { return nil }
func (f *fakeStore) NextDue(context.Context) (time.Time, bool, error)                    { return time.Time{}, false, nil }
func (f *fakeStore) Waiting(context.Context, time.Time) ([]string, error)                { return nil, nil }
func (f *fakeStore) Close() error                                                        { return nil }

var testNow = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

type fixture struct {
	st     *fakeStore
	srv    *httptest.Server
	client *Client
	kicks  *atomic.Int32
	// flushings counts Flushing calls; early those made before the store
	// changed (the fake store's flushes counter had not moved yet).
	flushings, early *atomic.Int32
}

func newFixture(t *testing.T, token string) *fixture {
	t.Helper()
	fx := &fixture{st: newFakeStore(), kicks: new(atomic.Int32), flushings: new(atomic.Int32), early: new(atomic.Int32)}
	s := &Server{
		Store: fx.st,
		Token: token,
		Now:   func() time.Time { return testNow },
		Kick:  func() { fx.kicks.Add(1) },
	}
	s.Flushing = func() {
		if fx.flushings.Add(1) == fx.st.changes.Load()+1 {
			fx.early.Add(1)
		}
	}
	fx.srv = httptest.NewServer(s.Handler())
	t.Cleanup(fx.srv.Close)
	fx.client = &Client{BaseURL: fx.srv.URL, Token: token, HTTP: fx.srv.Client()}
	return fx
}

// id makes a 16-character queue id that sorts by n.
func id(n int) string { return fmt.Sprintf("0000000000%06d", n) }

func TestListWalksAllPages(t *testing.T) {
	for _, maxLimit := range []int{0, 3} { // 3: an engine that caps Page.Limit
		t.Run(fmt.Sprint("cap", maxLimit), func(t *testing.T) {
			fx := newFixture(t, "")
			fx.st.maxLimit = maxLimit
			var want []string
			for i := range 23 {
				fx.st.add(id(i), "b.example", "u@b.example")
				want = append(want, id(i)+" b.example")
				if i%4 == 0 {
					fx.st.add(id(i), "a.example", "u@a.example", "v@a.example")
					want = append(want, id(i)+" a.example")
				}
			}
			slices.Sort(want)
			var got []string
			after, pages := "", 0
			for {
				items, next, err := fx.client.List(t.Context(), store.Filter{}, after, 5)
				if err != nil {
					t.Fatal(err)
				}
				pages++
				if len(items) > 5 {
					t.Fatalf("page of %d items, limit 5", len(items))
				}
				for _, it := range items {
					got = append(got, it.ID+" "+it.Domain)
				}
				if next == "" {
					break
				}
				after = next
			}
			if !slices.Equal(got, want) {
				t.Errorf("walked %q\nwant %q", got, want)
			}
			if wantPages := (len(want) + 4) / 5; pages != wantPages {
				t.Errorf("%d pages, want %d (no empty last page)", pages, wantPages)
			}
		})
	}
}

func TestListItemFieldsAndFilter(t *testing.T) {
	fx := newFixture(t, "")
	fx.st.add(id(1), "a.example", "u@a.example", "v@a.example")
	fx.st.add(id(2), "xn--bcher-kva.example", "w@xn--bcher-kva.example")
	fx.st.add(id(3), "a.example", "x@a.example")
	fx.st.Hold(t.Context(), store.Filter{ID: id(3)})

	// The wire format, as other tools will read it.
	resp, err := http.Get(fx.srv.URL + "/v1/queue?domain=A.Example.&limit=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw struct {
		Items []map[string]any
		Next  string
	}
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	if len(raw.Items) != 1 || raw.Next != id(1)+" a.example" {
		t.Fatalf("got %d items, next %q", len(raw.Items), raw.Next)
	}
	it := raw.Items[0]
	for k, v := range map[string]any{
		"id": id(1), "domain": "a.example", "sender": "s@sender.test",
		"size": 100.0, "received": "2030-01-01T00:00:00Z", "attempts": 2.0,
		"next_attempt": "2030-01-02T03:04:05Z", "last_error": "451 4.3.0 try later", "state": "queued",
	} {
		if it[k] != v {
			t.Errorf("%s = %v, want %v", k, it[k], v)
		}
	}
	if r := fmt.Sprint(it["recipients"]); r != "[u@a.example v@a.example]" {
		t.Errorf("recipients = %s", r)
	}

	items, next, err := fx.client.List(t.Context(), store.Filter{Domain: "a.example"}, raw.Next, 1)
	if err != nil || len(items) != 1 || next != "" {
		t.Fatalf("second page: %v, next %q, %v", items, next, err)
	}
	if items[0].ID != id(3) || items[0].State != "held" {
		t.Errorf("second page: %+v", items[0])
	}

	// U-labels are normalised to the A-labels the store keeps.
	items, _, err = fx.client.List(t.Context(), store.Filter{Domain: "bücher.example"}, "", 0)
	if err != nil || len(items) != 1 || items[0].ID != id(2) {
		t.Errorf("IDN filter: %v, %v", items, err)
	}
	items, _, err = fx.client.List(t.Context(), store.Filter{ID: id(1)}, "", 0)
	if err != nil || len(items) != 1 {
		t.Errorf("id filter: %v, %v", items, err)
	}
}

func TestListBadRequests(t *testing.T) {
	fx := newFixture(t, "")
	for _, q := range []string{"limit=0", "limit=x", "limit=-3", "domain=bad%20domain!", "after=nospace"} {
		resp, err := http.Get(fx.srv.URL + "/v1/queue?" + q)
		if err != nil {
			t.Fatal(err)
		}
		wantError(t, resp, http.StatusBadRequest)
	}
}

func TestShow(t *testing.T) {
	fx := newFixture(t, "")
	fx.st.add(id(1), "a.example", "u@a.example")
	fx.st.add(id(1), "b.example", "u@b.example")
	fx.st.add(id(2), "a.example", "u@a.example")

	items, err := fx.client.Deliveries(t.Context(), id(1))
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 2 || items[0].Domain != "a.example" || items[1].Domain != "b.example" {
		t.Errorf("deliveries: %+v", items)
	}
	var buf bytes.Buffer
	if err := fx.client.Show(t.Context(), id(1), &buf); err != nil {
		t.Fatal(err)
	}
	if want := "Subject: " + id(1) + "\r\n\r\nhello\r\n"; buf.String() != want {
		t.Errorf("body %q, want %q", buf.String(), want)
	}

	resp, err := http.Get(fx.srv.URL + "/v1/queue/" + id(1) + "/body")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "message/rfc822" {
		t.Errorf("Content-Type %q", ct)
	}

	buf.Reset()
	err = fx.client.Show(t.Context(), "NOSUCHID00000000", &buf)
	if !errors.Is(err, store.ErrNotFound) || buf.Len() != 0 {
		t.Errorf("show unknown: %v, wrote %q", err, buf.String())
	}
	if _, err := fx.client.Deliveries(t.Context(), "NOSUCHID00000000"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deliveries of unknown: %v", err)
	}
}

func TestFlush(t *testing.T) {
	fx := newFixture(t, "")
	fx.st.add(id(1), "a.example", "u@a.example")
	fx.st.add(id(2), "a.example", "u@a.example")
	fx.st.add(id(2), "b.example", "u@b.example")
	fx.st.Hold(t.Context(), store.Filter{ID: id(1)})

	for _, tc := range []struct {
		domain, id string
		want       int
	}{
		{"a.example", "", 1}, // id(1) is held
		{"", id(2), 2},
		{"", "", 2},
		{"c.example", "", 0},
	} {
		n, err := fx.client.Flush(t.Context(), tc.domain, tc.id)
		if err != nil || n != tc.want {
			t.Errorf("Flush(%q, %q) = %d, %v; want %d", tc.domain, tc.id, n, err, tc.want)
		}
	}
	if k := fx.kicks.Load(); k != 4 {
		t.Errorf("%d kicks, want 4", k)
	}
	if n, early := fx.flushings.Load(), fx.early.Load(); n != 4 || early != 4 {
		t.Errorf("Flushing told %d times, %d of them before the store changed; want 4, 4", n, early)
	}
	items, _, _ := fx.client.List(t.Context(), store.Filter{ID: id(2)}, "", 0)
	for _, it := range items {
		if !it.NextAttempt.Equal(testNow) {
			t.Errorf("%s %s next attempt %v, want %v", it.ID, it.Domain, it.NextAttempt, testNow)
		}
	}
}

func TestHoldRelease(t *testing.T) {
	fx := newFixture(t, "")
	fx.st.add(id(1), "a.example", "u@a.example")
	fx.st.add(id(2), "a.example", "u@a.example")
	fx.st.add(id(2), "b.example", "u@b.example")

	steps := []struct {
		op     func(context.Context, string) (int, error)
		name   string
		target string
		want   int
	}{
		{fx.client.Hold, "hold", "a.example", 2},
		{fx.client.Hold, "hold", id(2), 1}, // a.example part already held
		{fx.client.Release, "release", id(1), 1},
		{fx.client.Release, "release", "B.example", 1},
		{fx.client.Release, "release", "a.example", 1},
		{fx.client.Release, "release", "a.example", 0},
	}
	for _, s := range steps {
		n, err := s.op(t.Context(), s.target)
		if err != nil || n != s.want {
			t.Errorf("%s %s = %d, %v; want %d", s.name, s.target, n, err, s.want)
		}
	}
	if k := fx.kicks.Load(); k != 4 {
		t.Errorf("%d kicks, want 4 (one per release)", k)
	}

	// Hold and release never act on the whole queue.
	for _, path := range []string{"/v1/hold", "/v1/release"} {
		resp, err := http.Post(fx.srv.URL+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		wantError(t, resp, http.StatusBadRequest)
	}
}

func TestDelete(t *testing.T) {
	fx := newFixture(t, "")
	fx.st.add(id(1), "a.example", "u@a.example")
	fx.st.add(id(1), "b.example", "u@b.example")
	if err := fx.client.Delete(t.Context(), id(1)); err != nil {
		t.Fatal(err)
	}
	if items, _, _ := fx.client.List(t.Context(), store.Filter{}, "", 0); len(items) != 0 {
		t.Errorf("left after delete: %+v", items)
	}
	if err := fx.client.Delete(t.Context(), id(1)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
}

func TestAuth(t *testing.T) {
	fx := newFixture(t, "s3cret")
	fx.st.add(id(1), "a.example", "u@a.example")

	if _, _, err := fx.client.List(t.Context(), store.Filter{}, "", 0); err != nil {
		t.Fatalf("with the token: %v", err)
	}
	for _, auth := range []string{"", "Bearer wrong", "Bearer s3cret2", "s3cret", "Basic czNjcmV0"} {
		for _, rq := range []struct{ method, path string }{
			{"GET", "/v1/queue"}, {"GET", "/v1/queue/" + id(1)}, {"GET", "/v1/queue/" + id(1) + "/body"},
			{"DELETE", "/v1/queue/" + id(1)}, {"POST", "/v1/flush"}, {"POST", "/v1/hold?id=" + id(1)},
			{"POST", "/v1/release?id=" + id(1)}, {"GET", "/v1/nothing"},
		} {
			req, _ := http.NewRequest(rq.method, fx.srv.URL+rq.path, nil)
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s: no WWW-Authenticate", rq.method, rq.path)
			}
			wantError(t, resp, http.StatusUnauthorized)
		}
	}
	if fx.kicks.Load() != 0 || len(fx.st.ds) != 1 || fx.st.ds[0].Held {
		t.Error("an unauthorised request changed the queue")
	}
	// Health is open, for load balancers and monitoring.
	if err := (&Client{BaseURL: fx.srv.URL}).Health(t.Context()); err != nil {
		t.Errorf("health without token: %v", err)
	}
	bad := &Client{BaseURL: fx.srv.URL, Token: "wrong"}
	var e *Error
	if _, err := bad.Hold(t.Context(), id(1)); !errors.As(err, &e) || e.Status != http.StatusUnauthorized {
		t.Errorf("client with a wrong token: %v", err)
	}
}

func TestNoAuthWhenTokenEmpty(t *testing.T) {
	fx := newFixture(t, "")
	if err := fx.client.Health(t.Context()); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", fx.srv.URL+"/v1/queue", nil)
	req.Header.Set("Authorization", "Bearer anything")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d", resp.StatusCode)
	}
}

func TestErrorsAreJSON(t *testing.T) {
	fx := newFixture(t, "")
	for _, rq := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/v1/nothing", http.StatusNotFound},
		{"PUT", "/v1/queue", http.StatusMethodNotAllowed},
		{"GET", "/v1/flush", http.StatusMethodNotAllowed},
		{"GET", "/v1/queue/" + id(9), http.StatusNotFound},
		{"GET", "/v1/queue/" + id(9) + "/body", http.StatusNotFound},
		{"DELETE", "/v1/queue/" + id(9), http.StatusNotFound},
	} {
		req, _ := http.NewRequest(rq.method, fx.srv.URL+rq.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		wantError(t, resp, rq.status)
	}

	fx.st.failWith = errors.New("disk on fire")
	_, _, err := fx.client.List(t.Context(), store.Filter{}, "", 0)
	var e *Error
	if !errors.As(err, &e) || e.Status != http.StatusInternalServerError || !strings.Contains(e.Message, "disk on fire") {
		t.Errorf("store failure: %v", err)
	}
}

// wantError checks a reply's status and that its body is {"error": "..."}.
func wantError(t *testing.T, resp *http.Response, status int) {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Errorf("%s %s: status %d, want %d (%s)", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, status, b)
		return
	}
	var e errorReply
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", resp.Request.Method, resp.Request.URL.Path, ct)
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Error == "" {
		t.Errorf("%s %s: body %q is not a JSON error", resp.Request.Method, resp.Request.URL.Path, b)
	}
}
