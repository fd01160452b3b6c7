package smtpd

import (
	"context"
	"net"
	"net/netip"
	"strings"

	"backupmx/internal/config"
)

// etrn answers ETRN (RFC 1985): a primary asks us to flush its domain now.
//
// Only a domain we serve, and only from one of that domain's primary
// addresses, may be flushed. Codes, RFC 1985 §5: 250 started; 458 unable to
// queue (unknown domain, the "@domain" subdomain form and flush failures);
// 459 node not allowed (the client is not a primary of the domain: 459 is the
// code RFC 1985 defines for this; it is 4xx, which is harmless as ETRN moves
// no mail); 501 syntax, including "#queue" names, which we do not have.
func (s *Server) etrn(ip netip.Addr, arg string) string {
	reply := s.etrnReply(ip, arg)
	if strings.HasPrefix(reply, "459") {
		s.rejected(ip, "etrn_unauthorized", reply, "node", arg)
		return reply
	}
	s.log().Info("etrn", "client", ip.String(), "node", arg, "reply", reply)
	return reply
}

func (s *Server) etrnReply(ip netip.Addr, arg string) string {
	switch {
	case arg == "" || strings.ContainsAny(arg, " \t"):
		return "501 5.5.4 Syntax: ETRN <domain>"
	case strings.HasPrefix(arg, "#"):
		return "501 5.5.4 Queue names are not supported: ETRN <domain>"
	case strings.HasPrefix(arg, "@"):
		return "458 4.0.0 Unable to queue messages for node " + arg
	}
	name, err := config.NormalizeDomain(arg)
	if err != nil || name == "" {
		return "501 5.5.4 Syntax: ETRN <domain>"
	}
	d := s.Config.Domain(name)
	if d == nil {
		return "458 4.0.0 Unable to queue messages for node " + name
	}
	if !s.isPrimary(ip, d) {
		return "459 4.7.1 " + name + ": not allowed"
	}
	if s.ETRN == nil {
		return "458 4.0.0 Unable to queue messages for node " + name
	}
	if err := s.ETRN(name); err != nil {
		s.log().Warn("etrn failed", "node", name, "error", err)
		return "458 4.0.0 Unable to queue messages for node " + name
	}
	return "250 2.0.0 Queuing for node " + name + " started"
}

// isPrimary reports whether ip is an address of one of d's primaries: the
// configured hosts (literal IPs compared directly), or else the domain's MX
// hosts more preferred than ours.
func (s *Server) isPrimary(ip netip.Addr, d *config.Domain) bool {
	if !ip.IsValid() {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	var hosts []string
	for _, hp := range d.Primary {
		if h, _, err := net.SplitHostPort(hp); err == nil {
			hosts = append(hosts, h)
		}
	}
	if len(d.Primary) == 0 {
		hosts = s.primaryMX(ctx, d.Name)
	}
	for _, h := range hosts {
		if a, err := netip.ParseAddr(h); err == nil {
			if a.Unmap() == ip {
				return true
			}
			continue
		}
		if s.resolvesTo(ctx, h, ip) {
			return true
		}
	}
	return false
}

// primaryMX returns the MX hosts of domain more preferred than our own
// (Config.Hostname); all but ours if we are not listed.
func (s *Server) primaryMX(ctx context.Context, domain string) []string {
	mxs, err := s.resolver().LookupMX(ctx, domain)
	if err != nil {
		s.log().Debug("mx lookup failed", "domain", domain, "error", err)
		return nil
	}
	ours := -1
	for _, mx := range mxs {
		if sameHost(mx.Host, s.Config.Hostname) && (ours < 0 || int(mx.Pref) < ours) {
			ours = int(mx.Pref)
		}
	}
	var hosts []string
	for _, mx := range mxs {
		if !sameHost(mx.Host, s.Config.Hostname) && (ours < 0 || int(mx.Pref) < ours) {
			hosts = append(hosts, strings.TrimSuffix(mx.Host, "."))
		}
	}
	return hosts
}

func sameHost(a, b string) bool {
	return strings.EqualFold(strings.TrimSuffix(a, "."), strings.TrimSuffix(b, "."))
}

func (s *Server) resolvesTo(ctx context.Context, host string, ip netip.Addr) bool {
	addrs, err := s.resolver().LookupHost(ctx, host)
	if err != nil {
		s.log().Debug("host lookup failed", "host", host, "error", err)
	}
	for _, a := range addrs {
		if pa, err := netip.ParseAddr(a); err == nil && pa.Unmap() == ip {
			return true
		}
	}
	return false
}

// lookupName asks DNS for ip's forward-confirmed reverse name.
func (s *Server) lookupName(ip netip.Addr) string {
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	names, err := s.resolver().LookupAddr(ctx, ip.String())
	if err != nil {
		return ""
	}
	for _, n := range names[:min(len(names), 5)] {
		if s.resolvesTo(ctx, n, ip) {
			return strings.TrimSuffix(n, ".")
		}
	}
	return ""
}

// trusted reports a client in Config.SMTP.Trusted (trusted_networks).
func (s *Server) trusted(ip netip.Addr) bool {
	for _, p := range s.Config.SMTP.Trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
