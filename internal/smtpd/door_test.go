package smtpd

import (
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"backupmx/internal/config"
	"backupmx/internal/dnsbl"
	"backupmx/internal/dnsres/dnstest"
	"backupmx/internal/recipients"
)

// dialFrom connects from a chosen loopback address (127.0.0.2, …) and checks
// the greeting.
func dialFrom(t *testing.T, addr, local string) *client {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &client{t: t, conn: nc}
	c.text = textproto.NewConn(nc)
	c.expect("220 mx2.backup.test ESMTP")
	return c
}

// foreign lists RCPT forms that must never be accepted: each is a relay
// attempt or names a domain we do not serve.
var foreign = []string{
	"u@other.test",
	"u@OTHER.TEST",
	"u@other.test.",
	"u@sub.example.test",        // unconfigured subdomain
	"u@example.test.other.test", // ours as a label of theirs
	"u@example.test@other.test", // two @
	"u@other.test@example.test", // two @, ours last
	"u%other.test@example.test", // percent hack
	"u%other.test%example.test@example.test",
	"other.test!u@example.test",   // bang path
	"other.test!u",                // bang path, no domain
	`"u@other.test"@example.test`, // quoted @
	`"u%other.test"@example.test`, // quoted %
	`"other.test!u"@example.test`, // quoted !
	"@example.test:u@other.test",  // source route, foreign final
	"@other.test,@b.test:u@example.test",
	"u@[192.0.2.1]", // address literal
	"u@[127.0.0.1]",
	"u@[IPv6:::1]",
	"u@localhost",
	"u",
	"u@",
	"@example.test",
	"u@xn--other.test",      // bad A-label
	"u@exa mple.test",       // space
	"u@bücher.other.test",   // IDN not ours
	"u@xn--bcher-kva.other", // ditto, A-label
}

// TestRelayBattery: not one foreign destination accepted, one RCPT at a
// time, all pipelined in one write, and after an RSET that closed a valid
// transaction.
func TestRelayBattery(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.SMTP.MaxBadCommands = 1000 })
	t.Run("one by one", func(t *testing.T) {
		c := dial(t, ts.addr)
		c.run(cmd("EHLO c.test", "250"), cmd("MAIL FROM:<s@x.test> SMTPUTF8", "250"))
		for _, f := range foreign {
			c.run(step{send: "RCPT TO:<" + f + ">\r\n"})
			if got := c.read(); !strings.HasPrefix(got, "5") {
				t.Errorf("RCPT TO:<%s>: %q, want 5xx", f, got)
			}
		}
		c.run(cmd("DATA", "502"), cmd("QUIT", "221"))
	})
	t.Run("pipelined", func(t *testing.T) {
		c := dial(t, ts.addr)
		c.run(cmd("EHLO c.test", "250"))
		var b strings.Builder
		b.WriteString("MAIL FROM:<s@x.test> SMTPUTF8\r\n")
		for _, f := range foreign {
			b.WriteString("RCPT TO:<" + f + ">\r\n")
		}
		b.WriteString("DATA\r\n")
		c.run(step{send: b.String(), want: []string{"250"}})
		for _, f := range foreign {
			if got := c.read(); !strings.HasPrefix(got, "5") {
				t.Errorf("pipelined RCPT TO:<%s>: %q, want 5xx", f, got)
			}
		}
		c.run(step{want: []string{"502"}}, cmd("QUIT", "221"))
	})
	t.Run("after RSET", func(t *testing.T) {
		c := dial(t, ts.addr)
		c.run(cmd("EHLO c.test", "250"))
		for _, f := range foreign {
			c.run(cmd("MAIL FROM:<s@x.test> SMTPUTF8", "250"), cmd("RCPT TO:<u@example.test>", "250"), cmd("RSET", "250"),
				cmd("MAIL FROM:<s@x.test> SMTPUTF8", "250"))
			c.run(step{send: "RCPT TO:<" + f + ">\r\nDATA\r\n"})
			if got := c.read(); !strings.HasPrefix(got, "5") {
				t.Errorf("after RSET, RCPT TO:<%s>: %q, want 5xx", f, got)
			}
			c.run(step{want: []string{"502"}}, cmd("RSET", "250"))
		}
	})
	if m := ts.store.all(); len(m) != 0 {
		t.Fatalf("queued %d messages, want none", len(m))
	}
	if n := ts.stats().Snapshot()["relay"]; n == 0 {
		t.Error("relay refusals not counted")
	}
}

