package smtpd

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"backupmx/internal/config"
	"backupmx/internal/store"
)

func TestEHLOAdvertises(t *testing.T) {
	ts := newTestServer(t)
	c := dial(t, ts.addr)
	c.run(step{send: "EHLO client.test\r\n"})
	got := c.read()
	for _, want := range []string{"250-mx2.backup.test Hello client.test", "PIPELINING", "8BITMIME", "SMTPUTF8",
		"ENHANCEDSTATUSCODES", "CHUNKING", "DSN", "SIZE 2000", "250-ETRN"} {
		if !strings.Contains(got, want) {
			t.Errorf("EHLO reply lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "BINARYMIME") {
		t.Errorf("EHLO reply advertises BINARYMIME:\n%s", got)
	}
}

// TestRefusals: each dialogue ends in a refusal and nothing is queued.
func TestRefusals(t *testing.T) {
	big := strings.Repeat("012345678901234567890123456789012345678901234567\r\n", 60) // 3000 bytes
	looped := strings.Repeat("Received: x\r\n", 100) + "Subject: x\r\n\r\nhi\r\n"     // under the test's 2000-byte limit
	tests := []struct {
		name  string
		steps []step
	}{
		{"rcpt before mail", []step{cmd("EHLO c.test", "250"), cmd("RCPT TO:<u@example.test>", "502 5.5.1")}},
		{"mail before helo", []step{cmd("MAIL FROM:<s@x.test>", "503 5.5.1")}},
		{"data without rcpt", []step{cmd("EHLO c.test", "250"), cmd("MAIL FROM:<s@x.test>", "250"), cmd("DATA", "502 5.5.1")}},
		{"unconfigured domain", append(transaction("s@x.test"), cmd("RCPT TO:<u@other.test>", "550 5.7.1"))},
		{"subdomain of ours", append(transaction("s@x.test"), cmd("RCPT TO:<u@sub.example.test>", "550 5.7.1"))},
		{"percent hack", append(transaction("s@x.test"), cmd("RCPT TO:<u%other.test@example.test>", "550 5.7.1"))},
		{"bang path", append(transaction("s@x.test"), cmd("RCPT TO:<other.test!u@example.test>", "550 5.7.1"))},
		{"quoted at", append(transaction("s@x.test"), cmd(`RCPT TO:<"u@other.test"@example.test>`, "550 5.7.1"))},
		{"source route", append(transaction("s@x.test"), cmd("RCPT TO:<@example.test:u@other.test>", "550 5.7.1"))},
		{"source route to ours", append(transaction("s@x.test"), cmd("RCPT TO:<@other.test,@b.test:u@example.test>", "550 5.7.1"))},
		{"address literal", append(transaction("s@x.test"), cmd("RCPT TO:<u@[127.0.0.1]>", "550 5.7.1"))},
		{"no recipient left", append(transaction("s@x.test"),
			cmd("RCPT TO:<u@other.test>", "550 5.7.1"), cmd("DATA", "502 5.5.1"))},
		{"size at mail", []step{cmd("EHLO c.test", "250"), cmd("MAIL FROM:<s@x.test> SIZE=2001", "552 5.3.4")}},
		{"oversize body", append(transaction("s@x.test", "u@example.test"),
			cmd("DATA", "354"), step{send: big + ".\r\n", want: []string{"552 5.3.4"}}, cmd("NOOP", "250"))},
		{"oversize bdat", append(transaction("s@x.test", "u@example.test"),
			step{send: "BDAT 3000 LAST\r\n" + big, want: []string{"552 5.3.4"}}, cmd("NOOP", "250"))},
		{"oversize bdat chunks", append(transaction("s@x.test", "u@example.test"),
			step{send: "BDAT 1500\r\n" + big[:1500], want: []string{"250 2.0.0"}},
			step{send: "BDAT 1500 LAST\r\n" + big[1500:], want: []string{"552 5.3.4"}}, cmd("NOOP", "250"))},
		{"aborted bdat", append(transaction("s@x.test", "u@example.test"),
			step{send: "BDAT 10\r\n0123456789", want: []string{"250 2.0.0"}}, cmd("RSET", "250"), cmd("NOOP", "250"))},
		{"mail loop", append(transaction("s@x.test", "u@example.test"),
			cmd("DATA", "354"), step{send: looped + ".\r\n", want: []string{"554 5.4.6"}}, cmd("NOOP", "250"))},
		{"mail loop bdat", append(transaction("s@x.test", "u@example.test"),
			step{send: fmt.Sprintf("BDAT %d LAST\r\n", len(looped)) + looped, want: []string{"554 5.4.6"}}, cmd("NOOP", "250"))},
		{"too many recipients", append(transaction("s@x.test",
			"a@example.test", "b@example.test", "c@example.test", "d@example.test", "e@example.test"),
			cmd("RCPT TO:<f@example.test>", "452 4.5.3"), cmd("RSET", "250"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestServer(t)
			c := dial(t, ts.addr)
			c.run(tt.steps...)
			c.run(cmd("QUIT", "221"))
			if m := ts.store.all(); len(m) != 0 {
				t.Errorf("queued %d messages, want none", len(m))
			}
		})
	}
}

// TestHopsAtTheLimit: 99 Received fields from the client plus ours make
// smtp.max_received (100): accepted; one more is a loop (TestRefusals).
func TestHopsAtTheLimit(t *testing.T) {
	ts := newTestServer(t)
	c := dial(t, ts.addr)
	msg := strings.Repeat("Received: x\r\n", 99) + "Subject: x\r\n\r\n" +
		strings.Repeat("Received: in the body\r\n", 20) // not counted
	c.run(transaction("s@x.test", "u@example.test")...)
	c.run(cmd("DATA", "354"), step{send: msg + ".\r\n", want: []string{"250 2.0.0"}}, cmd("QUIT", "221"))
	if m := ts.store.all(); len(m) != 1 {
		t.Fatalf("queued %d, want 1", len(m))
	}
}

func TestStoreFailureIs451(t *testing.T) {
	ts := newTestServer(t)
	ts.store.setFail(errors.New("disk on fire"))
	c := dial(t, ts.addr)
	c.run(transaction("s@x.test", "u@example.test")...)
	c.run(cmd("DATA", "354"), step{send: "Subject: x\r\n\r\nhi\r\n.\r\n", want: []string{"451 4.3.0"}})
	// BDAT too.
	c.run(cmd("MAIL FROM:<s@x.test>", "250"), cmd("RCPT TO:<u@example.test>", "250"),
		step{send: "BDAT 4 LAST\r\nhi\r\n", want: []string{"451 4.3.0"}})
	// The session goes on; once the store is back, mail is accepted.
	ts.store.setFail(nil)
	c.run(cmd("MAIL FROM:<s@x.test>", "250"), cmd("RCPT TO:<u@example.test>", "250"),
		cmd("DATA", "354"), step{send: "hi\r\n.\r\n", want: []string{"250 2.0.0 Ok: queued as "}})
	if got := len(ts.store.all()); got != 1 {
		t.Errorf("queued %d, want 1", got)
	}
	if q, _ := ts.kicks(); len(q) != 1 {
		t.Errorf("Queued called %d times, want 1", len(q))
	}
}

func TestReceivedAndBody(t *testing.T) {
	ts := newTestServer(t)
	c := dial(t, ts.addr)
	body := "From: s@x.test\r\nSubject: dots\r\n\r\n.leading dot\r\n..two\r\nlast line\r\n"
	stuffed := strings.ReplaceAll(body, "\r\n.", "\r\n..")
	c.run(transaction("s@x.test", "U@Example.TEST.")...)
	c.run(cmd("DATA", "354"))
	c.run(step{send: stuffed + ".\r\n"})
	reply := c.read()
	c.run(cmd("QUIT", "221"))

	msgs := ts.store.all()
	if len(msgs) != 1 {
		t.Fatalf("queued %d, want 1", len(msgs))
	}
	m := msgs[0]
	if want := "250 2.0.0 Ok: queued as " + m.env.ID; reply != want {
		t.Errorf("reply %q, want %q", reply, want)
	}
	hdr, rest, ok := strings.Cut(string(m.body), "\r\n\t"+time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).Format(time.RFC1123Z)+"\r\n")
	if !ok {
		t.Fatalf("no dated Received header in:\n%q", m.body)
	}
	if rest != body {
		t.Errorf("body after Received:\n%q\nwant\n%q", rest, body)
	}
	want := "Received: from client.test (client.example.net [127.0.0.1])\r\n" +
		"\tby mx2.backup.test (backupmx) with ESMTP\r\n" +
		"\tid " + m.env.ID + "\r\n" +
		"\tfor <U@example.test>;"
	if hdr != want {
		t.Errorf("Received header\n%q\nwant\n%q", hdr, want)
	}
	if !regexp.MustCompile(`^[0-9A-Z]{16}$`).MatchString(m.env.ID) {
		t.Errorf("queue id %q", m.env.ID)
	}
	wantClient := store.Client{Addr: "127.0.0.1", Name: "client.example.net", HELO: "client.test", Proto: "ESMTP"}
	if m.env.Client != wantClient {
		t.Errorf("client %+v, want %+v", m.env.Client, wantClient)
	}
	if m.env.Sender != "s@x.test" || !m.env.Received.Equal(ts.Now()) {
		t.Errorf("sender %q received %v", m.env.Sender, m.env.Received)
	}
}

func TestBDATAndHELO(t *testing.T) {
	ts := newTestServer(t)
	c := dial(t, ts.addr)
	c.run(cmd("HELO old.test", "250 mx2.backup.test Hello old.test"), cmd("MAIL FROM:<>", "250"), cmd("RCPT TO:<u@example.test>", "250"),
		step{send: "BDAT 7\r\nSubject", want: []string{"250 2.0.0"}},
		step{send: "BDAT 9 LAST\r\n: x\r\n\r\nhi", want: []string{"250 2.0.0 Ok: queued as"}})
	msgs := ts.store.all()
	if len(msgs) != 1 {
		t.Fatalf("queued %d, want 1", len(msgs))
	}
	m := msgs[0]
	if m.env.Client.Proto != "SMTP" || m.env.Sender != "" {
		t.Errorf("proto %q sender %q", m.env.Client.Proto, m.env.Sender)
	}
	if !strings.HasPrefix(string(m.body), "Received: from old.test") || !strings.HasSuffix(string(m.body), "\r\n\tid "+m.env.ID+"\r\n\tfor <u@example.test>;\r\n\tSun, 01 Mar 2026 12:00:00 +0000\r\nSubject: x\r\n\r\nhi") {
		t.Errorf("body %q", m.body)
	}
}

func TestGroupingAndDSN(t *testing.T) {
	ts := newTestServer(t)
	c := dial(t, ts.addr)
	c.run(cmd("EHLO client.test", "250"),
		cmd("MAIL FROM:<s@x.test> RET=HDRS ENVID=abc+2Bd BODY=8BITMIME SMTPUTF8", "250"),
		cmd("RCPT TO:<a@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig+2Ba@example.test", "250"),
		cmd("RCPT TO:<b@SECOND.test> NOTIFY=NEVER", "250"),
		cmd("RCPT TO:<c@example.test>", "250"),
		cmd("RCPT TO:<a@example.test>", "250"), // duplicate: kept once
		cmd("DATA", "354"), step{send: "hi\r\n.\r\n", want: []string{"250 2.0.0"}})
	msgs := ts.store.all()
	if len(msgs) != 1 {
		t.Fatalf("queued %d, want 1", len(msgs))
	}
	env := msgs[0].env
	want := map[string][]store.Recipient{
		"example.test": {{Addr: "a@example.test", Notify: "SUCCESS,FAILURE", ORcpt: "rfc822;orig+a@example.test"}, {Addr: "c@example.test"}},
		"second.test":  {{Addr: "b@second.test", Notify: "NEVER"}},
	}
	if !reflect.DeepEqual(env.Domains, want) {
		t.Errorf("domains %+v\nwant %+v", env.Domains, want)
	}
	if env.Ret != "HDRS" || env.EnvID != "abc+d" || env.Body != "8BITMIME" || !env.UTF8 {
		t.Errorf("envelope ret=%q envid=%q body=%q utf8=%v", env.Ret, env.EnvID, env.Body, env.UTF8)
	}
	if strings.Contains(string(msgs[0].body), "\tfor <") {
		t.Errorf("Received names a recipient of a multi-recipient message:\n%s", msgs[0].body)
	}
	if q, _ := ts.kicks(); !reflect.DeepEqual(q, [][]string{{"example.test", "second.test"}}) {
		t.Errorf("Queued called with %v", q)
	}
}

func TestETRN(t *testing.T) {
	tests := []struct {
		name    string
		steps   []step
		flushed []string
	}{
		{"literal primary", []step{cmd("ETRN example.test", "250 2.0.0 Queuing for node example.test started")}, []string{"example.test"}},
		{"case and dot", []step{cmd("etrn EXAMPLE.test.", "250 2.0.0 Queuing for node example.test")}, []string{"example.test"}},
		{"primary by name", []step{cmd("ETRN byname.test", "250 2.0.0")}, []string{"byname.test"}},
		{"primary by MX", []step{cmd("ETRN bymx.test", "250 2.0.0")}, []string{"bymx.test"}},
		{"not the primary", []step{cmd("ETRN second.test", "459 4.7.1 second.test: not allowed")}, nil},
		{"unknown domain", []step{cmd("ETRN other.test", "458 4.0.0 Unable to queue messages for node other.test")}, nil},
		{"subdomain form", []step{cmd("ETRN @example.test", "458 4.0.0")}, nil},
		{"queue name", []step{cmd("ETRN #queue", "501 5.5.4")}, nil},
		{"no argument", []step{cmd("ETRN", "501 5.5.4")}, nil},
		{"pipelined in order", []step{
			cmd("EHLO client.test", "250"),
			{send: "NOOP\r\nETRN example.test\r\nNOOP\r\nETRN other.test\r\nMAIL FROM:<s@x.test>\r\nETRN second.test\r\nRCPT TO:<u@example.test>\r\n",
				want: []string{"250 2.0.0 I have", "250 2.0.0 Queuing", "250 2.0.0 I have", "458 4.0.0", "250 2.0.0 Roger", "459 4.7.1", "250 2.0.0 I'll"}},
			{send: "DATA\r\n", want: []string{"354"}},
			{send: "ETRN example.test\r\n.\r\nETRN example.test\r\n", want: []string{"250 2.0.0 Ok: queued", "250 2.0.0 Queuing"}},
		}, []string{"example.test", "example.test"}},
		{"after a chunk", append(transaction("s@x.test", "u@example.test"),
			step{send: "BDAT 5 LAST\r\nhelloETRN example.test\r\nNOOP\r\n",
				want: []string{"250 2.0.0 Ok: queued", "250 2.0.0 Queuing", "250 2.0.0 I have"}}), []string{"example.test"}},
		{"source route pipelined", append(transaction("s@x.test"),
			step{send: "RCPT TO:<a@example.test>\r\nRCPT TO:<@x.test:b@example.test>\r\nRCPT TO:<c@example.test>\r\nNOOP\r\n",
				want: []string{"250 2.0.0 I'll make sure <a@", "550 5.7.1", "250 2.0.0 I'll make sure <c@", "250 2.0.0 I have"}}), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestServer(t)
			c := dial(t, ts.addr)
			c.run(tt.steps...)
			c.run(cmd("QUIT", "221"))
			if _, f := ts.kicks(); !reflect.DeepEqual(f, tt.flushed) {
				t.Errorf("flushed %v, want %v", f, tt.flushed)
			}
		})
	}
}

// The body contains what looks like ETRN and source-routed RCPT lines: in
// DATA and BDAT they are data and must reach the store untouched.
func TestCommandsInsideBodyAreData(t *testing.T) {
	ts := newTestServer(t)
	c := dial(t, ts.addr)
	body := "ETRN example.test\r\nRCPT TO:<@a:b@c>\r\nDATA\r\n"
	c.run(transaction("s@x.test", "u@example.test")...)
	c.run(cmd("DATA", "354"), step{send: body + ".\r\n", want: []string{"250 2.0.0 Ok"}})
	c.run(cmd("MAIL FROM:<s@x.test>", "250"), cmd("RCPT TO:<u@example.test>", "250"),
		step{send: "BDAT 43 LAST\r\n" + body, want: []string{"250 2.0.0 Ok"}})
	msgs := ts.store.all()
	if len(msgs) != 2 {
		t.Fatalf("queued %d, want 2", len(msgs))
	}
	for _, m := range msgs {
		if !strings.HasSuffix(string(m.body), ";\r\n\tSun, 01 Mar 2026 12:00:00 +0000\r\n"+body) {
			t.Errorf("body %q", m.body)
		}
	}
	if _, f := ts.kicks(); len(f) != 0 {
		t.Errorf("ETRN inside a body flushed %v", f)
	}
}

func TestParseRecipient(t *testing.T) {
	tests := []struct{ in, local, domain, rule string }{
		{"u@example.test", "u", "example.test", ""},
		{"U.V@Example.Test.", "U.V", "example.test", ""},
		{"u@bücher.test", "u", "xn--bcher-kva.test", ""},
		{"a b@example.test", `"a b"`, "example.test", ""},
		{"u%v@example.test", "", "", "relay_local_part"},
		{"v!u@example.test", "", "", "relay_local_part"},
		{"u@v@example.test", "", "", "relay_local_part"},
		{"u@[192.0.2.1]", "", "", "address_literal"},
		{"u@ex,ample.test", "", "", "bad_domain"},
		{"@example.test", "", "", "syntax"},
		{"u@", "", "", "syntax"},
	}
	for _, tt := range tests {
		local, domain, rule := parseRecipient(tt.in)
		if local != tt.local || domain != tt.domain || rule != tt.rule {
			t.Errorf("parseRecipient(%q) = %q, %q, %q; want %q, %q, %q", tt.in, local, domain, rule, tt.local, tt.domain, tt.rule)
		}
	}
}

func TestAddrLiteral(t *testing.T) {
	for in, want := range map[string]string{"192.0.2.1": "[192.0.2.1]", "2001:db8::1": "[IPv6:2001:db8::1]"} {
		if got := addrLiteral(netip.MustParseAddr(in)); got != want {
			t.Errorf("addrLiteral(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestStoreFailuresAreNotClientErrors: a 451 for our own fault never counts
// toward the bad-command limit, so a sender is not cut off while we recover.
func TestStoreFailuresAreNotClientErrors(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.SMTP.MaxBadCommands = 2 })
	ts.store.setFail(errors.New("database unreachable"))
	c := dial(t, ts.addr)
	for range 5 {
		c.run(transaction("s@x.test", "u@example.test")...)
		c.run(cmd("DATA", "354"), step{send: "hi\r\n.\r\n", want: []string{"451 4.3.0"}})
	}
	ts.store.setFail(nil)
	c.run(transaction("s@x.test", "u@example.test")...)
	c.run(cmd("DATA", "354"), step{send: "hi\r\n.\r\n", want: []string{"250 2.0.0 Ok: queued as "}})
}

// TestBodiesKeptExactly: bodies with the awkward bytes (bare CR, bare LF,
// CR before the final CRLF, dots, long lines, 8-bit) end where they should
// and are stored exactly, whatever the sizes of the client's writes.
func TestBodiesKeptExactly(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) {
		c.SMTP.DataTimeout = config.Duration(5 * time.Second)
		c.SMTP.MaxMessageSize = 1 << 20
	})
	long := strings.Repeat("x", 990) // RFC 5321 §4.5.3.1.6: 998 octets a line
	for i, body := range []string{
		"Subject: a\r\n\r\nbare CR at the end\r\r\n",
		"Subject: b\r\n\r\nthree CRs\r\r\r\n",
		"Subject: c\r\n\r\nmid\rline\r\nbare\nLF\r\n",
		"Subject: d\r\n\r\n" + long + "\r\n.dot\r\n" + long + "\r\n",
		"Subject: e\r\n\r\nh\xc3\xa9llo \xff\xfe\r\n\r\n\r\n",
	} {
		c := dial(t, ts.addr)
		c.run(transaction("s@x.test", "u@example.test")...)
		c.run(cmd("DATA", "354"))
		wire := strings.ReplaceAll(body, "\r\n.", "\r\n..") + ".\r\n"
		for len(wire) > 0 { // odd-sized writes cross every state boundary
			k := min(len(wire), 7+i)
			c.run(step{send: wire[:k]})
			wire = wire[k:]
		}
		c.expect("250 2.0.0 Ok: queued as ")
		c.run(cmd("QUIT", "221"))
		msgs := ts.store.all()
		got := string(msgs[len(msgs)-1].body)
		if _, rest, ok := strings.Cut(got, "+0000\r\n"); !ok || rest != body {
			t.Errorf("case %d: stored %q, want %q after Received", i, rest, body)
		}
	}
}

// TestGreetingReplyWholeOrByLine: our name and our EHLO keywords go in the
// right place whether go-smtp writes the EHLO reply in one Write (our copy)
// or a line at a time (upstream).
func TestGreetingReplyWholeOrByLine(t *testing.T) {
	c := &conn{s: &Server{Config: &config.Config{Hostname: "mx.test"}, ETRN: func(string) error { return nil }}}
	got, ok := c.greetingReply([]byte("250-Hello client.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n"))
	if want := "250-mx.test Hello client.test\r\n250-ETRN\r\n250-PIPELINING\r\n250 SIZE 10\r\n"; !ok || string(got) != want {
		t.Errorf("whole reply:\n%q\nwant\n%q", got, want)
	}
	got, ok = c.greetingReply([]byte("250-Hello client.test\r\n"))
	if want := "250-mx.test Hello client.test\r\n250-ETRN\r\n"; !ok || string(got) != want {
		t.Errorf("first line alone: %q, want %q", got, want)
	}
	got, ok = c.greetingReply([]byte("250 2.0.0 Hello client.test\r\n"))
	if want := "250 mx.test Hello client.test\r\n"; !ok || string(got) != want {
		t.Errorf("HELO: %q, want %q", got, want)
	}
	if _, ok := c.greetingReply([]byte("250 2.0.0 Ok\r\n")); ok {
		t.Error("another reply rewritten")
	}
}
