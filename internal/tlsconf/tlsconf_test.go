package tlsconf

import (
	"crypto/tls"
	"os"
	"testing"

	"backupmx/internal/config"
	"backupmx/internal/tlsconf/tlstest"
)

func TestSNIAndReload(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t)
	c1, k1 := ca.IssueFiles(t, dir, "a", "mx.a.test")
	c2, k2 := ca.IssueFiles(t, dir, "b", "*.b.test")
	certs, err := Load([]config.CertPair{{Cert: c1, Key: k1}, {Cert: c2, Key: k2}})
	if err != nil {
		t.Fatal(err)
	}
	pick := func(name string) string {
		c, err := certs.GetCertificate(&tls.ClientHelloInfo{ServerName: name,
			SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256}, SupportedVersions: []uint16{tls.VersionTLS13}})
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf.Subject.CommonName
	}
	for name, want := range map[string]string{"mx.a.test": "mx.a.test", "MX.B.test.": "*.b.test", "": "mx.a.test", "other.test": "mx.a.test"} {
		if got := pick(name); got != want {
			t.Errorf("SNI %q: got %s, want %s", name, got, want)
		}
	}

	// A reload that fails keeps the old set; one that works swaps it.
	os.WriteFile(c1, []byte("garbage"), 0o600)
	if err := certs.Reload(); err == nil {
		t.Fatal("reload of a broken file succeeded")
	}
	if got := pick("mx.a.test"); got != "mx.a.test" {
		t.Fatalf("after a failed reload: %s", got)
	}
	cp, kp := ca.Issue(t, "mx.a.test", "new.a.test")
	os.WriteFile(c1, cp, 0o600)
	os.WriteFile(k1, kp, 0o600)
	if err := certs.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := pick("new.a.test"); got != "mx.a.test" {
		t.Fatalf("after reload, SNI new.a.test got %s", got)
	}
	if _, err := Load(nil); err == nil {
		t.Fatal("Load with no pair succeeded")
	}
}
