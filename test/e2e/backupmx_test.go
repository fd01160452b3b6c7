package e2e

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"backupmx/internal/dnsres/dnstest"
)

// TestUnconfiguredDomainRefused: RCPT for a domain we are not backup MX for is
// 550 5.7.1, nothing is queued and nothing reaches any primary.
func TestUnconfiguredDomainRefused(t *testing.T) {
	t.Parallel()
	primary := StartPrimary(t)
	srv := NewServer(t, Options{
		Domains:       []Domain{{Name: "example.test", Primary: []string{primary.Addr}}},
		ProbeInterval: "1s",
		Retry:         []string{"1s"},
	})

	c, err := DialSMTP(srv.SMTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r, err := c.Cmd("EHLO client.e2e.test"); err != nil || r.Code != 250 {
		t.Fatalf("EHLO: %v %v", r, err)
	}
	if r, err := c.Cmd("MAIL FROM:<a@client.test>"); err != nil || r.Code != 250 {
		t.Fatalf("MAIL: %v %v", r, err)
	}
	for _, rcpt := range []string{"u@foreign.test", "u@sub.example.test", "u@example.test.evil.test", "u%example.test@foreign.test"} {
		r, err := c.Cmd("RCPT TO:<%s>", rcpt)
		if err != nil {
			t.Fatal(err)
		}
		if r.Code != 550 || !strings.HasPrefix(r.Text, "5.7.1") {
			t.Errorf("RCPT TO:<%s> = %v, want 550 5.7.1", rcpt, r)
		}
	}
	// With no accepted recipient, DATA must not start a message.
	if r, err := c.Cmd("DATA"); err != nil || r.Code/100 != 5 {
		t.Errorf("DATA after only refused recipients = %v %v, want 5xx", r, err)
	}
	c.Close()

	// The whole transaction through SendMail, too.
	r, err := SendMail(srv.SMTPAddr, Mail{From: "a@client.test", To: []string{"b@foreign.test"}, Data: []byte("Subject: x\r\n\r\nhi\r\n")})
	if err != nil || r.Code != 550 {
		t.Fatalf("SendMail to a foreign domain: %v %v, want 550", r, err)
	}
	if q := srv.Queue(); len(q) != 0 {
		t.Fatalf("queue list after refused mail: %+v, want empty", q)
	}
	// Nothing is queued, so nothing can ever be delivered; check anyway.
	if m := primary.Messages(); len(m) != 0 {
		t.Fatalf("primary received %d messages, want none", len(m))
	}
}

// sampleBody returns the i-th test message: distinct headers and body, with
// 8-bit bytes in every third, a 998-octet line (RFC 5321 §4.5.3.1.6's limit)
// in every fifth, and lines that need dot-stuffing. CRLF endings throughout.
func sampleBody(i int) (data []byte, eightBit bool) {
	var b strings.Builder
	fmt.Fprintf(&b, "From: Sender %d <s%d@client.test>\r\n", i, i)
	fmt.Fprintf(&b, "To: <u%03d@example.test>\r\n", i)
	fmt.Fprintf(&b, "Subject: e2e message %d\r\n", i)
	fmt.Fprintf(&b, "Message-ID: <e2e-%d@client.test>\r\n", i)
	if i%3 == 0 {
		eightBit = true
		b.WriteString("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n")
	}
	b.WriteString("\r\n")
	fmt.Fprintf(&b, "Body of message %d.\r\n", i)
	b.WriteString(".a line that starts with a dot\r\n..two dots\r\n.\r\n")
	if eightBit {
		b.WriteString("Grüße aus Köln, ½ € — \xe6\x97\xa5\xe6\x9c\xac\r\n")
	}
	if i%5 == 0 {
		line := strings.Repeat(fmt.Sprintf("%d-", i), 998)[:998]
		b.WriteString(line + "\r\n")
	}
	for j := range i % 7 {
		fmt.Fprintf(&b, "filler line %d of message %d\r\n", j, i)
	}
	return []byte(b.String()), eightBit
}

// checkReceived checks our Received header: the client's IP, its HELO, our
// hostname and the queue id.
func checkReceived(t *testing.T, h, helo, id string) {
	t.Helper()
	for _, want := range []string{"Received: from " + helo + " ", "[127.0.0.1]", "by " + Hostname + " ", "id " + id + "\r\n"} {
		if !strings.Contains(h, want) {
			t.Errorf("Received header %q lacks %q", h, want)
		}
	}
}

// TestPrimaryDownKillRestart is the first acceptance test of issue 2: with the
// primary down, 100 messages from a real SMTP client are accepted and listed;
// kill -9 and restart; the primary comes up; all 100 arrive within
// probe_interval plus a few seconds, each the sent bytes plus exactly our
// Received header, none lost or duplicated, and the queue is empty.
func TestPrimaryDownKillRestart(t *testing.T) {
	t.Parallel()
	const n, conns = 100, 10
	const probe = 2 * time.Second
	primary := NewPrimary(t) // down
	srv := NewServer(t, Options{
		Domains:       []Domain{{Name: "example.test", Primary: []string{primary.Addr}}},
		ProbeInterval: probe.String(),
		Retry:         []string{"1h"}, // only the probe brings the mail in
	})

	type sent struct {
		data []byte
		helo string
		id   string
	}
	msgs := make([]sent, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for g := range conns {
		wg.Go(func() {
			helo := fmt.Sprintf("sender%d.client.test", g)
			c, err := DialSMTP(srv.SMTPAddr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if r, err := c.Cmd("EHLO %s", helo); err != nil || r.Code != 250 {
				errs <- fmt.Errorf("EHLO: %v %v", r, err)
				return
			}
			for i := g; i < n; i += conns {
				data, eight := sampleBody(i)
				m := Mail{From: fmt.Sprintf("s%d@client.test", i), To: []string{fmt.Sprintf("u%03d@example.test", i)}, Data: data}
				if eight {
					m.MailArgs = "BODY=8BITMIME"
				}
				r, err := c.Send(m)
				id := QueueID(r)
				if err != nil || id == "" || !strings.HasPrefix(r.Text, "2.0.0 ") {
					errs <- fmt.Errorf("message %d: %v %v, want 250 2.0.0 … queued as ID", i, r, err)
					return
				}
				msgs[i] = sent{data, helo, id}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	ids := make(map[string]int) // queue id → message index
	for i, m := range msgs {
		if _, dup := ids[m.id]; dup {
			t.Fatalf("queue id %s given twice", m.id)
		}
		ids[m.id] = i
	}
	checkListed := func(when string) {
		t.Helper()
		q := srv.Queue()
		if len(q) != n {
			t.Fatalf("%s: queue list shows %d deliveries, want %d", when, len(q), n)
		}
		for _, it := range q {
			i, ok := ids[it.ID]
			if !ok {
				t.Fatalf("%s: queue list shows unknown id %s", when, it.ID)
			}
			if it.Domain != "example.test" || len(it.Recipients) != 1 || it.Recipients[0] != fmt.Sprintf("u%03d@example.test", i) ||
				it.Sender != fmt.Sprintf("s%d@client.test", i) || it.State != "queued" {
				t.Errorf("%s: queue list item %+v does not match message %d", when, it, i)
			}
		}
	}
	checkListed("before kill -9")

	srv.Kill9()
	srv.Restart()
	checkListed("after restart")

	up := time.Now()
	primary.Start()
	got := primary.WaitMessages(n, probe+8*time.Second)
	t.Logf("%d messages arrived %v after the primary came up (probe_interval %v)", len(got), time.Since(up).Round(time.Millisecond), probe)
	srv.WaitQueueLen(0, 10*time.Second)

	// Nothing is left to deliver: whatever the primary has now is final.
	got = primary.Messages()
	if len(got) != n {
		t.Fatalf("primary received %d messages, want %d (duplicates?)", len(got), n)
	}
	seen := make(map[int]bool)
	for _, m := range got {
		if len(m.To) != 1 {
			t.Errorf("delivery with recipients %v, want one", m.To)
			continue
		}
		var i int
		if _, err := fmt.Sscanf(m.To[0], "u%03d@example.test", &i); err != nil || i < 0 || i >= n {
			t.Errorf("unexpected recipient %q", m.To[0])
			continue
		}
		if seen[i] {
			t.Errorf("message %d delivered twice", i)
		}
		seen[i] = true
		if want := fmt.Sprintf("s%d@client.test", i); m.From != want {
			t.Errorf("message %d: MAIL FROM <%s>, want <%s>", i, m.From, want)
		}
		if _, eight := sampleBody(i); eight && m.Body != "8BITMIME" {
			t.Errorf("message %d has 8-bit data but was relayed with BODY=%q, want 8BITMIME (RFC 6152)", i, m.Body)
		}
		h, err := SplitReceived(m.Data, msgs[i].data)
		if err != nil {
			t.Errorf("message %d: %v", i, err)
			continue
		}
		checkReceived(t, h, msgs[i].helo, msgs[i].id)
	}
	if len(seen) != n {
		t.Errorf("%d distinct messages arrived, want %d", len(seen), n)
	}
}

// TestRetentionExpiryDSN: with the primary down past the retention, the
// sender gets an RFC 3464 DSN (failed, 4.4.7) at its domain's MX, found
// through dns.resolver; a message from the null sender expires without one.
func TestRetentionExpiryDSN(t *testing.T) {
	t.Parallel()
	primary := NewPrimary(t) // down for the whole test
	senderMX := StartPrimary(t)
	dns := dnstest.Start(t,
		"sender.test. 60 IN MX 10 mx.sender.test.",
		"mx.sender.test. 60 IN A 127.0.0.1")
	srv := NewServer(t, Options{
		Domains:       []Domain{{Name: "example.test", Primary: []string{primary.Addr}}},
		Retention:     "3s",
		Retry:         []string{"1s"},
		ProbeInterval: "1s",
		Resolver:      dns.Addr,
		NoticesPort:   senderMX.Port(),
	})

	data := []byte("From: <a@sender.test>\r\nTo: <u@example.test>\r\nSubject: will expire\r\nMessage-ID: <expire-1@sender.test>\r\n\r\nThis one bounces.\r\n")
	r, err := SendMail(srv.SMTPAddr, Mail{From: "a@sender.test", To: []string{"u@example.test"}, Data: data})
	id := QueueID(r)
	if err != nil || id == "" {
		t.Fatalf("send: %v %v", r, err)
	}
	r, err = SendMail(srv.SMTPAddr, Mail{From: "", To: []string{"v@example.test"}, Data: []byte("Subject: a bounce of someone else's\r\n\r\nnull sender\r\n")})
	nullID := QueueID(r)
	if err != nil || nullID == "" {
		t.Fatalf("send from <>: %v %v", r, err)
	}

	got := senderMX.WaitMessages(1, 20*time.Second)
	srv.WaitQueueLen(0, 10*time.Second)
	if !logHas(srv.Log(), "expired", "id="+nullID) {
		t.Errorf("no expiry logged for the null-sender message %s", nullID)
	}
	if got = senderMX.Messages(); len(got) != 1 {
		t.Fatalf("sender's MX received %d messages, want exactly one DSN", len(got))
	}
	if n := len(primary.Messages()); n != 0 {
		t.Fatalf("the down primary received %d messages", n)
	}

	dsn := got[0]
	if dsn.From != "" || len(dsn.To) != 1 || dsn.To[0] != "a@sender.test" {
		t.Fatalf("DSN envelope: from <%s> to %v, want from <> to [a@sender.test]", dsn.From, dsn.To)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(dsn.Data))
	if err != nil {
		t.Fatalf("DSN does not parse: %v\n%s", err, dsn.Data)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || !strings.EqualFold(params["report-type"], "delivery-status") {
		t.Fatalf("DSN Content-Type %q, want multipart/report; report-type=delivery-status", msg.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var status string
	var types []string
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("DSN part: %v", err)
		}
		pt, _, _ := mime.ParseMediaType(part.Header.Get("Content-Type"))
		types = append(types, pt)
		b, _ := io.ReadAll(part)
		if pt == "message/delivery-status" {
			status = string(b)
		}
		if pt == "message/rfc822" || pt == "text/rfc822-headers" {
			if !bytes.Contains(b, []byte("Message-ID: <expire-1@sender.test>")) {
				t.Errorf("DSN's returned %s lacks the original Message-ID:\n%s", pt, b)
			}
		}
	}
	if len(types) < 2 || types[0] != "text/plain" || types[1] != "message/delivery-status" {
		t.Errorf("DSN parts %v, want text/plain, message/delivery-status[, original]", types)
	}
	for _, re := range []string{
		`(?mi)^Reporting-MTA:\s*dns;\s*` + regexp.QuoteMeta(Hostname) + `\s*$`,
		`(?mi)^Final-Recipient:\s*rfc822;\s*u@example\.test\s*$`,
		`(?mi)^Action:\s*failed\s*$`,
		`(?mi)^Status:\s*4\.4\.7\s*$`,
	} {
		if !regexp.MustCompile(re).MatchString(status) {
			t.Errorf("message/delivery-status lacks %s:\n%s", re, status)
		}
	}
	if t.Failed() {
		t.Logf("the DSN:\n%s", dsn.Data)
	}
}

// logHas reports whether one line of the log contains every one of subs.
func logHas(log string, subs ...string) bool {
	for _, line := range strings.Split(log, "\n") {
		ok := true
		for _, s := range subs {
			if !strings.Contains(line, s) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// TestETRN: the primary (from one of its configured addresses) sends ETRN
// for its domain and gets its mail at once, long before the probe or the
// retry schedule would send it. ETRN from an address that is not the
// domain's primary, or for a domain we do not serve, flushes nothing.
func TestETRN(t *testing.T) {
	t.Parallel()
	primary := NewPrimary(t)
	other := NewPrimary(t) // for other.test, on 127.0.0.1 too, but its configured address is 127.0.0.2
	srv := NewServer(t, Options{
		Domains: []Domain{
			{Name: "example.test", Primary: []string{primary.Addr}},
			{Name: "other.test", Primary: []string{"127.0.0.2:" + strconv.Itoa(other.Port())}},
		},
		ProbeInterval: "1h",
		Retry:         []string{"1h"},
	})
	data := []byte("Subject: ETRN me\r\n\r\nwaiting for the primary\r\n")
	r, err := SendMail(srv.SMTPAddr, Mail{From: "a@client.test", To: []string{"u@example.test"}, Data: data})
	id := QueueID(r)
	if err != nil || id == "" {
		t.Fatalf("send: %v %v", r, err)
	}
	// Wait for the first attempt to fail, so that only ETRN can deliver.
	Eventually(t, 10*time.Second, "no failed first attempt", func() bool {
		q := srv.Queue()
		return len(q) == 1 && q[0].Attempts >= 1 && q[0].NextAttempt.After(time.Now().Add(30*time.Minute))
	})
	primary.Start()

	c, err := DialSMTP(srv.SMTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r, err := c.Cmd("EHLO primary.e2e.test"); err != nil || r.Code != 250 {
		t.Fatalf("EHLO: %v %v", r, err)
	}
	for _, tc := range []struct {
		arg  string
		code int
	}{
		{"other.test", 459},   // we are not other.test's primary (127.0.0.2)
		{"foreign.test", 458}, // not a domain we serve
		{"example.test", 250},
	} {
		r, err := c.Cmd("ETRN %s", tc.arg)
		if err != nil || r.Code != tc.code {
			t.Errorf("ETRN %s = %v %v, want %d", tc.arg, r, err, tc.code)
		}
	}
	got := primary.WaitMessages(1, 5*time.Second)
	srv.WaitQueueLen(0, 5*time.Second)
	if len(got) != 1 {
		t.Fatalf("primary received %d messages, want 1", len(got))
	}
	h, err := SplitReceived(got[0].Data, data)
	if err != nil {
		t.Fatal(err)
	}
	checkReceived(t, h, "client.e2e.test", id)
}

// TestSwaksClient: swaks, an SMTP client we did not write, sends a message
// with an attachment; it is queued while the primary is down and then
// delivered byte-identical apart from our Received header.
func TestSwaksClient(t *testing.T) {
	t.Parallel()
	swaks, err := exec.LookPath("swaks")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("swaks is not installed and CI is set")
		}
		t.Skip("swaks is not installed")
	}
	primary := NewPrimary(t)
	srv := NewServer(t, Options{
		Domains:       []Domain{{Name: "example.test", Primary: []string{primary.Addr}}},
		ProbeInterval: "1s",
		Retry:         []string{"1h"},
	})
	dir := t.TempDir()
	att := filepath.Join(dir, "report.bin")
	payload := make([]byte, 3000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	if err := os.WriteFile(att, payload, 0o600); err != nil {
		t.Fatal(err)
	}
	// swaks composes the message (MIME, base64 attachment); --dump-mail shows
	// exactly what it would send, and we send that very text with --data.
	args := []string{"--from", "a@client.test", "--to", "u@example.test", "--helo", "swaks.client.test",
		"--header", "Subject: swaks e2e", "--attach-type", "application/octet-stream", "--attach", att}
	dump, err := exec.Command(swaks, append(args, "--dump-mail")...).Output()
	if err != nil {
		t.Fatalf("swaks --dump-mail: %v", err)
	}
	// The dump ends with a stray CR after the last line break (an artefact of
	// --dump-mail; a bare CR is not allowed in DATA, RFC 5321 §2.3.8). The
	// file we give to --data ends without a line break: swaks ends the data
	// with CRLF.CRLF, so the message on the wire ends with one CRLF.
	body := bytes.TrimRight(dump, "\r\n")
	sent := append(body, "\r\n"...)
	msgFile := filepath.Join(dir, "message.eml")
	if err := os.WriteFile(msgFile, body, 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(srv.SMTPAddr)
	out, err := exec.Command(swaks, "--server", host, "--port", port, "--from", "a@client.test", "--to", "u@example.test",
		"--helo", "swaks.client.test", "--data", "@"+msgFile).CombinedOutput()
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`(?m)^<[-~]* +250 2\.0\.0 Ok: queued as (\S+)\s*$`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("swaks transcript has no 250 queued as:\n%s", out)
	}
	id := string(m[1])
	if q := srv.Queue(); len(q) != 1 || q[0].ID != id {
		t.Fatalf("queue list = %+v, want one delivery of %s", q, id)
	}

	primary.Start()
	got := primary.WaitMessages(1, 10*time.Second)
	srv.WaitQueueLen(0, 5*time.Second)
	h, err := SplitReceived(got[0].Data, sent)
	if err != nil {
		t.Fatalf("%v\ndelivered: %q\nsent: %q", err, tail(got[0].Data, 120), tail(sent, 120))
	}
	checkReceived(t, h, "swaks.client.test", id)
	if !bytes.Contains(sent, []byte(base64.StdEncoding.EncodeToString(payload)[:76])) {
		t.Errorf("swaks did not attach the file as base64:\n%s", sent)
	}
}

// TestQueueCommands drives the queue through the real binary's `queue`
// subcommands: show prints the stored message with our Received header;
// a held message stays while the primary is up and everything else is
// flushed; release delivers it; delete drops a message without a DSN.
func TestQueueCommands(t *testing.T) {
	t.Parallel()
	primary := NewPrimary(t)
	senderMX := StartPrimary(t) // where a DSN would go, if delete sent one
	dns := dnstest.Start(t,
		"client.test. 60 IN MX 10 mx.client.test.",
		"mx.client.test. 60 IN A 127.0.0.1")
	srv := NewServer(t, Options{
		Domains:       []Domain{{Name: "example.test", Primary: []string{primary.Addr}}},
		ProbeInterval: "1h",
		Retry:         []string{"1h"},
		Resolver:      dns.Addr,
		NoticesPort:   senderMX.Port(),
	})
	send := func(name string) (string, []byte) {
		t.Helper()
		data := []byte("Subject: " + name + "\r\nMessage-ID: <" + name + "@client.test>\r\n\r\nmessage " + name + "\r\n")
		r, err := SendMail(srv.SMTPAddr, Mail{From: "a@client.test", To: []string{name + "@example.test"}, Data: data})
		if QueueID(r) == "" || err != nil {
			t.Fatalf("send %s: %v %v", name, r, err)
		}
		return QueueID(r), data
	}
	idA, dataA := send("a")
	idB, dataB := send("b")
	idC, _ := send("c")
	Eventually(t, 10*time.Second, "first attempts did not fail", func() bool {
		q := srv.Queue()
		for _, it := range q {
			if it.Attempts < 1 {
				return false
			}
		}
		return len(q) == 3
	})

	// show: the stored message, our Received header then the sent bytes.
	shown := []byte(srv.QueueCmd("show", idA))
	h, err := SplitReceived(shown, dataA)
	if err != nil {
		t.Fatalf("queue show %s: %v\n%s", idA, err, shown)
	}
	checkReceived(t, h, "client.e2e.test", idA)

	if out := srv.QueueCmd("hold", idA); !strings.HasPrefix(out, "held 1 ") {
		t.Errorf("queue hold: %q", out)
	}
	if out := srv.QueueCmd("delete", idC); !strings.Contains(out, idC) {
		t.Errorf("queue delete: %q", out)
	}
	q := srv.Queue()
	if len(q) != 2 {
		t.Fatalf("after delete, queue list = %+v, want a and b", q)
	}
	for _, it := range q {
		if it.ID == idA && it.State != "held" || it.ID == idB && it.State != "queued" || it.ID == idC {
			t.Errorf("queue list item %s state %q", it.ID, it.State)
		}
	}
	if _, _, err := srv.queueCmd("show", idC); err == nil {
		t.Errorf("queue show of a deleted message succeeded")
	}

	// The primary is up and everything is made due: b goes, the held a stays.
	primary.Start()
	if out := srv.QueueCmd("flush"); !strings.HasPrefix(out, "flushed ") {
		t.Errorf("queue flush: %q", out)
	}
	if out := srv.QueueCmd("flush", idA); !strings.HasPrefix(out, "flushed ") {
		t.Errorf("queue flush %s: %q", idA, out)
	}
	got := primary.WaitMessages(1, 5*time.Second)
	q = srv.WaitQueueLen(1, 5*time.Second)
	if q[0].ID != idA || q[0].State != "held" {
		t.Fatalf("after flush, queue list = %+v, want only %s, held", q, idA)
	}
	if got = primary.Messages(); len(got) != 1 || !bytes.HasSuffix(got[0].Data, dataB) {
		t.Fatalf("primary received %d messages, want only b", len(got))
	}

	if out := srv.QueueCmd("release", idA); !strings.HasPrefix(out, "released 1 ") {
		t.Errorf("queue release: %q", out)
	}
	got = primary.WaitMessages(2, 5*time.Second)
	srv.WaitQueueLen(0, 5*time.Second)
	if len(got) != 2 || !bytes.Equal(got[1].Data, shown) {
		t.Fatalf("released message: got %d messages, the last is\n%s\nwant what queue show printed:\n%s", len(got), got[len(got)-1].Data, shown)
	}
	// c was deleted: never delivered, and no DSN was made for it.
	if n := len(primary.Messages()); n != 2 {
		t.Errorf("primary received %d messages, want 2", n)
	}
	if n := len(senderMX.Messages()); n != 0 || logHas(srv.Log(), "bounced", "id="+idC) {
		t.Errorf("deleting %s sent a DSN (%d messages at the sender's MX)", idC, n)
	}
}

// TestGracefulStop: SIGTERM while mail is queued stops the server cleanly;
// after a restart the mail is still there and is delivered when the primary
// answers the probe.
func TestGracefulStop(t *testing.T) {
	t.Parallel()
	primary := NewPrimary(t)
	srv := NewServer(t, Options{
		Domains:       []Domain{{Name: "example.test", Primary: []string{primary.Addr}}},
		ProbeInterval: "1s",
		Retry:         []string{"1h"},
	})
	sent := make(map[string][]byte) // queue id → data
	for i := range 5 {
		data, _ := sampleBody(i)
		r, err := SendMail(srv.SMTPAddr, Mail{From: "a@client.test", To: []string{fmt.Sprintf("u%03d@example.test", i)}, Data: data, MailArgs: "BODY=8BITMIME"})
		if QueueID(r) == "" || err != nil {
			t.Fatalf("send %d: %v %v", i, r, err)
		}
		sent[QueueID(r)] = data
	}
	srv.WaitQueueLen(5, 5*time.Second)
	srv.Stop()
	if !strings.Contains(srv.Log(), "shutting down") {
		t.Errorf("no shutdown logged")
	}
	if _, err := DialSMTP(srv.SMTPAddr); err == nil {
		t.Fatalf("SMTP still answers after SIGTERM")
	}
	srv.Restart()
	q := srv.Queue()
	if len(q) != 5 {
		t.Fatalf("after restart queue list shows %d deliveries, want 5", len(q))
	}
	for _, it := range q {
		if sent[it.ID] == nil {
			t.Fatalf("unknown id %s after restart", it.ID)
		}
	}
	primary.Start()
	got := primary.WaitMessages(5, 10*time.Second)
	srv.WaitQueueLen(0, 5*time.Second)
	if got = primary.Messages(); len(got) != 5 {
		t.Fatalf("primary received %d messages, want 5", len(got))
	}
	ids := make(map[string]bool)
	for _, m := range got {
		for id, data := range sent {
			if bytes.HasSuffix(m.Data, data) {
				h, err := SplitReceived(m.Data, data)
				if err != nil {
					t.Error(err)
				}
				checkReceived(t, h, "client.e2e.test", id)
				ids[id] = true
			}
		}
	}
	if len(ids) != 5 {
		t.Errorf("%d distinct messages arrived intact, want 5", len(ids))
	}
}

func tail(b []byte, n int) []byte { return b[max(0, len(b)-n):] }

// TestPrimaryLoopsBack: a domain whose primary is, by mistake, this very
// server. The relay sees its own name in the EHLO reply and defers: the
// message stays queued, one copy, with the reason in the queue and the log,
// instead of being handed to ourselves again and again.
func TestPrimaryLoopsBack(t *testing.T) {
	t.Parallel()
	self := FreeAddr(t)
	srv := NewServer(t, Options{
		SMTPAddr:      self,
		Domains:       []Domain{{Name: "example.test", Primary: []string{self}}},
		ProbeInterval: "200ms",
		Retry:         []string{"1s"},
	})
	r, err := SendMail(srv.SMTPAddr, Mail{From: "a@client.test", To: []string{"u@example.test"},
		Data: []byte("Subject: loop\r\n\r\nround and round\r\n")})
	if err != nil || r.Code != 250 {
		t.Fatalf("send: %v %v", r, err)
	}
	var q []Item
	Eventually(t, 10*time.Second, "no second failed attempt", func() bool {
		q = srv.Queue()
		return len(q) != 1 || q[0].Attempts >= 2
	})
	if len(q) != 1 || !strings.Contains(q[0].LastError, "loops back to myself") {
		t.Fatalf("queue = %+v, want the one message, deferred as a loop", q)
	}
	if !strings.Contains(srv.Log(), "loops back to myself") {
		t.Error("the log does not say the mail loops back")
	}
}
