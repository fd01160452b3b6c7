package dnsbl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// DNS is the production Resolver: it sends each query to one server (the
// configured dns.resolver, as dnsres does), over UDP and TCP when the answer
// is truncated. Go's resolver hides TTLs, which the cache needs, hence miekg/dns.
type DNS struct {
	Server      string        // "host:port"
	NegativeTTL time.Duration // for NXDOMAIN without an SOA; 0: 5m
}

// NewDNS returns a resolver for server, or for the first nameserver of
// /etc/resolv.conf when server is empty.
func NewDNS(server string) (*DNS, error) {
	if server == "" {
		cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("dnsbl: %w", err)
		}
		if len(cc.Servers) == 0 {
			return nil, errors.New("dnsbl: no nameserver in /etc/resolv.conf")
		}
		server = net.JoinHostPort(cc.Servers[0], cc.Port)
	}
	return &DNS{Server: server}, nil
}

// LookupA asks for the A records of name.
func (d *DNS) LookupA(ctx context.Context, name string) ([]netip.Addr, time.Duration, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	r, _, err := (&dns.Client{}).ExchangeContext(ctx, m, d.Server)
	if err == nil && r.Truncated {
		r, _, err = (&dns.Client{Net: "tcp"}).ExchangeContext(ctx, m, d.Server)
	}
	if err != nil {
		return nil, 0, err
	}
	switch r.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
	default:
		return nil, 0, fmt.Errorf("dnsbl: %s: %s", name, dns.RcodeToString[r.Rcode])
	}
	var addrs []netip.Addr
	ttl := time.Duration(-1)
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			if ip, ok := netip.AddrFromSlice(a.A); ok {
				addrs = append(addrs, ip.Unmap())
				t := time.Duration(a.Hdr.Ttl) * time.Second
				if ttl < 0 || t < ttl {
					ttl = t
				}
			}
		}
	}
	if ttl < 0 { // no address: negative caching, RFC 2308 §5
		ttl = d.NegativeTTL
		if ttl <= 0 {
			ttl = 5 * time.Minute
		}
		for _, rr := range r.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				ttl = time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
			}
		}
	}
	return addrs, ttl, nil
}
