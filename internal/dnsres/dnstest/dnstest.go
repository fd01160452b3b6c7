// Package dnstest runs a tiny authoritative DNS server on loopback for tests.
//
// Invariant: it listens on 127.0.0.1 only (UDP and TCP on the same port) and
// answers only from the records it was given: a name it holds with no record of
// the asked type gets NODATA, any other name NXDOMAIN. Nothing is forwarded.
package dnstest

import (
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Server is a running test DNS server.
type Server struct {
	Addr string // "127.0.0.1:port", for dnsres.New

	mu       sync.Mutex
	records  map[string][]dns.RR // by lower-case FQDN
	truncate map[string]bool     // names answered truncated over UDP
	queries  []string            // "udp MX example.test." in arrival order
}

// Start serves the records, written in zone-file syntax with absolute names
// ("example.test. 60 IN MX 10 mx1.example.test."), until the test ends.
func Start(t testing.TB, records ...string) *Server {
	t.Helper()
	s := &Server{records: make(map[string][]dns.RR), truncate: make(map[string]bool)}
	for _, r := range records {
		s.Add(t, r)
	}
	var (
		pc net.PacketConn
		ln net.Listener
	)
	for range 20 { // UDP and TCP must share a port; retry if TCP's is taken
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("dnstest: no free port for both UDP and TCP")
	}
	s.Addr = pc.LocalAddr().String()
	udp := &dns.Server{PacketConn: pc, Handler: s.handler("udp")}
	tcp := &dns.Server{Listener: ln, Handler: s.handler("tcp")}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	t.Cleanup(func() {
		udp.Shutdown()
		tcp.Shutdown()
	})
	return s
}

// Add adds one record in zone-file syntax.
func (s *Server) Add(t testing.TB, record string) {
	t.Helper()
	rr, err := dns.NewRR(record)
	if err != nil {
		t.Fatalf("dnstest: %q: %v", record, err)
	}
	name := strings.ToLower(rr.Header().Name)
	s.mu.Lock()
	s.records[name] = append(s.records[name], rr)
	s.mu.Unlock()
}

// Truncate makes UDP answers for name come back with the TC bit and no
// records, so that the client must ask again over TCP.
func (s *Server) Truncate(name string) {
	s.mu.Lock()
	s.truncate[strings.ToLower(dns.Fqdn(name))] = true
	s.mu.Unlock()
}

// Queries returns the questions received so far, as "udp MX example.test.".
func (s *Server) Queries() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.queries...)
}

func (s *Server) handler(network string) dns.HandlerFunc {
	return func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		if len(req.Question) != 1 {
			m.Rcode = dns.RcodeFormatError
			w.WriteMsg(m)
			return
		}
		q := req.Question[0]
		name := strings.ToLower(q.Name)
		s.mu.Lock()
		s.queries = append(s.queries, network+" "+dns.TypeToString[q.Qtype]+" "+name)
		rrs, known := s.records[name]
		trunc := s.truncate[name] && network == "udp"
		s.mu.Unlock()
		switch {
		case trunc:
			m.Truncated = true
		case !known:
			m.Rcode = dns.RcodeNameError
		default:
			for _, rr := range rrs {
				if rr.Header().Rrtype == q.Qtype {
					m.Answer = append(m.Answer, dns.Copy(rr))
				}
			}
		}
		w.WriteMsg(m)
	}
}
