// Package dnsres builds the DNS resolver that every part of backupmx uses, and
// names the few lookups the rest of the program may make.
//
// Invariant: when a resolver address is configured, every query goes to that
// address and nowhere else (Go's own resolver, UDP first, TCP when the answer
// is truncated); the system resolver is used only when none is configured.
// Like any Go resolver it still reads /etc/hosts first for host and address
// lookups, as the system's nsswitch.conf says.
package dnsres

import (
	"context"
	"net"
	"time"
)

// Resolver is the narrow DNS seam: *net.Resolver satisfies it, and tests may
// pass a fake.
type Resolver interface {
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupHost(ctx context.Context, host string) ([]string, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

var _ Resolver = (*net.Resolver)(nil)

// dialTimeout bounds one connection to the configured server; the resolver's
// own timeout and attempts (resolv.conf) bound the query as a whole.
const dialTimeout = 5 * time.Second

// New returns a resolver that sends every query to addr ("host:port"), or
// net.DefaultResolver when addr is empty.
//
// The resolver is strict: a temporary failure of any part of a lookup (SERVFAIL,
// timeout) fails the whole lookup rather than returning a partial answer, so
// that mail is never routed on half an answer.
func New(addr string) *net.Resolver {
	if addr == "" {
		return net.DefaultResolver
	}
	d := net.Dialer{Timeout: dialTimeout}
	return &net.Resolver{
		PreferGo:     true,
		StrictErrors: true,
		// network is "udp" first, then "tcp" when the reply was truncated.
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
	}
}