// TestIDN: the U-label and A-label spellings of a customer domain, in any
// case and with a trailing dot, are the same domain.
func TestIDN(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) {
		c.Domains = append(c.Domains, &config.Domain{Name: "Bücher.test"})
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
	})
	c := dial(t, ts.addr)
	c.run(cmd("EHLO c.test", "250"), cmd("MAIL FROM:<s@x.test> SMTPUTF8", "250"))
	for _, r := range []string{"a@bücher.test", "b@BÜCHER.TEST.", "c@xn--bcher-kva.test", "d@XN--BCHER-KVA.TEST"} {
		c.run(cmd("RCPT TO:<"+r+">", "250"))
	}
	c.run(cmd("DATA", "354"), step{send: "Subject: x\r\n\r\nhi\r\n.\r\n", want: []string{"250 2.0.0"}}, cmd("QUIT", "221"))
	m := ts.store.all()
	if len(m) != 1 || len(m[0].env.Domains) != 1 || len(m[0].env.Domains["xn--bcher-kva.test"]) != 4 {
		t.Fatalf("domains %v, want the 4 recipients under xn--bcher-kva.test", m[0].env.Domains)
	}
}

// dnsblServer serves baseConfig with the blocklists zones over dns.
func dnsblServer(t *testing.T, dnsAddr string, budget time.Duration, zones ...string) *testServer {
	t.Helper()
	ts := buildTestServer(t)
	var zs []dnsbl.Zone
	for _, z := range zones {
		pz, err := dnsbl.ParseZone(z)
		if err != nil {
			t.Fatal(err)
		}
		zs = append(zs, pz)
	}
	ts.DNSBL = &dnsbl.Checker{Zones: zs, Threshold: 2, Resolver: &dnsbl.DNS{Server: dnsAddr}, Budget: budget}
	return ts.start(t)
}

func TestDNSBL(t *testing.T) {
	dns := dnstest.Start(t,
		"1.0.0.127.a.test. 300 IN A 127.0.0.2",
		"1.0.0.127.b.test. 300 IN A 127.0.0.3",
		"2.0.0.127.a.test. 300 IN A 127.0.0.2",
		"3.0.0.127.a.test. 300 IN A 127.0.0.2",
		"3.0.0.127.b.test. 300 IN A 127.255.255.254", // an error code, not a listing
	)
	ts := dnsblServer(t, dns.Addr, 2*time.Second, "a.test*1", "b.test*1")

	// Listed in both (1+1 = 2): refused at MAIL, zones named, nothing further.
	c := dial(t, ts.addr)
	c.run(cmd("EHLO c.test", "250"))
	c.run(step{send: "MAIL FROM:<s@x.test>\r\n"})
	if got := c.read(); !strings.HasPrefix(got, "554 5.7.1") || !strings.Contains(got, "a.test, b.test") {
		t.Fatalf("listed client: %q, want 554 5.7.1 naming a.test, b.test", got)
	}
	c.run(cmd("RCPT TO:<u@example.test>", "502"), cmd("DATA", "502"), cmd("QUIT", "221"))

	// Score 1 (one zone; or a second zone answering 127.255.255.254): accepted.
	for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
		c := dialFrom(t, ts.addr, ip)
		c.run(transaction("s@x.test", "u@example.test")...)
		c.run(cmd("QUIT", "221"))
	}

	// The cache: a second connection from the listed client asks nothing.
	before := len(dns.Queries())
	c = dial(t, ts.addr)
	c.run(cmd("EHLO c.test", "250"), cmd("MAIL FROM:<s@x.test>", "554 5.7.1"), cmd("QUIT", "221"))
	if after := dns.Queries(); len(after) != before {
		t.Errorf("second connection queried %v", after[before:])
	}
	if n := ts.stats().Snapshot()["dnsbl"]; n != 2 {
		t.Errorf("dnsbl rejections counted %d, want 2", n)
	}
}

