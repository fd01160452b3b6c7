package smtpd

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"backupmx/internal/dnsres"
	"backupmx/internal/dnsres/dnstest"
)

// TestNameCache: a name is kept nameTTL, its lack noNameTTL; a full cache
// drops what expired, or everything.
func TestNameCache(t *testing.T) {
	var c nameCache
	t0 := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.2")
	c.put(a, "mx.example.test", t0)
	c.put(b, "", t0)
	for _, tc := range []struct {
		ip   netip.Addr
		at   time.Duration
		name string
		ok   bool
	}{
		{a, 0, "mx.example.test", true},
		{a, nameTTL - time.Second, "mx.example.test", true},
		{a, nameTTL, "", false},
		{b, noNameTTL - time.Second, "", true},
		{b, noNameTTL, "", false},
		{netip.MustParseAddr("192.0.2.3"), 0, "", false},
	} {
		name, ok := c.get(tc.ip, t0.Add(tc.at))
		if name != tc.name || ok != tc.ok {
			t.Errorf("get(%v, +%v) = %q, %v; want %q, %v", tc.ip, tc.at, name, ok, tc.name, tc.ok)
		}
	}
	// Full: the expired b goes first; then everything.
	for i := range maxNameCache - 2 {
		c.put(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), "n", t0)
	}
	c.put(netip.MustParseAddr("192.0.2.9"), "n", t0.Add(noNameTTL))
	if _, ok := c.m[b]; ok || len(c.m) != maxNameCache {
		t.Fatalf("after an insert into a full cache: %d entries, b kept: %v", len(c.m), ok)
	}
	c.put(netip.MustParseAddr("192.0.2.10"), "n", t0.Add(noNameTTL))
	if len(c.m) != 1 {
		t.Fatalf("after an insert into a full cache with nothing expired: %d entries, want 1", len(c.m))
	}
}

// TestVerifiedNameCached: a client's name is looked up once, then served
// from the cache until it expires.
func TestVerifiedNameCached(t *testing.T) {
	srv := dnstest.Start(t,
		"2.0.0.127.in-addr.arpa. 60 IN PTR mx1.example.test.",
		"mx1.example.test. 60 IN A 127.0.0.2",
	)
	now := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	s := &Server{Resolver: dnsres.New(srv.Addr), Now: func() time.Time { return now }}
	ip := netip.MustParseAddr("127.0.0.2")
	ptrs := func() int {
		n := 0
		for _, q := range srv.Queries() {
			if strings.Contains(q, "PTR") {
				n++
			}
		}
		return n
	}
	for range 3 {
		if name := s.verifiedName(ip); name != "mx1.example.test" {
			t.Fatalf("verifiedName = %q", name)
		}
	}
	if n := ptrs(); n != 1 {
		t.Fatalf("%d PTR queries for three connections, want 1", n)
	}
	// A connection from a cached address takes the name without a look-up
	// goroutine.
	c := &conn{s: s, ip: ip}
	if name := c.clientName(); name != "mx1.example.test" || c.nameDone != doneChan || ptrs() != 1 {
		t.Fatalf("cached connection: name %q, own look-up %v, %d PTR queries", name, c.nameDone != doneChan, ptrs())
	}
	now = now.Add(nameTTL)
	s.verifiedName(ip)
	if n := ptrs(); n != 2 {
		t.Fatalf("%d PTR queries after the name expired, want 2", n)
	}
}
