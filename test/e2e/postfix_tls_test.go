package e2e

// Interoperability with Postfix over TLS (issue 5): Postfix as the primary
// with smtpd_tls_security_level = encrypt and XFORWARD allowed for us, and
// Postfix as the sending MTA with smtp_tls_security_level = encrypt towards
// us. Certificates come from a CA made by the test (tlstest).

import (
	"fmt"
	"net"
	"net/textproto"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"backupmx/internal/tlsconf/tlstest"
)

// tlsmgrCF adds the TLS session cache and PRNG manager, without which
// Postfix disables TLS.
const tlsmgrCF = "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n"

// certDir is a directory Postfix's daemons can read (they run as postfix).
func certDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestPostfixPrimaryTLSAndXFORWARD: backupmx delivers to a Postfix primary
// that refuses mail without TLS, under tls = "verify" (the certificate is
// checked against tls_ca for 127.0.0.1), and sends XFORWARD. The original
// client connects from 127.0.0.2, we from 127.0.0.1: Postfix logs the
// message with orig_client=…[127.0.0.2], the attribute its policy service,
// milters and logs use. (Postfix's own Received header always describes the
// real connection, XFORWARD or not, so there it names us; the original client
// is in our Received header just below it.)
func TestPostfixPrimaryTLSAndXFORWARD(t *testing.T) {
	requirePostfix(t)
	uid, gid := postfixUIDs(t)
	dir := certDir(t)
	ca := tlstest.NewCA(t)
	cert, key := ca.IssueFiles(t, dir, "primary", "127.0.0.1", "primary.postfix.e2e.test")
	os.Chmod(key, 0o644) // read by the postfix user; a throw-away key
	caFile := ca.WriteCA(t, dir)

	cf := virtualPrimaryCF(uid, gid, pfDomain, "u1")
	cf["smtpd_tls_security_level"] = "encrypt"
	cf["smtpd_tls_cert_file"] = cert
	cf["smtpd_tls_key_file"] = key
	cf["smtpd_tls_received_header"] = "yes"
	cf["smtpd_tls_loglevel"] = "1"
	cf["smtpd_authorized_xforward_hosts"] = "127.0.0.0/8"
	pf := startPostfix(t, "primary", cf, tlsmgrCF)

	srv := NewServer(t, Options{Extra: fmt.Sprintf(`[[domain]]
name = %q
primary = [%q]
tls = "verify"
tls_ca = %q
`, pfDomain, pf.Addr, caFile)})

	const helo = "original-client.e2e.test"
	data := pfMessage(1, "u1@"+pfDomain)
	nc, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}).Dial("tcp", srv.SMTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	c := &SMTPConn{c: nc, tp: textproto.NewConn(nc)}
	defer c.Close()
	if r, err := c.Read(); err != nil || r.Code != 220 {
		t.Fatalf("banner %v %v", r, err)
	}
	if r, err := c.Cmd("EHLO %s", helo); err != nil || r.Code != 250 {
		t.Fatalf("EHLO %v %v", r, err)
	}
	r, err := c.Send(Mail{From: pfSender, MailArgs: "BODY=8BITMIME", To: []string{"u1@" + pfDomain}, Data: data})
	if err != nil || QueueID(r) == "" {
		t.Fatalf("to backupmx: %v %v", r, err)
	}
	qid := QueueID(r)

	var got map[string][]byte
	Eventually(t, 30*time.Second, "the message did not reach Postfix's maildir", func() bool {
		got = pf.Maildir("u1")
		return len(got) == 1
	})
	srv.WaitQueueLen(0, 10*time.Second)
	var file []byte
	for _, f := range got {
		file = f
	}
	hdr, _, _ := strings.Cut(string(file), "\n\n")
	var rcvd []string
	for _, f := range headerFields(hdr + "\n") {
		if strings.HasPrefix(f, "Received:") {
			rcvd = append(rcvd, f)
		}
	}
	// Postfix's Received: the real connection, from us, over TLS.
	if len(rcvd) != 2 || !strings.HasPrefix(rcvd[0], "Received: from "+Hostname+" (unknown [127.0.0.1])") ||
		!strings.Contains(rcvd[0], "(using TLSv1.") || !strings.Contains(rcvd[0], "by primary.postfix.e2e.test (Postfix) with ESMTPS") {
		t.Errorf("Postfix's Received header:\n%s", hdr)
	}
	// Ours, below it: the original client.
	if len(rcvd) == 2 && (!strings.HasPrefix(rcvd[1], "Received: from "+helo+" (") || !strings.Contains(rcvd[1], "[127.0.0.2])") ||
		!strings.Contains(rcvd[1], "id "+qid)) {
		t.Errorf("our Received header:\n%s", rcvd[1])
	}
	// XFORWARD took effect: Postfix attributes the message to the original
	// client (127.0.0.2), while the connection came from us (127.0.0.1).
	if l := pf.LogLines("client=unknown[127.0.0.1], orig_client=", "[127.0.0.2]"); len(l) != 1 {
		t.Errorf("Postfix did not log the XFORWARD original client 127.0.0.2; maillog:\n%s", pf.Log())
	}
	if l := pf.LogLines("xforward=1"); len(l) != 1 {
		t.Errorf("Postfix did not count one XFORWARD command")
	}
	// And we log the TLS outcome of the delivery.
	if !regexp.MustCompile(`msg=delivered id=` + qid + ` .*tls="TLS1\.[23] `).MatchString(srv.Log()) {
		t.Errorf("backupmx did not log the delivery's TLS version")
	}
}

