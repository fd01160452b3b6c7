package relay

import (
	"crypto/tls"
	"slices"
	"strings"
	"testing"

	"backupmx/internal/config"
	"backupmx/internal/store"
	"backupmx/internal/tlsconf/tlstest"
)

// policyClient is newTestClient with example.test's TLS policy set.
func policyClient(t *testing.T, policy, caFile string, primary string) *Client {
	t.Helper()
	c := &Client{Resolver: newTestClient(t).Resolver, Timeouts: tiny}
	c.Config = &config.Config{
		Hostname: "backup.ours.test",
		Domains:  []*config.Domain{{Name: "example.test", Primary: []string{primary}, TLS: policy, TLSCA: caFile}},
	}
	if err := c.Config.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// Each (policy, primary) pair is one entry: what the primary offers and
// whether mail goes, encrypted or not, or waits with a clear reason.
func TestTLSPolicies(t *testing.T) {
	ca := tlstest.NewCA(t)
	caFile := ca.WriteCA(t, t.TempDir())
	trusted := &tls.Config{Certificates: []tls.Certificate{ca.Certificate(t, "127.0.0.1", "mx.example.test")}}
	wrongName := &tls.Config{Certificates: []tls.Certificate{ca.Certificate(t, "127.0.0.2", "other.test")}}
	untrusted := &tls.Config{Certificates: []tls.Certificate{tlstest.NewCA(t).Certificate(t, "127.0.0.1")}}
	const noTLS, selfSigned = "none", "self-signed"
	tests := []struct {
		policy  string
		offer   string // noTLS, selfSigned, "untrusted", "trusted", "wrong-name", "refused", "garbage"
		wantTLS bool
		wantErr string // substring of the dial error; "" = delivered
	}{
		{policy: "may", offer: noTLS},
		{policy: "may", offer: selfSigned, wantTLS: true},
		{policy: "may", offer: "refused"},
		{policy: "may", offer: "garbage"}, // falls back to a plain connection
		{policy: "encrypt", offer: noTLS, wantErr: `tls = "encrypt": the host does not offer STARTTLS; not sending in plain text`},
		{policy: "encrypt", offer: "refused", wantErr: `tls = "encrypt": STARTTLS refused: 454 4.7.0`},
		{policy: "encrypt", offer: "garbage", wantErr: `tls = "encrypt": TLS handshake`},
		{policy: "encrypt", offer: selfSigned, wantTLS: true},
		{policy: "verify", offer: "untrusted", wantErr: `tls = "verify": TLS handshake: tls: failed to verify certificate: x509: certificate signed by unknown authority`},
		{policy: "verify", offer: "wrong-name", wantErr: `failed to verify certificate: x509: certificate is valid for 127.0.0.2, not 127.0.0.1`},
		{policy: "verify", offer: noTLS, wantErr: `does not offer STARTTLS`},
		{policy: "verify", offer: "trusted", wantTLS: true},
	}
	for _, tt := range tests {
		t.Run(tt.policy+"/"+tt.offer, func(t *testing.T) {
			ext := []string{"PIPELINING", "8BITMIME", "DSN", "STARTTLS"}
			cert := testTLSConfig(t)
			sc := script{}
			switch tt.offer {
			case noTLS:
				ext = ext[:3]
			case "trusted":
				cert = trusted
			case "wrong-name":
				cert = wrongName
			case "untrusted":
				cert = untrusted
			case "refused":
				sc["STARTTLS"] = "454 4.7.0 TLS not available"
			case "garbage":
				sc["STARTTLS"] = "tls-garbage"
			}
			f := startFakeTLS(t, "127.0.0.1", cert, sc, ext...)
			ca := ""
			if tt.policy == "verify" {
				ca = caFile
			}
			s, err := policyClient(t, tt.policy, ca, f.addr()).Dial(ctxT(t), "example.test")
			if tt.wantErr != "" {
				if err == nil {
					s.Close()
					t.Fatal("dialled without the TLS the policy requires")
				}
				if !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), f.addr()+": ") {
					t.Fatalf("error %q, want %q about %s", err, tt.wantErr, f.addr())
				}
				if slices.ContainsFunc(f.received(), func(l string) bool { return strings.HasPrefix(l, "MAIL") }) || f.connections() != 1 {
					t.Fatalf("policy %s broken: %d connections, dialogue %q", tt.policy, f.connections(), f.received())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			res, err := s.Send(ctxT(t), delivery("a@example.test"), strings.NewReader(body))
			if err != nil || len(res.Accepted) != 1 {
				t.Fatalf("send: %+v %v", res, err)
			}
			if got := s.TLS() != ""; got != tt.wantTLS {
				t.Fatalf("TLS() = %q, want TLS %v", s.TLS(), tt.wantTLS)
			}
			if tt.wantTLS && !strings.HasPrefix(s.TLS(), "TLS1.") {
				t.Fatalf("TLS() = %q", s.TLS())
			}
		})
	}
}

func TestXFORWARD(t *testing.T) {
	off := false
	tests := []struct {
		name     string
		ext      string // the XFORWARD keyword as offered; "" = not offered
		xforward *bool
		addr     string
		want     []string
	}{
		{name: "offered", ext: "XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT", addr: "192.0.2.9",
			want: []string{"XFORWARD NAME=client.example.net ADDR=192.0.2.9 PROTO=ESMTPS HELO=helo+2Bname SOURCE=REMOTE"}},
		{name: "IPv6 and only the offered attributes", ext: "XFORWARD ADDR HELO", addr: "2001:db8::1",
			want: []string{"XFORWARD ADDR=IPV6:2001:db8::1 HELO=helo+2Bname"}},
		{name: "not offered", addr: "192.0.2.9"},
		{name: "off for the domain", ext: "XFORWARD NAME ADDR PROTO HELO SOURCE", xforward: &off, addr: "192.0.2.9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ext := []string{"PIPELINING", "8BITMIME", "DSN"}
			if tt.ext != "" {
				ext = append(ext, tt.ext)
			}
			f := startFake(t, "127.0.0.1", script{"XFORWARD": "250 2.0.0 Ok"}, ext...)
			c := newTestClient(t, f.addr())
			c.Config.Domain("example.test").XForward = tt.xforward
			s, err := c.Dial(ctxT(t), "example.test")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			d := delivery("a@example.test")
			d.Envelope.Client = clientOf(tt.addr)
			if res, err := s.Send(ctxT(t), d, strings.NewReader(body)); err != nil || len(res.Accepted) != 1 {
				t.Fatalf("send: %+v %v", res, err)
			}
			var got []string
			for _, l := range f.received() {
				if strings.HasPrefix(l, "XFORWARD") {
					got = append(got, l)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("XFORWARD lines %q, want %q", got, tt.want)
			}
			if len(tt.want) > 0 {
				lines := f.received()
				if i := slices.Index(lines, tt.want[0]); i < 0 || !strings.HasPrefix(lines[i+1], "MAIL") {
					t.Fatalf("XFORWARD not right before MAIL: %q", lines)
				}
			}
		})
	}
}

func TestPipelining(t *testing.T) {
	for _, pipe := range []bool{true, false} {
		ext := []string{"8BITMIME", "DSN"}
		if pipe {
			ext = append(ext, "PIPELINING")
		}
		f := startFake(t, "127.0.0.1", nil, ext...)
		s, err := newTestClient(t, f.addr()).Dial(ctxT(t), "example.test")
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.Send(ctxT(t), delivery("a@example.test", "b@example.test", "c@example.test"), strings.NewReader(body))
		s.Close()
		if err != nil || len(res.Accepted) != 3 {
			t.Fatalf("send: %+v %v", res, err)
		}
		// Under PIPELINING, MAIL and every RCPT were read with the rest of
		// the group already there: one write, one round trip until DATA.
		var want []string
		if pipe {
			want = []string{"MAIL FROM:<s@sender.test> BODY=8BITMIME RET=HDRS ENVID=env+2B1",
				"RCPT TO:<a@example.test>", "RCPT TO:<b@example.test>", "RCPT TO:<c@example.test>"}
		}
		if got := f.pipelined(); !slices.Equal(got, want) {
			t.Errorf("pipelining=%v: lines that came in one write with others: %q, want %q", pipe, got, want)
		}
	}
}

// Without DSN at the primary, Result says so (the queue then owes the SUCCESS notices).
func TestNoDSNReported(t *testing.T) {
	for _, dsn := range []bool{true, false} {
		ext := []string{"8BITMIME"}
		if dsn {
			ext = append(ext, "DSN")
		}
		f := startFake(t, "127.0.0.1", nil, ext...)
		s, err := newTestClient(t, f.addr()).Dial(ctxT(t), "example.test")
		if err != nil {
			t.Fatal(err)
		}
		d := delivery("a@example.test")
		d.Recipients[0].Notify = "SUCCESS,FAILURE"
		d.Recipients[0].ORcpt = "rfc822;a@example.test"
		res, err := s.Send(ctxT(t), d, strings.NewReader(body))
		s.Close()
		if err != nil || res.NoDSN == dsn {
			t.Fatalf("DSN offered %v: NoDSN %v, err %v", dsn, res.NoDSN, err)
		}
		rcpt := f.transactions()[0].rcpts[0]
		if dsn != strings.Contains(rcpt, "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@example.test") {
			t.Fatalf("DSN offered %v: %q", dsn, rcpt)
		}
	}
}

func clientOf(addr string) store.Client {
	return store.Client{Addr: addr, Name: "client.example.net", HELO: "helo+name", Proto: "ESMTPS"}
}