// TestDNSBLTimeoutFailsOpen: a blocklist that does not answer lets the mail
// in, and the failure is counted.
func TestDNSBLTimeoutFailsOpen(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // never answers
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ts := dnsblServer(t, pc.LocalAddr().String(), 100*time.Millisecond, "a.test*2")
	c := dial(t, ts.addr)
	c.run(transaction("s@x.test", "u@example.test")...)
	c.run(cmd("DATA", "354"), step{send: "\r\nhi\r\n.\r\n", want: []string{"250 2.0.0"}}, cmd("QUIT", "221"))
	if n := ts.stats().Snapshot()["dnsbl_error"]; n != 1 {
		t.Errorf("dnsbl_error = %d, want 1", n)
	}
}

// closedPort returns a loopback address nobody listens on: on an address of
// its own, so that no listener of the test (all on 127.0.0.1) can be given
// the closed port again.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.77:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestRecipients over SMTP: a static list answers 550 5.1.1 for others; a
// primary we cannot reach with unknown = "tempfail" answers 450, never 5xx.
func TestRecipients(t *testing.T) {
	down := closedPort(t)
	ts := buildTestServer(t, func(c *config.Config) {
		c.Domain("example.test").Recipients = []string{"alice"}
		d := c.Domain("second.test")
		d.Verify, d.Unknown, d.Primary = "primary", "tempfail", []string{down}
	})
	v, err := recipients.New(ts.Config, &recipients.SMTPCallout{Config: ts.Config, Timeout: time.Second}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	ts.Recipients = v
	ts.start(t)
	c := dial(t, ts.addr)
	c.run(transaction("s@x.test", "alice@example.test", "ALICE@example.test", "u@bymx.test")...)
	c.run(cmd("RCPT TO:<bob@example.test>", "550 5.1.1"),
		cmd("RCPT TO:<carol@second.test>", "450 4.1.1"), cmd("QUIT", "221"))
	st := ts.stats().Snapshot()
	if st["unknown_recipient"] != 1 || st["unverified_recipient"] != 1 {
		t.Errorf("counters %v", st)
	}
}

func TestConnectionLimits(t *testing.T) {
	t.Run("per IP", func(t *testing.T) {
		ts := newTestServer(t, func(c *config.Config) { c.SMTP.MaxConnectionsPerIP = 2 })
		dial(t, ts.addr)
		dial(t, ts.addr)
		third := rawDial(t, ts.addr, "127.0.0.1")
		if got := third.read(); !strings.HasPrefix(got, "421 4.7.0") {
			t.Fatalf("third connection: %q, want 421", got)
		}
		dialFrom(t, ts.addr, "127.0.0.2").run(cmd("QUIT", "221")) // another client is served
	})
	t.Run("total", func(t *testing.T) {
		ts := newTestServer(t, func(c *config.Config) { c.SMTP.MaxConnections = 1 })
		dial(t, ts.addr)
		if got := rawDial(t, ts.addr, "127.0.0.2").read(); !strings.HasPrefix(got, "421 4.7.0") {
			t.Fatalf("second connection: %q, want 421", got)
		}
	})
	t.Run("rate per IP", func(t *testing.T) {
		ts := newTestServer(t, func(c *config.Config) { c.SMTP.ConnectionRatePerIP = 3 })
		for range 3 {
			dial(t, ts.addr).run(cmd("QUIT", "221"))
		}
		if got := rawDial(t, ts.addr, "127.0.0.1").read(); !strings.HasPrefix(got, "421 4.7.0") {
			t.Fatalf("fourth connection in a minute: %q, want 421", got)
		}
		dialFrom(t, ts.addr, "127.0.0.2").run(cmd("QUIT", "221"))
		if n := ts.stats().Snapshot()["connection_rate_per_ip"]; n != 1 {
			t.Errorf("connection_rate_per_ip = %d, want 1", n)
		}
	})
}

// rawDial connects without reading the greeting.
func rawDial(t *testing.T, addr, local string) *client {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, conn: nc, text: textproto.NewConn(nc)}
}