// TestPostfixSendsToUsOverTLS: Postfix as the sending MTA with
// smtp_tls_security_level = encrypt relays to backupmx: the handshake works
// (Postfix logs it), every message is queued, and our Received header names
// the TLS version and cipher.
func TestPostfixSendsToUsOverTLS(t *testing.T) {
	requirePostfix(t)
	const n = 5
	dir := t.TempDir()
	ca := tlstest.NewCA(t)
	cert, key := ca.IssueFiles(t, dir, "backupmx", Hostname, "127.0.0.1")
	primary := NewPrimary(t) // down: the mail stays with us
	srv := NewServer(t, Options{
		Domains: []Domain{{Name: pfDomain, Primary: []string{primary.Addr}}},
		Extra:   fmt.Sprintf("[tls]\ncert = %q\nkey = %q\n", cert, key),
	})
	cf := relayToCF(pfDomain, srv.SMTPAddr)
	cf["smtp_tls_security_level"] = "encrypt"
	cf["smtp_tls_loglevel"] = "1"
	pf := startPostfix(t, "sender", cf, tlsmgrCF)

	for i := range n {
		data := pfMessage(i, "u@"+pfDomain)
		if r, err := SendMail(pf.Addr, Mail{From: pfSender, MailArgs: "BODY=8BITMIME", To: []string{"u@" + pfDomain}, Data: data}); err != nil || r.Code != 250 {
			t.Fatalf("message %d to Postfix: %v %v", i, r, err)
		}
	}
	port := strings.Split(srv.SMTPAddr, ":")[1]
	Eventually(t, 30*time.Second, "Postfix did not relay every message to backupmx", func() bool {
		return len(pf.LogLines("status=sent", "relay=127.0.0.1[127.0.0.1]:"+port)) >= n
	})
	if l := pf.LogLines("TLS connection established to 127.0.0.1[127.0.0.1]:" + port); len(l) == 0 {
		t.Fatalf("Postfix logged no TLS connection to us; maillog:\n%s", pf.Log())
	}
	items := srv.WaitQueueLen(n, 10*time.Second)
	show := srv.QueueCmd("show", items[0].ID)
	if !regexp.MustCompile(`by ` + regexp.QuoteMeta(Hostname) + ` \(backupmx\) with ESMTPS \(TLS1\.[23] TLS_[A-Z0-9_]+\)`).MatchString(show) {
		t.Fatalf("our Received does not record TLS:\n%s", show)
	}
}
