package smtpd

import (
	"crypto/tls"
	"net/smtp"
	"net/textproto"
	"os"
	"strings"
	"testing"
	"time"

	"backupmx/internal/config"
	"backupmx/internal/tlsconf"
	"backupmx/internal/tlsconf/tlstest"
)

// tlsServer serves baseConfig with STARTTLS, certificates for the given
// name sets (one pair each) issued by a fresh CA.
func tlsServer(t *testing.T, names ...[]string) (*testServer, *tlstest.CA, *tlsconf.Certs, []config.CertPair) {
	t.Helper()
	if len(names) == 0 {
		names = [][]string{{"mx2.backup.test"}}
	}
	ca := tlstest.NewCA(t)
	dir := t.TempDir()
	var pairs []config.CertPair
	for i, ns := range names {
		c, k := ca.IssueFiles(t, dir, string(rune('a'+i)), ns...)
		pairs = append(pairs, config.CertPair{Cert: c, Key: k})
	}
	certs, err := tlsconf.Load(pairs)
	if err != nil {
		t.Fatal(err)
	}
	ts := buildTestServer(t, func(c *config.Config) { c.SMTP.MaxBadCommands = 4 })
	ts.TLS = certs.ServerConfig()
	return ts.start(t), ca, certs, pairs
}

// starttls says STARTTLS and runs the client handshake; the client then
// talks through TLS.
func (c *client) starttls(cfg *tls.Config) tls.ConnectionState {
	c.t.Helper()
	c.run(cmd("STARTTLS", "220 2.0.0"))
	tc := tls.Client(c.conn, cfg)
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("handshake: %v", err)
	}
	tc.SetDeadline(time.Time{})
	c.conn, c.text = tc, textproto.NewConn(tc)
	return tc.ConnectionState()
}