func TestSessionRules(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.SMTP.MaxBadCommands = 3 })
	c := dial(t, ts.addr)
	c.run(cmd("XCLIENT ADDR=192.0.2.1", "550 5.7.0"), cmd("XFORWARD ADDR=192.0.2.1", "550 5.7.0"),
		cmd("MAIL FROM:<s@x.test>", "503 5.5.1"), cmd("NOOP", "421 4.7.0"))
	if !c.closed() {
		t.Error("connection open after 421")
	}
	st := ts.stats().Snapshot()
	for _, rule := range []string{"xclient", "xforward", "helo_required", "max_bad_commands"} {
		if st[rule] != 1 {
			t.Errorf("%s counted %d, want 1 (%v)", rule, st[rule], st)
		}
	}
}

func TestMaxRecipientsCounted(t *testing.T) {
	ts := newTestServer(t)
	c := dial(t, ts.addr)
	c.run(transaction("s@x.test", "a@example.test", "b@example.test", "c@example.test", "d@example.test", "e@example.test")...)
	c.run(cmd("RCPT TO:<f@example.test>", "452 4.5.3"), cmd("QUIT", "221"))
	if n := ts.stats().Snapshot()["max_recipients"]; n != 1 {
		t.Errorf("max_recipients = %d, want 1", n)
	}
}

// TestPregreet: a client that talks before the greeting is refused; one
// that waits is greeted, and is not made to wait again.
func TestPregreet(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.SMTP.PregreetWait = config.Duration(300 * time.Millisecond) })
	early := rawDial(t, ts.addr, "127.0.0.2")
	io.WriteString(early.conn, "EHLO spam.test\r\n")
	if got := early.read(); !strings.HasPrefix(got, "554 5.5.1") {
		t.Fatalf("pregreet: %q, want 554 5.5.1", got)
	}
	if !early.closed() {
		t.Error("connection open after the pregreet refusal")
	}
	dial(t, ts.addr).run(cmd("EHLO c.test", "250"), cmd("QUIT", "221"))
	if !ts.pregreetDone(netip.MustParseAddr("127.0.0.1"), ts.now()) {
		t.Error("a client that waited is not remembered")
	}
	if ts.pregreetDone(netip.MustParseAddr("127.0.0.2"), ts.now()) {
		t.Error("the early talker passed")
	}
}

// TestFlood: 2,000 connections from one address leave the server answering
// another client.
func TestFlood(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) {
		c.SMTP.MaxConnections = 50
		c.SMTP.MaxConnectionsPerIP = 10
		c.SMTP.ConnectionRatePerIP = 0
	})
	var (
		mu   sync.Mutex
		held []net.Conn
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 32)
	)
	for range 2000 {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			nc, err := net.Dial("tcp", ts.addr)
			if err != nil {
				return
			}
			nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 64)
			n, _ := nc.Read(buf)
			if strings.HasPrefix(string(buf[:n]), "220") {
				mu.Lock()
				held = append(held, nc) // keep the slot busy
				mu.Unlock()
				return
			}
			nc.Close()
		})
	}
	wg.Wait()
	defer func() {
		for _, nc := range held {
			nc.Close()
		}
	}()
	if len(held) != 10 {
		t.Errorf("flooder holds %d sessions, want 10", len(held))
	}
	c := dialFrom(t, ts.addr, "127.0.0.2")
	c.run(transaction("s@x.test", "u@example.test")...)
	c.run(cmd("DATA", "354"), step{send: "\r\nhi\r\n.\r\n", want: []string{"250 2.0.0"}}, cmd("QUIT", "221"))
	if n := ts.stats().Snapshot()["max_connections_per_ip"]; n != 1990 {
		t.Errorf("max_connections_per_ip = %d, want 1990", n)
	}
}
