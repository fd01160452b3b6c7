package config

import (
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"15d":    15 * 24 * time.Hour,
		"1d12h":  36 * time.Hour,
		"10m":    10 * time.Minute,
		"90s":    90 * time.Second,
		" 2d ":   48 * time.Hour,
		"1h30m":  90 * time.Minute,
		"0s":     0,
		"100ms":  100 * time.Millisecond,
		"3d1h1m": 73*time.Hour + time.Minute,
	} {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "xd", "15", "1.5d", "10 minutes"} {
		if _, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) accepted", in)
		}
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse(`hostname = "mx.test"
[[domain]]
name = "Example.TEST."
`)
	if err != nil {
		t.Fatal(err)
	}
	if c.Queue.Retention.D() != 15*24*time.Hour || c.Queue.ProbeInterval.D() != 10*time.Second || c.Queue.ProbeRate != 100 {
		t.Errorf("retention %v probe %v", c.Queue.Retention, c.Queue.ProbeInterval)
	}
	var retry []time.Duration
	for _, r := range c.Queue.Retry {
		retry = append(retry, r.D())
	}
	want := []time.Duration{10 * time.Minute, 10 * time.Minute, 10 * time.Minute, 10 * time.Minute, 10 * time.Minute, 10 * time.Minute, time.Hour}
	if len(retry) != len(want) {
		t.Fatalf("retry %v", retry)
	}
	for i := range want {
		if retry[i] != want[i] {
			t.Fatalf("retry %v, want %v", retry, want)
		}
	}
	if c.Store.Engine != "embedded" || c.Store.Dir != "var" || c.Store.CommitDelay.D() != 2*time.Millisecond || c.SMTP.MaxMessageSize != 50<<20 || c.SMTP.MaxReceived != 100 {
		t.Errorf("store %+v size %d max_received %d", c.Store, c.SMTP.MaxMessageSize, c.SMTP.MaxReceived)
	}
	if c.Node != "mx.test" {
		t.Errorf("node %q", c.Node)
	}
	d := c.Domain("example.test")
	if d == nil || d.Retention.D() != 15*24*time.Hour {
		t.Fatalf("domain not normalised or retention not inherited: %+v", d)
	}
}

// TestCommitDelayZeroKept: "0s" turns the commit delay off; it is not
// replaced by the default.
func TestCommitDelayZeroKept(t *testing.T) {
	c, err := Parse("[store]\ncommit_delay = \"0s\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Store.CommitDelay != 0 {
		t.Errorf("commit_delay %v, want 0", c.Store.CommitDelay.D())
	}
}

func TestIDNDomainIsALabel(t *testing.T) {
	c, err := Parse(`[[domain]]
name = "bücher.example"
`)
	if err != nil {
		t.Fatal(err)
	}
	if c.Domain("xn--bcher-kva.example") == nil {
		t.Fatalf("U-label not stored as A-label: %+v", c.Domains[0])
	}
}

// TestErrorsNameTheKey: every refusal says which key is wrong.
func TestErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct{ text, key string }{
		{`bogus = 1`, "bogus"},
		{"[smtp]\nlisten = [\"nope\"]", "smtp.listen"},
		{"[smtp]\nlistne = [\"127.0.0.1:25\"]", "smtp.listne"},
		{"[smtp]\nmax_received = 1", "smtp.max_received"},
		{"[queue]\nretention = \"soon\"", "retention"},
		{"[queue]\nretry = [\"10m\", \"-1m\"]", "queue.retry[1]"},
		{"[store]\nengine = \"mysql\"", "store.engine"},
		{"[store]\nengine = \"postgres\"", "store.dsn"},
		{"[store]\ncommit_delay = \"-1ms\"", "store.commit_delay"},
		{"[store]\ncommit_delay = \"5s\"", "store.commit_delay"},
		{"[admin]\nlisten = \"0.0.0.0:8025\"", "admin.token"},
		{"[dns]\nresolver = \"8.8.8.8\"", "dns.resolver"},
		{"[notices]\nsmarthost = \"relay\"", "notices.smarthost"},
		{"[[domain]]\nname = \"a.test\"\nprimary = [\"host-without-port\"]", "domain[0].primary"},
		{"[[domain]]\nname = \"a.test\"\n[[domain]]\nname = \"A.test.\"", "domain[1].name"},
		{"[[domain]]\nname = \"a.test\"\nretention = \"2x\"", "retention"},
	} {
		_, err := Parse(tc.text)
		if err == nil {
			t.Errorf("%q: accepted", tc.text)
			continue
		}
		if !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%q: error %q does not name %q", tc.text, err, tc.key)
		}
	}
}

func TestAdminTokenOptionalOnLoopback(t *testing.T) {
	for _, l := range []string{"127.0.0.1:8025", "[::1]:8025", "localhost:8025"} {
		if _, err := Parse("[admin]\nlisten = \"" + l + "\""); err != nil {
			t.Errorf("%s: %v", l, err)
		}
	}
	if _, err := Parse("[admin]\nlisten = \"0.0.0.0:8025\"\ntoken = \"s3cret\""); err != nil {
		t.Error(err)
	}
}

func TestExampleConfigIsValid(t *testing.T) {
	if _, err := Load("../../examples/backupmx.toml"); err != nil {
		t.Fatal(err)
	}
}
