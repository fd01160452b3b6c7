package e2e

// Interoperability with Postfix (Debian's package), issue 2: Postfix as the
// sending MTA relays to us, and Postfix as the primary receives from us. The
// instances are built by postfix_helpers_test.go: loopback only, no DNS,
// every route but the test's own an error:.

import (
	"bytes"
	"fmt"
	"io"
	"mime/quotedprintable"
	"net/mail"
	"regexp"
	"strings"
	"testing"
	"time"
)

const (
	pfDomain = "example.test"
	pfSender = "alice@sender.test"
)

// pfMessage is message i of a test: CRLF lines, every header a client would
// send (so Postfix adds none but its trace headers), 8-bit UTF-8, a line
// starting with a dot, trailing blanks and a 900-octet line (under the 998
// at which Postfix's SMTP client would fold).
func pfMessage(i int, to string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Alice <%s>\r\n", pfSender)
	fmt.Fprintf(&b, "To: <%s>\r\n", to)
	fmt.Fprintf(&b, "Subject: postfix interop %d\r\n", i)
	fmt.Fprintf(&b, "Message-ID: <pf-%d@sender.test>\r\n", i)
	b.WriteString("Date: Fri, 27 Nov 2026 12:00:00 +0000\r\n")
	b.WriteString("MIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\n")
	b.WriteString("Content-Transfer-Encoding: 8bit\r\n")
	b.WriteString("\r\n")
	fmt.Fprintf(&b, "Message %d. Grüße aus Köln, 東京.\r\n", i)
	b.WriteString(".a line that starts with a dot\r\n")
	b.WriteString("..and one with two\r\n")
	b.WriteString("trailing blanks  \t\r\n")
	b.WriteString(strings.Repeat("0123456789", 90) + "\r\n")
	b.WriteString("\r\n")
	b.WriteString("-- \r\nAlice\r\n")
	return b.Bytes()
}

var messageIDRE = regexp.MustCompile(`(?mi)^Message-ID: <(pf-\d+@sender\.test)>\r?$`)

// messageID returns the pf-N@sender.test Message-ID of a test message.
func messageID(b []byte) string {
	m := messageIDRE.FindSubmatch(b)
	if m == nil {
		return ""
	}
	return string(m[1])
}

// headerFields splits a header block (CRLF or LF lines, no blank line) into
// its fields, folded lines kept with their field.
func headerFields(h string) []string {
	nl := "\n"
	if strings.Contains(h, "\r\n") {
		nl = "\r\n"
	}
	var fields []string
	for _, l := range strings.SplitAfter(h, nl) {
		if l == "" {
			continue
		}
		if (l[0] == ' ' || l[0] == '\t') && len(fields) > 0 {
			fields[len(fields)-1] += l
			continue
		}
		fields = append(fields, l)
	}
	return fields
}