func TestSTARTTLSWithGoClient(t *testing.T) {
	ts, ca, _, _ := tlsServer(t)
	c, err := smtp.Dial(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example.net"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Fatal("STARTTLS not advertised")
	}
	if err := c.StartTLS(&tls.Config{ServerName: "mx2.backup.test", RootCAs: ca.Pool()}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Fatal("STARTTLS advertised inside TLS")
	}
	st, _ := c.TLSConnectionState()
	if st.Version < tls.VersionTLS12 {
		t.Fatalf("version %x", st.Version)
	}
	if err := c.Mail("s@sender.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("u@example.test"); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("Subject: t\r\n\r\nsecret\r\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	msgs := ts.store.all()
	if len(msgs) != 1 {
		t.Fatalf("%d messages stored", len(msgs))
	}
	m := msgs[0]
	want := "with ESMTPS (" + strings.ReplaceAll(tls.VersionName(st.Version), " ", "") + " " + tls.CipherSuiteName(st.CipherSuite) + ")"
	if !strings.Contains(string(m.body), want) || m.env.Client.Proto != "ESMTPS" {
		t.Fatalf("Received lacks %q (proto %s):\n%s", want, m.env.Client.Proto, m.body)
	}
}

func TestSTARTTLSRefusals(t *testing.T) {
	t.Run("no certificate", func(t *testing.T) {
		ts := newTestServer(t)
		c := dial(t, ts.addr)
		c.run(cmd("EHLO client.test", "250"))
		c.run(cmd("STARTTLS", "502 5.5.1"))
	})
	ts, ca, _, _ := tlsServer(t)
	cfg := &tls.Config{ServerName: "mx2.backup.test", RootCAs: ca.Pool()}
	t.Run("inside a transaction", func(t *testing.T) {
		c := dial(t, ts.addr)
		c.run(transaction("s@sender.test", "u@example.test")...)
		c.run(cmd("STARTTLS", "503 5.5.1"), cmd("RSET", "250"))
		c.starttls(cfg)
	})
	t.Run("twice", func(t *testing.T) {
		c := dial(t, ts.addr)
		c.run(cmd("EHLO client.test", "250"))
		c.starttls(cfg)
		c.run(cmd("STARTTLS", "554 5.5.1"))
	})
	t.Run("clear text pipelined after STARTTLS is dropped", func(t *testing.T) {
		c := dial(t, ts.addr)
		c.run(cmd("EHLO client.test", "250"))
		c.run(step{send: "STARTTLS\r\nMAIL FROM:<inject@sender.test>\r\n", want: []string{"220 2.0.0"}})
		tc := tls.Client(c.conn, cfg)
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		c.conn, c.text = tc, textproto.NewConn(tc)
		// Had the MAIL line survived, its 503 would come first.
		c.run(cmd("EHLO client.test", "250-mx2.backup.test Hello"))
	})
}

func TestSNIChoosesCertificate(t *testing.T) {
	ts, ca, _, _ := tlsServer(t, []string{"mx2.backup.test"}, []string{"mx.other.test"})
	for sni, want := range map[string]string{"mx.other.test": "mx.other.test", "mx2.backup.test": "mx2.backup.test", "": "mx2.backup.test"} {
		c := dial(t, ts.addr)
		c.run(cmd("EHLO client.test", "250"))
		st := c.starttls(&tls.Config{ServerName: sni, RootCAs: ca.Pool(), InsecureSkipVerify: sni == ""})
		if got := st.PeerCertificates[0].Subject.CommonName; got != want {
			t.Errorf("SNI %q: certificate for %s, want %s", sni, got, want)
		}
	}
}

func TestReloadKeepsTLSSessions(t *testing.T) {
	ts, ca, certs, pairs := tlsServer(t)
	cfg := &tls.Config{ServerName: "mx2.backup.test", RootCAs: ca.Pool()}
	old := dial(t, ts.addr)
	old.run(cmd("EHLO client.test", "250"))
	before := old.starttls(cfg).PeerCertificates[0].SerialNumber

	cp, kp := ca.Issue(t, "mx2.backup.test")
	os.WriteFile(pairs[0].Cert, cp, 0o600)
	os.WriteFile(pairs[0].Key, kp, 0o600)
	if err := certs.Reload(); err != nil { // what SIGHUP does
		t.Fatal(err)
	}
	fresh := dial(t, ts.addr)
	fresh.run(cmd("EHLO client.test", "250"))
	after := fresh.starttls(cfg).PeerCertificates[0].SerialNumber
	if after.Cmp(before) == 0 {
		t.Fatal("a new session still gets the old certificate")
	}
	// The session opened before the reload carries on.
	old.run(transaction("s@sender.test", "u@example.test")...)
	old.run(cmd("DATA", "354"), step{send: "Subject: x\r\n\r\nbody\r\n.\r\n", want: []string{"250 2.0.0 Ok: queued"}})
	if n := len(ts.store.all()); n != 1 {
		t.Fatalf("%d messages", n)
	}
}

// The door's rules that conn enforces work the same inside TLS.
func TestDoorInsideTLS(t *testing.T) {
	ts, ca, _, _ := tlsServer(t)
	cfg := &tls.Config{ServerName: "mx2.backup.test", RootCAs: ca.Pool()}
	c := dial(t, ts.addr)
	c.run(cmd("EHLO client.test", "250"))
	c.starttls(cfg)
	c.run(
		cmd("MAIL FROM:<s@sender.test>", "503 5.5.1 Error: send HELO/EHLO first"), // §4.2: EHLO again
		cmd("EHLO client.test", "250"),
		cmd("ETRN example.test", "250 2.0.0 Queuing for node example.test started"),
		cmd("MAIL FROM:<s@sender.test>", "250"),
		cmd("RCPT TO:<@example.test:u@other.test>", "550 5.7.1 Source routes"),
		cmd("XCLIENT ADDR=192.0.2.1", "550 5.7.0"),
		cmd("RCPT TO:<u@other.test>", "550 5.7.1"),
		cmd("RCPT TO:<v@other.test>", "421 4.7.0"), // the fourth error: max_bad_commands = 4
	)
	if !c.closed() {
		t.Fatal("session not ended after the bad-command limit")
	}
	if _, flushed := ts.kicks(); len(flushed) != 1 || flushed[0] != "example.test" {
		t.Fatalf("ETRN inside TLS flushed %v", flushed)
	}
}
