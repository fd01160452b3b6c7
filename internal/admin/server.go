// Package admin is backupmx's HTTP API: the `backupmx queue …` commands talk to
// it (never to the store directly), so they work the same against one node or
// against any node of a cluster sharing one queue.
//
// Invariant: when Token is set, no request reaches the store without
// "Authorization: Bearer <token>" (compared in constant time); only the health
// check is open. No handler holds more than one page of the queue in memory and
// message bodies are streamed, never loaded whole.
//
// Endpoints (errors are {"error": "..."} with a 4xx/5xx status):
//
//	GET    /v1/health                       {"ok": true} (no token needed)
//	GET    /v1/queue?domain=&id=&after=&limit=
//	                                        {"items": [Item…], "next": cursor}; next is ""
//	                                        on the last page, else pass it as after=
//	GET    /v1/queue/{id}                   {"items": [Item…]}: the deliveries of one message; 404 if unknown
//	GET    /v1/queue/{id}/body              the stored message, message/rfc822; 404 if unknown
//	DELETE /v1/queue/{id}                   204, or 404 if unknown (no DSN is sent)
//	POST   /v1/flush?domain=&id=            {"flushed": n}: matching unheld deliveries due now (all without a filter)
//	POST   /v1/hold?domain=&id=             {"changed": n}: at least one of domain, id is required
//	POST   /v1/release?domain=&id=          {"changed": n}: unhold and make due now
//
// Flush and release tell the scheduler through Flushing before they change
// the store and wake it through Kick after. Domains are normalised
// (lower-case A-labels) before they reach the store. limit defaults to 100 and
// is at most 1000.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"backupmx/internal/config"
	"backupmx/internal/store"
)