// crlfToLF is how a maildir stores a message.
func crlfToLF(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")) }

// ourReceived reports whether field is the Received header backupmx adds for
// a message it received from helo with queue id qid.
func ourReceived(field, helo, qid string) bool {
	return strings.HasPrefix(field, "Received: from "+helo+" ") &&
		strings.Contains(field, "by "+Hostname+" (backupmx) with ESMTP") &&
		strings.Contains(field, "id "+qid)
}

// postfixReceived reports whether field is the Received header of instance p
// for a message it received from helo.
func postfixReceived(field string, p *postfixInstance, helo string) bool {
	return strings.HasPrefix(field, "Received: from "+helo+" (unknown [127.0.0.1])") &&
		strings.Contains(field, "by "+p.Name+".postfix.e2e.test (Postfix) with ESMTP")
}

// TestPostfixSendsToUs: Postfix as the sending MTA relays 20 messages to
// backupmx while the primary is down; backupmx accepts them all (Postfix logs
// our "250 2.0.0 Ok: queued as ID"), lists them, and delivers them to the
// primary once it is up, with Postfix's and our trace headers prepended and
// nothing else changed.
func TestPostfixSendsToUs(t *testing.T) {
	requirePostfix(t)
	const n = 20
	primary := NewPrimary(t) // down
	srv := NewServer(t, Options{Domains: []Domain{{Name: pfDomain, Primary: []string{primary.Addr}}}})
	pf := startPostfix(t, "sender", relayToCF(pfDomain, srv.SMTPAddr), "")

	sent := map[string][]byte{} // Message-ID → the bytes given to Postfix
	for i := range n {
		data := pfMessage(i, fmt.Sprintf("user%d@%s", i%3, pfDomain))
		r, err := SendMail(pf.Addr, Mail{From: pfSender, MailArgs: "BODY=8BITMIME",
			To: []string{fmt.Sprintf("user%d@%s", i%3, pfDomain)}, Data: data})
		if err != nil || r.Code != 250 {
			t.Fatalf("message %d to Postfix: %v %v", i, r, err)
		}
		sent[messageID(data)] = data
	}
	// The test's Postfix has no other route: a foreign domain is refused.
	if r, err := SendMail(pf.Addr, Mail{From: pfSender, To: []string{"bob@elsewhere.test"}, Data: pfMessage(99, "bob@elsewhere.test")}); err != nil || r.Code/100 != 5 {
		t.Fatalf("Postfix relayed to a domain it has no route to: %v %v", r, err)
	}

	// Postfix hands every message over and logs our reply.
	var sentLines []string
	Eventually(t, 30*time.Second, "Postfix did not log 20 deliveries to backupmx", func() bool {
		sentLines = pf.LogLines("status=sent", "relay=127.0.0.1[127.0.0.1]:"+strings.Split(srv.SMTPAddr, ":")[1])
		return len(sentLines) >= n
	})
	ourIDs := map[string]bool{}
	replyRE := regexp.MustCompile(`dsn=2\.0\.0, status=sent \(250 2\.0\.0 Ok: queued as (\S+)\)`)
	for _, l := range sentLines {
		m := replyRE.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("Postfix log line without our 250 reply: %s", l)
		}
		ourIDs[m[1]] = true
	}
	if len(ourIDs) != n {
		t.Fatalf("Postfix logged %d distinct queue ids of ours, want %d", len(ourIDs), n)
	}
	if !pf.QueueEmpty() {
		t.Errorf("Postfix's queue is not empty after relaying to us")
	}

	// backupmx lists them all, with the primary down.
	items := srv.WaitQueueLen(n, 10*time.Second)
	for _, it := range items {
		if !ourIDs[it.ID] {
			t.Errorf("queue list shows %s, which Postfix was not told", it.ID)
		}
		if it.Domain != pfDomain || it.Sender != pfSender || len(it.Recipients) != 1 {
			t.Errorf("queue item %+v", it)
		}
	}

	// The primary comes up: everything arrives, in one piece.
	primary.Start()
	srv.QueueCmd("flush")
	msgs := primary.WaitMessages(n, 30*time.Second)
	if len(msgs) != n {
		t.Fatalf("primary got %d messages, want %d", len(msgs), n)
	}
	seen := map[string]bool{}
	for _, m := range msgs {
		id := messageID(m.Data)
		data, ok := sent[id]
		if !ok || seen[id] {
			t.Fatalf("primary got an unexpected or duplicate message %q:\n%s", id, m.Data)
		}
		seen[id] = true
		if m.From != pfSender || m.HELO != Hostname {
			t.Errorf("%s: MAIL FROM %q HELO %q", id, m.From, m.HELO)
		}
		if !bytes.HasSuffix(m.Data, data) {
			t.Errorf("%s: delivered message does not end with the message given to Postfix:\n%s", id, m.Data)
			continue
		}
		f := headerFields(string(m.Data[:len(m.Data)-len(data)]))
		if len(f) != 2 || !strings.HasPrefix(f[0], "Received: from sender.postfix.e2e.test (") ||
			!strings.Contains(f[0], "(backupmx)") || !ourIDs[strings.Fields(f[0][strings.Index(f[0], "\tid ")+4:])[0]] ||
			!postfixReceived(f[1], pf, "client.e2e.test") {
			t.Errorf("%s: want our Received then Postfix's and nothing else prepended, got %q", id, f)
		}
	}
	srv.WaitQueueLen(0, 10*time.Second)
}

