package smtpd

import (
	"net/netip"
	"sync"
	"time"
)

// Reverse names are kept for a while: the same senders connect again and
// again, and each look-up was a PTR and an A/AAAA query (2% of the CPU at
// one connection per message, with the resolver on loopback). A name is kept
// nameTTL, the lack of one (no PTR, no match, a failed look-up) noNameTTL.
const (
	nameTTL      = 10 * time.Minute
	noNameTTL    = time.Minute
	maxNameCache = 10000
)

// nameCache maps client addresses to their verified names.
type nameCache struct {
	mu sync.Mutex
	m  map[netip.Addr]cachedName
}

type cachedName struct {
	name    string
	expires time.Time
}

func (c *nameCache) get(ip netip.Addr, now time.Time) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[ip]
	if !ok || !now.Before(e.expires) {
		return "", false
	}
	return e.name, true
}

func (c *nameCache) put(ip netip.Addr, name string, now time.Time) {
	ttl := nameTTL
	if name == "" {
		ttl = noNameTTL
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[netip.Addr]cachedName)
	}
	if len(c.m) >= maxNameCache {
		for k, e := range c.m {
			if !now.Before(e.expires) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= maxNameCache {
			clear(c.m)
		}
	}
	c.m[ip] = cachedName{name: name, expires: now.Add(ttl)}
}

// verifiedName returns ip's reverse DNS name if that name resolves back to
// ip (forward-confirmed), else "". Answers are cached (nameCache).
func (s *Server) verifiedName(ip netip.Addr) string {
	if name, ok := s.knownName(ip); ok {
		return name
	}
	name := s.lookupName(ip)
	s.names.put(ip, name, s.now())
	return name
}

// knownName answers for ip without DNS when it can: from the cache, or ""
// for an address that is not one.
func (s *Server) knownName(ip netip.Addr) (string, bool) {
	if !ip.IsValid() {
		return "", true
	}
	return s.names.get(ip, s.now())
}
