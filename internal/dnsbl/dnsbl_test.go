package dnsbl

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"backupmx/internal/dnsres/dnstest"
)

func zones(t *testing.T, specs ...string) []Zone {
	t.Helper()
	var zs []Zone
	for _, s := range specs {
		z, err := ParseZone(s)
		if err != nil {
			t.Fatal(err)
		}
		zs = append(zs, z)
	}
	return zs
}

func TestQueryNames(t *testing.T) {
	for ip, want := range map[string]string{
		"192.0.2.99":     "99.2.0.192.bl.test.",
		"::ffff:1.2.3.4": "4.3.2.1.bl.test.",
		// RFC 5782 §2.4's example
		"2001:db8:1:2:3:4:567:89ab": "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.test.",
	} {
		if got := Query(netip.MustParseAddr(ip).Unmap(), "bl.test"); got != want {
			t.Errorf("Query(%s) = %s, want %s", ip, got, want)
		}
	}
}

func TestParseZone(t *testing.T) {
	z, err := ParseZone("Zen.Spamhaus.org.=127.0.0.2;127.0.0.8/29*2")
	if err != nil || z.Name != "zen.spamhaus.org" || z.Weight != 2 || len(z.Filter) != 2 {
		t.Fatalf("got %+v, %v", z, err)
	}
	if !z.listed(netip.MustParseAddr("127.0.0.10")) || z.listed(netip.MustParseAddr("127.0.0.3")) {
		t.Error("filter")
	}
	for _, bad := range []string{"", "*2", "bl.test*x", "bl.test=nope*1"} {
		if _, err := ParseZone(bad); err == nil {
			t.Errorf("ParseZone(%q) accepted", bad)
		}
	}
}

func TestCheck(t *testing.T) {
	dns := dnstest.Start(t,
		"2.0.0.127.a.test. 300 IN A 127.0.0.2",
		"2.0.0.127.b.test. 300 IN A 127.0.0.2",
		"3.0.0.127.a.test. 300 IN A 127.255.255.254", // Spamhaus: query refused
		"3.0.0.127.b.test. 300 IN A 127.0.0.4",
		"4.0.0.127.a.test. 300 IN A 10.0.0.1", // not in 127/8: not a listing
		"b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.a.test. 300 IN A 127.0.0.2",
	)
	c := &Checker{Zones: zones(t, "a.test*2", "b.test*1", "c.test*1"), Threshold: 2,
		Resolver: &DNS{Server: dns.Addr}, Budget: 2 * time.Second,
		Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")}}
	tests := []struct {
		ip     string
		score  int
		listed []string
		reject bool
	}{
		{"127.0.0.2", 3, []string{"a.test", "b.test"}, true},
		{"127.0.0.3", 1, []string{"b.test"}, false}, // 127.255.255.254 does not count
		{"127.0.0.4", 0, nil, false},
		{"127.0.0.5", 0, nil, false},
		{"127.0.0.9", 0, nil, false}, // allowed: never asked
		{"2001:db8:1:2:3:4:567:89ab", 2, []string{"a.test"}, true},
	}
	for _, tt := range tests {
		v := c.Check(context.Background(), netip.MustParseAddr(tt.ip))
		if v.Score != tt.score || !slices.Equal(v.Listed, tt.listed) || v.Reject != tt.reject || len(v.Failed) != 0 {
			t.Errorf("%s: got %+v, want score %d listed %v reject %v", tt.ip, v, tt.score, tt.listed, tt.reject)
		}
	}
	for _, q := range dns.Queries() {
		if slices.Contains([]string{"udp A 9.0.0.127.a.test.", "udp A 9.0.0.127.b.test."}, q) {
			t.Errorf("allowed client looked up: %s", q)
		}
	}
}

func TestCacheHonoursTTL(t *testing.T) {
	dns := dnstest.Start(t, "2.0.0.127.a.test. 60 IN A 127.0.0.2")
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := &Checker{Zones: zones(t, "a.test*1"), Threshold: 1, Resolver: &DNS{Server: dns.Addr},
		Now: func() time.Time { return now }}
	ip := netip.MustParseAddr("127.0.0.2")
	for range 2 {
		if v := c.Check(context.Background(), ip); !v.Reject {
			t.Fatalf("not rejected: %+v", v)
		}
	}
	if n := len(dns.Queries()); n != 1 {
		t.Fatalf("%d queries for two checks within the TTL, want 1", n)
	}
	now = now.Add(61 * time.Second)
	c.Check(context.Background(), ip)
	if n := len(dns.Queries()); n != 2 {
		t.Fatalf("%d queries after the TTL, want 2", n)
	}
}

func TestCacheIsBounded(t *testing.T) {
	c := &Checker{CacheSize: 10}
	now := time.Now()
	for i := range 100 {
		c.store(string(rune('a'+i)), entry{expires: now.Add(time.Hour)}, now)
	}
	if len(c.cache) > 10 {
		t.Fatalf("cache holds %d entries, cap 10", len(c.cache))
	}
}

// TestTimeoutFailsOpen: a server that never answers scores nothing, and the
// verdict says which zone failed.
func TestTimeoutFailsOpen(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // never read: no answer
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c := &Checker{Zones: zones(t, "a.test*2"), Threshold: 1, Resolver: &DNS{Server: pc.LocalAddr().String()},
		Budget: 100 * time.Millisecond}
	v := c.Check(context.Background(), netip.MustParseAddr("127.0.0.2"))
	if v.Reject || v.Score != 0 || !slices.Equal(v.Failed, []string{"a.test"}) {
		t.Fatalf("got %+v, want fail-open with a.test failed", v)
	}
}