// TestPostfixAsPrimary: Postfix is the primary for example.test (maildir
// delivery). Mail queued while it is down arrives once it is up, unchanged
// apart from the trace headers; a recipient Postfix does not know (550 5.1.1
// at RCPT) gets its sender a DSN through notices.smarthost, while the other
// recipients of the same message are delivered; a recipient Postfix defers
// (450 at RCPT) stays queued, with no DSN and no effect on the others.
func TestPostfixAsPrimary(t *testing.T) {
	requirePostfix(t)
	uid, gid := postfixUIDs(t)
	cf := virtualPrimaryCF(uid, gid, pfDomain, "u1", "u2", "busy")
	cf["smtpd_recipient_restrictions"] = "check_recipient_access inline:{ { busy@" + pfDomain + " = 450 4.2.1 mailbox busy, try later } }"
	pf := newPostfix(t, "primary", cf, "") // down
	senderMX := StartPrimary(t)            // the sender's side: DSNs land here
	srv := NewServer(t, Options{
		Domains:   []Domain{{Name: pfDomain, Primary: []string{pf.Addr}}},
		Smarthost: senderMX.Addr,
	})

	type sentMsg struct {
		data []byte
		qid  string
		to   []string
	}
	sent := map[string]*sentMsg{}
	send := func(i int, to ...string) {
		t.Helper()
		data := pfMessage(i, to[0])
		r, err := SendMail(srv.SMTPAddr, Mail{From: pfSender, MailArgs: "BODY=8BITMIME", To: to, Data: data})
		if err != nil || QueueID(r) == "" {
			t.Fatalf("message %d to backupmx: %v %v", i, r, err)
		}
		sent[messageID(data)] = &sentMsg{data, QueueID(r), to}
	}
	for i := range 10 {
		send(i, fmt.Sprintf("u%d@%s", 1+i%2, pfDomain))
	}
	send(10, "u1@"+pfDomain, "nobody@"+pfDomain) // half known
	send(11, "nobody@"+pfDomain)                 // unknown only
	send(12, "busy@"+pfDomain)                   // deferred by Postfix
	srv.WaitQueueLen(13, 10*time.Second)
	if pf.LogLines("connect from") != nil {
		t.Fatal("Postfix saw a connection before it was started")
	}

	pf.Start()
	srv.QueueCmd("flush")

	var got map[string][]byte
	Eventually(t, 30*time.Second, "maildirs do not hold 6 messages for u1 and 5 for u2", func() bool {
		got = pf.Maildir("u1")
		u2 := pf.Maildir("u2")
		if len(got) != 6 || len(u2) != 5 {
			return false
		}
		for k, v := range u2 {
			got["u2/"+k] = v
		}
		return true
	})
	for name, file := range got {
		id := messageID(file)
		s := sent[id]
		if s == nil {
			t.Fatalf("%s: unexpected message %q:\n%s", name, id, file)
		}
		want := crlfToLF(s.data)
		if !bytes.HasSuffix(file, want) {
			t.Errorf("%s (%s): maildir file does not end with the message sent (LF line ends):\n%s", name, id, file)
			continue
		}
		f := headerFields(string(file[:len(file)-len(want)]))
		rcpt := s.to[0]
		if strings.HasPrefix(name, "u2/") {
			rcpt = "u2@" + pfDomain
		} else if len(s.to) > 1 {
			rcpt = "u1@" + pfDomain
		}
		if len(f) != 5 ||
			f[0] != "Return-Path: <"+pfSender+">\n" ||
			f[1] != "X-Original-To: "+rcpt+"\n" ||
			f[2] != "Delivered-To: "+rcpt+"\n" ||
			!postfixReceived(f[3], pf, Hostname) ||
			!ourReceived(f[4], "client.e2e.test", s.qid) {
			t.Errorf("%s (%s): want Postfix's Return-Path, X-Original-To, Delivered-To, Received, then ours (id %s), got %q", name, id, s.qid, f)
		}
	}

	// Two DSNs reach the sender's side: one for each message with nobody@.
	dsns := senderMX.WaitMessages(2, 30*time.Second)
	for _, m := range dsns {
		body := string(m.Data)
		if m.From != "" || len(m.To) != 1 || m.To[0] != pfSender {
			t.Errorf("DSN envelope: from %q to %q, want <> to %s", m.From, m.To, pfSender)
		}
		for _, want := range []string{
			"Content-Type: multipart/report",
			"report-type=delivery-status",
			"Final-Recipient: rfc822; nobody@" + pfDomain,
			"Action: failed",
			"Status: 5.1.1",
			"Remote-MTA: dns; 127.0.0.1",
			"Diagnostic-Code: smtp; 550 5.1.1 <nobody@" + pfDomain + ">: Recipient address rejected: User unknown in virtual mailbox table",
		} {
			if !strings.Contains(body, want) {
				t.Errorf("DSN lacks %q:\n%s", want, body)
			}
		}
		if strings.Contains(body, "Final-Recipient: rfc822; u1@") {
			t.Errorf("DSN names the delivered recipient u1:\n%s", body)
		}
	}
	// Only busy@ is left, deferred with Postfix's reply.
	items := srv.WaitQueueLen(1, 10*time.Second)
	if it := items[0]; it.ID != sent["pf-12@sender.test"].qid || it.Attempts < 1 ||
		!strings.Contains(it.LastError, "450 4.2.1 <busy@"+pfDomain+">: Recipient address rejected: mailbox busy, try later") {
		t.Errorf("left in the queue: %+v, want busy@ (%s) deferred with Postfix's 450", it, sent["pf-12@sender.test"].qid)
	}
	if pf.Maildir("busy") != nil {
		t.Error("busy@ has mail")
	}
	if n := len(pf.LogLines("reject: RCPT from", "450 4.2.1 <busy@"+pfDomain+">")); n < 1 {
		t.Error("Postfix did not log deferring busy@")
	}
	if n := len(pf.LogLines("status=sent (delivered to maildir)")); n != 11 {
		t.Errorf("Postfix logged %d maildir deliveries, want 11", n)
	}
	if n := len(pf.LogLines("reject: RCPT from", "550 5.1.1 <nobody@"+pfDomain+">")); n != 2 {
		t.Errorf("Postfix logged %d refusals of nobody@, want 2", n)
	}
	if msgs := senderMX.Messages(); len(msgs) != 2 {
		t.Errorf("the sender's side got %d messages, want the 2 DSNs", len(msgs))
	}
}