// Page sizes for GET /v1/queue.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// Item is one delivery (one message's part for one domain) as the API shows it.
type Item struct {
	ID          string    `json:"id"`
	Domain      string    `json:"domain"`
	Sender      string    `json:"sender"` // "" is the null sender <>
	Recipients  []string  `json:"recipients"`
	Size        int64     `json:"size"`
	Received    time.Time `json:"received"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	LastError   string    `json:"last_error"`
	State       string    `json:"state"` // "queued" or "held"
	Client      string    `json:"client,omitempty"`
}

func itemOf(d *store.Delivery) Item {
	rcpts := make([]string, len(d.Recipients))
	for i, r := range d.Recipients {
		rcpts[i] = r.Addr
	}
	return Item{
		ID:          d.ID,
		Domain:      d.Domain,
		Sender:      d.Envelope.Sender,
		Recipients:  rcpts,
		Size:        d.Size,
		Received:    d.Envelope.Received.UTC(),
		Attempts:    d.Attempts,
		NextAttempt: d.NextAttempt.UTC(),
		LastError:   d.LastError,
		State:       d.State(),
		Client:      d.Envelope.Client.Addr,
	}
}

// Cursor is the List cursor (store.Page.After) that follows d: its queue id and
// domain separated by one space, matching the store's (id, domain) order.
func Cursor(d *store.Delivery) string { return d.ID + " " + d.Domain }

// Server serves the admin API. Store is required; the other fields may be zero.
type Server struct {
	Store store.Store
	Token string           // "" disables authentication (loopback only, see config)
	Log   *slog.Logger     // nil: discard
	Now   func() time.Time // nil: time.Now
	Kick  func()           // wakes the scheduler after flush and release; may be nil
	// Flushing is told before a flush or release changes the store (the
	// scheduler presumes every domain up again: mail the door stores
	// meanwhile for a domain it deferred is then flushed once durable,
	// see queue.Scheduler.Arrival); may be nil.
	Flushing func()
	// Stats returns the door's counters (rejections per rule, dnsbl_error);
	// nil: GET /v1/stats answers an empty set.
	Stats func() map[string]uint64
	// Pprof adds Go's runtime profiles under /debug/pprof/.
	Pprof bool
}

// Handler returns the API's routes behind the authentication check.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", s.health)
	mux.HandleFunc("GET /v1/queue", s.list)
	mux.HandleFunc("GET /v1/queue/{id}", s.show)
	mux.HandleFunc("GET /v1/queue/{id}/body", s.body)
	mux.HandleFunc("DELETE /v1/queue/{id}", s.delete)
	mux.HandleFunc("POST /v1/flush", s.flush)
	mux.HandleFunc("POST /v1/hold", s.hold)
	mux.HandleFunc("POST /v1/release", s.release)
	mux.HandleFunc("GET /v1/stats", s.stats)
	if s.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, pattern := mux.Handler(r)
		if pattern != "GET /v1/health" && !s.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="backupmx"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		if pattern == "" {
			// The mux's own 404 and 405 replies are text; keep the API all JSON.
			w = &jsonErrors{ResponseWriter: w}
		}
		mux.ServeHTTP(w, r) // not the handler above: ServeHTTP sets PathValue
	})
}

// authorized compares digests so that neither the content nor the length of
// the token leaks through timing.
func (s *Server) authorized(r *http.Request) bool {
	if s.Token == "" {
		return true
	}
	got := sha256.Sum256([]byte(r.Header.Get("Authorization")))
	want := sha256.Sum256([]byte("Bearer " + s.Token))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// stats answers {"counters": {"rule": n, …}}: the door's rejections per
// rule since the server started.
func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	counters := map[string]uint64{}
	if s.Stats != nil {
		counters = s.Stats()
	}
	writeJSON(w, http.StatusOK, map[string]map[string]uint64{"counters": counters})
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	f, ok := filterOf(w, r)
	if !ok {
		return
	}
	limit := DefaultLimit
	if v := r.FormValue("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, "limit: want a positive number")
			return
		}
		limit = min(n, MaxLimit)
	}
	// Read one more than asked to know whether a next page exists. An engine
	// may cap Page.Limit, so keep reading until we have that many or a page
	// comes back empty.
	after := r.FormValue("after")
	if after != "" && !strings.Contains(after, " ") {
		writeError(w, http.StatusBadRequest, "after: not a cursor from a previous page")
		return
	}
	var got []store.Delivery
	for len(got) <= limit {
		page, err := s.Store.List(r.Context(), f, store.Page{After: after, Limit: limit + 1 - len(got)})
		if err != nil {
			s.storeError(w, r, err)
			return
		}
		if len(page) == 0 {
			break
		}
		got = append(got, page...)
		after = Cursor(&page[len(page)-1])
	}
	next := ""
	if len(got) > limit {
		got = got[:limit]
		next = Cursor(&got[limit-1])
	}
	items := make([]Item, len(got))
	for i := range got {
		items[i] = itemOf(&got[i])
	}
	writeJSON(w, http.StatusOK, listReply{Items: items, Next: next})
}

type listReply struct {
	Items []Item `json:"items"`
	Next  string `json:"next"`
}

// show lists every delivery of one message: one per domain, so a few pages at most.
func (s *Server) show(w http.ResponseWriter, r *http.Request) {
	f := store.Filter{ID: r.PathValue("id")}
	items := []Item{}
	after := ""
	for {
		page, err := s.Store.List(r.Context(), f, store.Page{After: after, Limit: MaxLimit})
		if err != nil {
			s.storeError(w, r, err)
			return
		}
		if len(page) == 0 {
			break
		}
		for i := range page {
			items = append(items, itemOf(&page[i]))
		}
		after = Cursor(&page[len(page)-1])
	}
	if len(items) == 0 {
		writeError(w, http.StatusNotFound, "no message with id "+f.ID)
		return
	}
	writeJSON(w, http.StatusOK, listReply{Items: items})
}

func (s *Server) body(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	rc, err := s.Store.Body(r.Context(), id)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "message/rfc822")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, rc); err != nil {
		// The status is sent; the client sees a truncated body.
		s.log().Warn("admin: sending body failed", "id", id, "err", err)
	}
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.Store.Delete(r.Context(), id); err != nil {
		s.storeError(w, r, err)
		return
	}
	s.log().Info("deleted by operator", "id", id, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) flush(w http.ResponseWriter, r *http.Request) {
	f, ok := filterOf(w, r)
	if !ok {
		return
	}
	s.flushing()
	n, err := s.Store.Flush(r.Context(), f, s.now())
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	s.log().Info("flushed by operator", "id", f.ID, "domain", f.Domain, "count", n, "remote", r.RemoteAddr)
	s.kick()
	writeJSON(w, http.StatusOK, map[string]int{"flushed": n})
}

func (s *Server) hold(w http.ResponseWriter, r *http.Request) {
	f, ok := targetOf(w, r)
	if !ok {
		return
	}
	n, err := s.Store.Hold(r.Context(), f)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	s.log().Info("held by operator", "id", f.ID, "domain", f.Domain, "count", n, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]int{"changed": n})
}

func (s *Server) release(w http.ResponseWriter, r *http.Request) {
	f, ok := targetOf(w, r)
	if !ok {
		return
	}
	s.flushing()
	n, err := s.Store.Unhold(r.Context(), f, s.now())
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	s.log().Info("released by operator", "id", f.ID, "domain", f.Domain, "count", n, "remote", r.RemoteAddr)
	s.kick()
	writeJSON(w, http.StatusOK, map[string]int{"changed": n})
}

// filterOf reads the optional id= and domain= query parameters.
func filterOf(w http.ResponseWriter, r *http.Request) (store.Filter, bool) {
	f := store.Filter{ID: r.URL.Query().Get("id")}
	if d := r.URL.Query().Get("domain"); d != "" {
		name, err := config.NormalizeDomain(d)
		if err != nil || name == "" {
			writeError(w, http.StatusBadRequest, "domain: "+strconv.Quote(d)+" is not a domain name")
			return f, false
		}
		f.Domain = name
	}
	return f, true
}

// targetOf is filterOf for hold and release, which never act on the whole queue.
func targetOf(w http.ResponseWriter, r *http.Request) (store.Filter, bool) {
	f, ok := filterOf(w, r)
	if ok && f.ID == "" && f.Domain == "" {
		writeError(w, http.StatusBadRequest, "id or domain required")
		return f, false
	}
	return f, ok
}

func (s *Server) storeError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		msg := "not found"
		if id := r.PathValue("id"); id != "" {
			msg = "no message with id " + id
		}
		writeError(w, http.StatusNotFound, msg)
	case errors.Is(err, context.Canceled):
		// The client went away; nobody reads the reply.
	default:
		s.log().Error("admin: store error", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

func (s *Server) now() time.Time {
	if s.Now == nil {
		return time.Now()
	}
	return s.Now()
}

func (s *Server) flushing() {
	if s.Flushing != nil {
		s.Flushing()
	}
}

func (s *Server) kick() {
	if s.Kick != nil {
		s.Kick()
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorReply{Error: msg})
}

type errorReply struct {
	Error string `json:"error"`
}

// jsonErrors turns the mux's plain-text error replies into JSON ones, keeping
// their status and headers (such as Allow on 405).
type jsonErrors struct {
	http.ResponseWriter
	replaced bool
}

func (j *jsonErrors) WriteHeader(status int) {
	if status < 400 {
		j.ResponseWriter.WriteHeader(status)
		return
	}
	j.replaced = true
	j.Header().Del("Content-Length")
	j.Header().Del("X-Content-Type-Options")
	msg := strings.ToLower(http.StatusText(status))
	writeError(j.ResponseWriter, status, msg)
}

func (j *jsonErrors) Write(b []byte) (int, error) {
	if j.replaced {
		return len(b), nil
	}
	return j.ResponseWriter.Write(b)
}
