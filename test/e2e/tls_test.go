package e2e

import (
	"crypto/tls"
	"net/smtp"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"backupmx/internal/tlsconf/tlstest"
)

// TestTLSReloadOnSIGHUP: the real binary with [tls] offers STARTTLS; after
// new certificate files and a SIGHUP, new sessions get the new certificate
// while a TLS session opened before carries on and delivers its message.
func TestTLSReloadOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t)
	cert, key := ca.IssueFiles(t, dir, "mx", Hostname)
	primary := NewPrimary(t) // down: mail stays queued
	srv := NewServer(t, Options{
		Domains: []Domain{{Name: "example.test", Primary: []string{primary.Addr}}},
		Extra:   "[tls]\ncert = \"" + cert + "\"\nkey = \"" + key + "\"\n",
	})
	cfg := &tls.Config{ServerName: Hostname, RootCAs: ca.Pool()}
	open := func() (*smtp.Client, string) {
		t.Helper()
		c, err := smtp.Dial(srv.SMTPAddr)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Hello("client.e2e.test"); err != nil {
			t.Fatal(err)
		}
		if err := c.StartTLS(cfg); err != nil {
			t.Fatal(err)
		}
		st, _ := c.TLSConnectionState()
		return c, st.PeerCertificates[0].SerialNumber.String()
	}
	old, before := open()
	defer old.Close()

	cp, kp := ca.Issue(t, Hostname)
	os.WriteFile(cert, cp, 0o600)
	os.WriteFile(key, kp, 0o600)
	srv.mu.Lock()
	srv.cmd.Process.Signal(syscall.SIGHUP)
	srv.mu.Unlock()
	Eventually(t, 10*time.Second, "no reload logged", func() bool { return strings.Contains(srv.Log(), "TLS certificates reloaded") })

	fresh, after := open()
	fresh.Close()
	if after == before {
		t.Fatal("after SIGHUP a new session still gets the old certificate")
	}
	if err := old.Mail("s@sender.test"); err != nil {
		t.Fatal(err)
	}
	if err := old.Rcpt("u@example.test"); err != nil {
		t.Fatal(err)
	}
	w, err := old.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("Subject: before the reload\r\n\r\nhi\r\n"))
	if err := w.Close(); err != nil {
		t.Fatalf("the session opened before the reload failed: %v", err)
	}
	srv.WaitQueueLen(1, 10*time.Second)
}