// TestPostfixBothSides: Postfix sender → backupmx → Postfix primary, the
// primary down at first. Every message reaches the maildir with three
// Received headers (the primary's, ours, the sender's) above the message as
// it was given to the first Postfix.
func TestPostfixBothSides(t *testing.T) {
	requirePostfix(t)
	const n = 5
	uid, gid := postfixUIDs(t)
	primary := newPostfix(t, "primary", virtualPrimaryCF(uid, gid, pfDomain, "u1"), "") // down
	srv := NewServer(t, Options{Domains: []Domain{{Name: pfDomain, Primary: []string{primary.Addr}}}})
	sender := startPostfix(t, "sender", relayToCF(pfDomain, srv.SMTPAddr), "")

	sent := map[string][]byte{}
	for i := range n {
		data := pfMessage(i, "u1@"+pfDomain)
		r, err := SendMail(sender.Addr, Mail{From: pfSender, MailArgs: "BODY=8BITMIME", To: []string{"u1@" + pfDomain}, Data: data})
		if err != nil || r.Code != 250 {
			t.Fatalf("message %d to the sending Postfix: %v %v", i, r, err)
		}
		sent[messageID(data)] = data
	}
	srv.WaitQueueLen(n, 30*time.Second)
	primary.Start()
	srv.QueueCmd("flush")

	var got map[string][]byte
	Eventually(t, 30*time.Second, "the primary's maildir does not hold every message", func() bool {
		got = primary.Maildir("u1")
		return len(got) == n
	})
	for name, file := range got {
		id := messageID(file)
		data, ok := sent[id]
		if !ok {
			t.Fatalf("%s: unexpected message %q", name, id)
		}
		want := crlfToLF(data)
		if !bytes.HasSuffix(file, want) {
			t.Errorf("%s: maildir file does not end with the message sent:\n%s", id, file)
			continue
		}
		f := headerFields(string(file[:len(file)-len(want)]))
		if len(f) != 6 || !postfixReceived(f[3], primary, Hostname) ||
			!strings.HasPrefix(f[4], "Received: from sender.postfix.e2e.test (") || !strings.Contains(f[4], "(backupmx)") ||
			!postfixReceived(f[5], sender, "client.e2e.test") {
			t.Errorf("%s: want the primary's, our and the sender's Received, got %q", id, f)
		}
	}
	srv.WaitQueueLen(0, 10*time.Second)
}

