package smtpd

import (
	"fmt"
	"maps"
	"net/netip"
	"sync"
	"time"
)

// Stats counts the door's rejections per rule (and DNSBL lookups that
// failed open). Safe for concurrent use; the zero value is ready.
type Stats struct {
	mu     sync.Mutex
	counts map[string]uint64
}

// Add counts one event under name.
func (st *Stats) Add(name string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.counts == nil {
		st.counts = make(map[string]uint64)
	}
	st.counts[name]++
}

// Snapshot returns a copy of the counters.
func (st *Stats) Snapshot() map[string]uint64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return maps.Clone(st.counts)
}

// rejected logs a refusal with the client, the rule and the reply, and
// counts it: every rejection at the door goes through here.
func (s *Server) rejected(client netip.Addr, rule, reply string, attrs ...any) {
	s.stats().Add(rule)
	s.log().Info("rejected", append([]any{"client", client.String(), "rule", rule, "reply", reply}, attrs...)...)
}

// clientKey groups addresses for the per-client limits: an IPv4 address, or
// the /64 of an IPv6 address (one site's allocation).
func clientKey(ip netip.Addr) netip.Prefix {
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32)
	}
	p, _ := ip.Prefix(64)
	return p
}

// limits holds the per-client state of the connection limits. Bounded: rate
// windows and pregreet passes are dropped when they are old or too many.
type limits struct {
	open   map[netip.Prefix]int
	rate   map[netip.Prefix]*window
	passed map[netip.Prefix]time.Time // pregreet passed, until
}

type window struct {
	start time.Time
	n     int
}

const (
	rateWindow  = time.Minute
	maxTracked  = 100000         // rate windows and pregreet passes kept
	pregreetTTL = 24 * time.Hour // postscreen_greet_ttl
)

// admit decides whether a new connection from ip may proceed; s.mu held. It
// returns the rule and reply that refuse it, or "".
func (s *Server) admit(ip netip.Addr, now time.Time) (rule, reply string) {
	cfg := &s.Config.SMTP
	l := &s.lim
	if l.open == nil {
		l.open, l.rate, l.passed = map[netip.Prefix]int{}, map[netip.Prefix]*window{}, map[netip.Prefix]time.Time{}
	}
	k := clientKey(ip)
	busy := func(what string) string {
		return fmt.Sprintf("421 4.7.0 %s Too many %s, try again later", s.Config.Hostname, what)
	}
	switch {
	case len(s.conns) >= cfg.MaxConnections:
		return "max_connections", busy("connections")
	case l.open[k] >= cfg.MaxConnectionsPerIP:
		return "max_connections_per_ip", busy("connections from your address")
	}
	if cfg.ConnectionRatePerIP > 0 {
		w := l.rate[k]
		if w == nil || now.Sub(w.start) >= rateWindow {
			if len(l.rate) >= maxTracked {
				prune(l.rate, func(w *window) bool { return now.Sub(w.start) >= rateWindow })
			}
			w = &window{start: now}
			l.rate[k] = w
		}
		if w.n >= cfg.ConnectionRatePerIP {
			return "connection_rate_per_ip", busy("connections from your address in a minute")
		}
		w.n++
	}
	l.open[k]++
	return "", ""
}

// release undoes admit's count of open connections; s.mu held.
func (s *Server) release(ip netip.Addr) {
	k := clientKey(ip)
	if s.lim.open[k]--; s.lim.open[k] <= 0 {
		delete(s.lim.open, k)
	}
}

// pregreetDone reports whether ip passed the pregreet test within the last
// day (postscreen's cache: a client is tested once a day, not per connection).
func (s *Server) pregreetDone(ip netip.Addr, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.lim.passed[clientKey(ip)]
	return ok && now.Before(until)
}

func (s *Server) pregreetPassed(ip netip.Addr, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lim.passed == nil {
		return
	}
	if len(s.lim.passed) >= maxTracked {
		prune(s.lim.passed, func(t time.Time) bool { return !now.Before(t) })
	}
	s.lim.passed[clientKey(ip)] = now.Add(pregreetTTL)
}

// prune drops the entries old says are stale, and if that frees nothing,
// arbitrary ones until a tenth of the room is free.
func prune[V any](m map[netip.Prefix]V, old func(V) bool) {
	for k, v := range m {
		if old(v) {
			delete(m, k)
		}
	}
	for k := range m {
		if len(m) < maxTracked*9/10 {
			break
		}
		delete(m, k)
	}
}
