// Package dnsbl scores a client address against DNS blocklists (RFC 5782).
//
// Invariants:
//   - Only answers that pass a zone's filter count as listings; by default
//     that is 127.0.0.0/8 minus 127.255.255.0/24, so the error codes some lists
//     return to refused resolvers (Spamhaus 127.255.255.252–255) never count.
//   - Fail-open: a DNS error or the time budget running out scores nothing for
//     that zone; it is reported in the Verdict (and counted by the caller),
//     never turned into a rejection.
//   - Every zone is queried in parallel within one total budget per client,
//     and answers are cached for their TTL (capped), so a returning client
//     causes no query until the TTL has passed. The cache is bounded.
package dnsbl

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Zone is one blocklist: its DNS zone, the weight of a listing, and the
// answers that count as a listing.
type Zone struct {
	Name   string
	Weight int
	Filter []netip.Prefix // answers that count; nil: DefaultFilter
}

// defaultListed: any 127/8 answer except 127.255.255.0/24 (error codes).
func defaultListed(a netip.Addr) bool {
	return netip.MustParsePrefix("127.0.0.0/8").Contains(a) &&
		!netip.MustParsePrefix("127.255.255.0/24").Contains(a)
}

// ParseZone reads "zone", "zone*weight", "zone=filter*weight" where filter is
// an address or a prefix, several joined by ";"
// ("zen.spamhaus.org=127.0.0.2;127.0.0.4/30*2"). The default weight is 1.
func ParseZone(s string) (Zone, error) {
	z := Zone{Weight: 1}
	spec := strings.TrimSpace(s)
	if i := strings.LastIndexByte(spec, '*'); i >= 0 {
		w, err := strconv.Atoi(spec[i+1:])
		if err != nil || w < 0 {
			return Zone{}, fmt.Errorf("%q: bad weight", s)
		}
		z.Weight, spec = w, spec[:i]
	}
	if i := strings.IndexByte(spec, '='); i >= 0 {
		for _, f := range strings.Split(spec[i+1:], ";") {
			p, err := netip.ParsePrefix(f)
			if err != nil {
				a, err2 := netip.ParseAddr(f)
				if err2 != nil {
					return Zone{}, fmt.Errorf("%q: bad answer filter %q", s, f)
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			z.Filter = append(z.Filter, p)
		}
		spec = spec[:i]
	}
	z.Name = strings.ToLower(strings.Trim(spec, "."))
	if z.Name == "" || strings.ContainsAny(z.Name, " \t") {
		return Zone{}, fmt.Errorf("%q: bad zone name", s)
	}
	return z, nil
}

func (z Zone) listed(a netip.Addr) bool {
	if z.Filter == nil {
		return defaultListed(a)
	}
	return slices.ContainsFunc(z.Filter, func(p netip.Prefix) bool { return p.Contains(a) })
}

// Resolver answers A queries with the records' TTL; a name that does not
// exist is no error: no addresses and the negative TTL.
type Resolver interface {
	LookupA(ctx context.Context, name string) ([]netip.Addr, time.Duration, error)
}

// Verdict is the result for one client.
type Verdict struct {
	Score  int
	Listed []string // zones that listed the client, in configuration order
	Failed []string // zones whose lookup failed or timed out (not scored)
	Reject bool     // Score reached the threshold
}

// Checker scores clients. Set the fields, then call Check from any goroutine;
// the fields must not change afterwards.
type Checker struct {
	Zones     []Zone
	Threshold int            // reject at Score >= Threshold; 0: never
	Allow     []netip.Prefix // never checked
	Resolver  Resolver
	Budget    time.Duration    // total time per client; 0: 5s
	Now       func() time.Time // nil: time.Now
	MaxTTL    time.Duration    // cap on cached TTLs; 0: 1h
	CacheSize int              // entries; 0: 100000

	mu    sync.Mutex
	cache map[string]entry
}

type entry struct {
	listed  []netip.Addr
	expires time.Time
}

// Check queries every zone for ip in parallel and returns the verdict.
func (c *Checker) Check(ctx context.Context, ip netip.Addr) Verdict {
	var v Verdict
	ip = ip.Unmap()
	if !ip.IsValid() || len(c.Zones) == 0 || slices.ContainsFunc(c.Allow, func(p netip.Prefix) bool { return p.Contains(ip) }) {
		return v
	}
	budget := c.Budget
	if budget <= 0 {
		budget = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	type result struct {
		addrs []netip.Addr
		err   error
	}
	results := make([]result, len(c.Zones))
	var wg sync.WaitGroup
	for i, z := range c.Zones {
		name := Query(ip, z.Name)
		wg.Go(func() {
			a, err := c.lookup(ctx, name)
			results[i] = result{a, err}
		})
	}
	wg.Wait()
	for i, z := range c.Zones {
		r := results[i]
		if r.err != nil {
			v.Failed = append(v.Failed, z.Name)
			continue
		}
		if slices.ContainsFunc(r.addrs, z.listed) {
			v.Score += z.Weight
			v.Listed = append(v.Listed, z.Name)
		}
	}
	v.Reject = c.Threshold > 0 && v.Score >= c.Threshold
	return v
}

// lookup answers from the cache or asks the resolver and caches the answer.
func (c *Checker) lookup(ctx context.Context, name string) ([]netip.Addr, error) {
	now := c.now()
	c.mu.Lock()
	e, ok := c.cache[name]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.listed, nil
	}
	addrs, ttl, err := c.Resolver.LookupA(ctx, name)
	if err != nil {
		return nil, err
	}
	maxTTL := c.MaxTTL
	if maxTTL <= 0 {
		maxTTL = time.Hour
	}
	ttl = min(ttl, maxTTL)
	if ttl > 0 {
		c.store(name, entry{listed: addrs, expires: now.Add(ttl)}, now)
	}
	return addrs, nil
}

// store adds an entry; when the cache is full it drops expired entries, and
// if that is not enough, arbitrary ones (map order), so it stays bounded.
func (c *Checker) store(name string, e entry, now time.Time) {
	size := c.CacheSize
	if size <= 0 {
		size = 100000
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cache == nil {
		c.cache = make(map[string]entry)
	}
	if len(c.cache) >= size {
		for k, old := range c.cache {
			if !now.Before(old.expires) || len(c.cache) >= size {
				delete(c.cache, k)
			}
		}
	}
	c.cache[name] = e
}

func (c *Checker) now() time.Time {
	if c.Now == nil {
		return time.Now()
	}
	return c.Now()
}

// Query returns the name to look up for ip in zone (RFC 5782 §2.1 and §2.4):
// the IPv4 octets reversed, or the 32 nibbles of an IPv6 address reversed.
func Query(ip netip.Addr, zone string) string {
	var b strings.Builder
	if ip.Is4() {
		a := ip.As4()
		fmt.Fprintf(&b, "%d.%d.%d.%d.", a[3], a[2], a[1], a[0])
	} else {
		a := ip.As16()
		const hex = "0123456789abcdef"
		for i := len(a) - 1; i >= 0; i-- {
			b.WriteByte(hex[a[i]&0xf])
			b.WriteByte('.')
			b.WriteByte(hex[a[i]>>4])
			b.WriteByte('.')
		}
	}
	b.WriteString(zone)
	b.WriteByte('.')
	return b.String()
}