// TestPostfixPrimaryWithout8BITMIME: a primary that does not offer
// 8BITMIME (Postfix with smtpd_discard_ehlo_keywords = 8bitmime) gets an
// 8-bit message converted to quoted-printable (RFC 6152 §3), as Postfix's
// own SMTP client would convert it; what it stores decodes to the text sent.
func TestPostfixPrimaryWithout8BITMIME(t *testing.T) {
	data, file, srv := viaPostfixPrimary(t, "primary7", "smtpd_discard_ehlo_keywords", "8bitmime", "BODY=8BITMIME")
	if bytes.IndexFunc(file, func(r rune) bool { return r >= 0x80 }) >= 0 {
		t.Fatalf("the primary got 8-bit bytes:\n%s", file)
	}
	m, err := mail.ReadMessage(bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	if cte := m.Header.Get("Content-Transfer-Encoding"); cte != "quoted-printable" {
		t.Errorf("Content-Transfer-Encoding %q, want quoted-printable", cte)
	}
	got, err := io.ReadAll(quotedprintable.NewReader(m.Body))
	if err != nil {
		t.Fatal(err)
	}
	sent, _ := mail.ReadMessage(bytes.NewReader(data))
	want, _ := io.ReadAll(sent.Body)
	// Postfix stores LF line ends; quoted-printable decoding gives CRLF.
	if g, w := strings.ReplaceAll(string(got), "\r\n", "\n"), strings.ReplaceAll(string(want), "\r\n", "\n"); g != w {
		t.Errorf("decoded body\n%q\nwant\n%q", g, w)
	}
	if !strings.Contains(srv.Log(), "converted to 7 bit") {
		t.Error("backupmx did not log the conversion")
	}
}

// TestPostfixPrimaryWithoutSMTPUTF8: mail sent to us with SMTPUTF8 whose
// addresses and header are ASCII reaches a primary without SMTPUTF8
// (Postfix with smtputf8_enable = no) without the parameter, unchanged; it
// is not refused 5.6.7 as if it needed SMTPUTF8.
func TestPostfixPrimaryWithoutSMTPUTF8(t *testing.T) {
	data, file, srv := viaPostfixPrimary(t, "primary8", "smtputf8_enable", "no", "BODY=8BITMIME SMTPUTF8")
	if want := crlfToLF(data); !bytes.HasSuffix(file, want) {
		t.Errorf("maildir file does not end with the message sent:\n%s", file)
	}
	srv.WaitQueueLen(0, 10*time.Second)
}

// viaPostfixPrimary sends pfMessage to backupmx with mailArgs, for a Postfix
// primary whose main.cf has key = value besides the usual, and returns the
// message sent, the file it became in the primary's maildir, and backupmx.
func viaPostfixPrimary(t *testing.T, name, key, value, mailArgs string) (data, file []byte, srv *Server) {
	t.Helper()
	requirePostfix(t)
	uid, gid := postfixUIDs(t)
	cf := virtualPrimaryCF(uid, gid, pfDomain, "u1")
	cf[key] = value
	pf := startPostfix(t, name, cf, "")
	srv = NewServer(t, Options{Domains: []Domain{{Name: pfDomain, Primary: []string{pf.Addr}}}})
	data = pfMessage(1, "u1@"+pfDomain)
	r, err := SendMail(srv.SMTPAddr, Mail{From: pfSender, MailArgs: mailArgs, To: []string{"u1@" + pfDomain}, Data: data})
	if err != nil || QueueID(r) == "" {
		t.Fatalf("to backupmx: %v %v", r, err)
	}
	Eventually(t, 30*time.Second, "the message did not reach the maildir", func() bool {
		for _, f := range pf.Maildir("u1") {
			file = f
			return true
		}
		return false
	})
	return data, file, srv
}
