package dsn

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"backupmx/internal/store"
)

var (
	arrival = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	now     = arrival.Add(15 * 24 * time.Hour)
)

const original = "Received: from x by backup.ours.test\n" +
	"From: Sender <s@sender.test>\n" +
	"Subject: the original\n" +
	"\n" +
	"first body line\n" +
	".dot line\n"

func notice(ret string, orig io.Reader) *Notice {
	return &Notice{
		ReportingMTA: "backup.ours.test",
		Sender:       "s@sender.test",
		EnvID:        "env-1",
		Ret:          ret,
		Arrival:      arrival,
		Date:         now,
		MessageID:    "fixed@backup.ours.test",
		Reason:       "The primary refused some recipients.",
		Recipients: []Recipient{
			{Addr: "a@example.test", ORcpt: "rfc822;A@example.test", Action: ActionFailed, Status: "5.1.1",
				Diagnostic: "550 5.1.1 no such\nuser", RemoteMTA: "mx1.example.test:25", LastAttempt: now},
			{Addr: "b@example.test", Action: ActionFailed, Status: "4.4.7",
				Diagnostic: "held for 15 days; last error: connection refused", LastAttempt: now},
		},
		Original: orig,
	}
}

// parsed is a notice taken apart the way a mail client would.
type parsed struct {
	header    mail.Header
	human     string
	perMsg    textproto.MIMEHeader
	perRcpt   []textproto.MIMEHeader
	thirdType string
	third     string
}

func parse(t *testing.T, raw []byte) parsed {
	t.Helper()
	if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\n")) {
		t.Error("bare LF in the notice")
	}
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	var p parsed
	p.header = m.Header
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type = %q (%v)", m.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var parts []*multipart.Part
	var bodies []string
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(part)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, part)
		bodies = append(bodies, string(b))
	}
	if len(parts) < 2 {
		t.Fatalf("%d parts", len(parts))
	}
	if ct := parts[0].Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("part 1 is %q", ct)
	}
	p.human = bodies[0]
	if ct := parts[1].Header.Get("Content-Type"); ct != "message/delivery-status" {
		t.Errorf("part 2 is %q", ct)
	}
	tr := textproto.NewReader(bufio.NewReader(strings.NewReader(bodies[1])))
	p.perMsg, err = tr.ReadMIMEHeader()
	if err != nil {
		t.Fatalf("per-message fields: %v", err)
	}
	for {
		h, err := tr.ReadMIMEHeader()
		if len(h) > 0 {
			p.perRcpt = append(p.perRcpt, h)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("per-recipient fields: %v", err)
		}
	}
	if len(parts) > 2 {
		p.thirdType, p.third = parts[2].Header.Get("Content-Type"), bodies[2]
	}
	return p
}

func write(t *testing.T, n *Notice) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Write(&b, n); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestFailureNotice(t *testing.T) {
	p := parse(t, write(t, notice("", strings.NewReader(original))))

	for k, want := range map[string]string{
		"From":           "Mail Delivery System <MAILER-DAEMON@backup.ours.test>",
		"To":             "<s@sender.test>",
		"Subject":        "Undelivered Mail Returned to Sender",
		"Date":           now.Format(time.RFC1123Z),
		"Message-Id":     "<fixed@backup.ours.test>",
		"Mime-Version":   "1.0",
		"Auto-Submitted": "auto-replied",
	} {
		if got := p.header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if _, err := p.header.AddressList("From"); err != nil {
		t.Errorf("From does not parse: %v", err)
	}

	for _, want := range []string{"could not be delivered", "<a@example.test>: failed: 550 5.1.1 no such user",
		"<b@example.test>: failed", "held it for 15 days", "The primary refused some recipients."} {
		if !strings.Contains(p.human, want) {
			t.Errorf("human part lacks %q:\n%s", want, p.human)
		}
	}

	for k, want := range map[string]string{
		"Reporting-Mta":        "dns; backup.ours.test",
		"Original-Envelope-Id": "env-1",
		"Arrival-Date":         arrival.Format(time.RFC1123Z),
	} {
		if got := p.perMsg.Get(k); got != want {
			t.Errorf("per-message %s = %q, want %q", k, got, want)
		}
	}
	if len(p.perRcpt) != 2 {
		t.Fatalf("%d recipient blocks, want 2", len(p.perRcpt))
	}
	a, b := p.perRcpt[0], p.perRcpt[1]
	for k, want := range map[string]string{
		"Original-Recipient": "rfc822; A@example.test",
		"Final-Recipient":    "rfc822; a@example.test",
		"Action":             "failed",
		"Status":             "5.1.1",
		"Remote-Mta":         "dns; mx1.example.test",
		"Diagnostic-Code":    "smtp; 550 5.1.1 no such user",
		"Last-Attempt-Date":  now.Format(time.RFC1123Z),
	} {
		if got := a.Get(k); got != want {
			t.Errorf("recipient a %s = %q, want %q", k, got, want)
		}
	}
	for k, want := range map[string]string{
		"Original-Recipient": "",
		"Final-Recipient":    "rfc822; b@example.test",
		"Status":             "4.4.7",
		"Remote-Mta":         "",
		"Diagnostic-Code":    "X-Backupmx; held for 15 days; last error: connection refused",
		"Will-Retry-Until":   "",
	} {
		if got := b.Get(k); got != want {
			t.Errorf("recipient b %s = %q, want %q", k, got, want)
		}
	}

	if p.thirdType != "text/rfc822-headers" {
		t.Errorf("part 3 is %q", p.thirdType)
	}
	wantHdrs := "Received: from x by backup.ours.test\r\nFrom: Sender <s@sender.test>\r\nSubject: the original\r\n"
	if p.third != wantHdrs {
		t.Errorf("part 3 = %q, want %q", p.third, wantHdrs)
	}
}

func TestDelayNotice(t *testing.T) {
	n := notice("", nil)
	until := arrival.Add(15 * 24 * time.Hour)
	n.Date = arrival.Add(4 * time.Hour)
	n.Recipients = []Recipient{{Addr: "a@example.test", Action: ActionDelayed, Diagnostic: "421 4.3.2 busy",
		RemoteMTA: "mx1.example.test", LastAttempt: n.Date, WillRetryUntil: until}}
	p := parse(t, write(t, n))
	if got := p.header.Get("Subject"); got != "Delayed Mail (still being retried)" {
		t.Errorf("Subject = %q", got)
	}
	r := p.perRcpt[0]
	if r.Get("Action") != "delayed" || r.Get("Status") != "4.0.0" || r.Get("Will-Retry-Until") != until.Format(time.RFC1123Z) {
		t.Errorf("recipient = %v", r)
	}
	if p.thirdType != "" {
		t.Errorf("third part %q without an original", p.thirdType)
	}
	if !strings.Contains(p.human, "will be retried") {
		t.Errorf("human part:\n%s", p.human)
	}
}

func TestRetFullReturnsTheWholeMessage(t *testing.T) {
	p := parse(t, write(t, notice("FULL", strings.NewReader(original))))
	if p.thirdType != "message/rfc822" {
		t.Fatalf("part 3 is %q", p.thirdType)
	}
	if want := strings.ReplaceAll(original, "\n", "\r\n"); p.third != want {
		t.Errorf("part 3 = %q, want %q", p.third, want)
	}
	m, err := mail.ReadMessage(strings.NewReader(p.third))
	if err != nil || m.Header.Get("Subject") != "the original" {
		t.Errorf("returned message: %v, %v", m, err)
	}
}

// errAfter fails if anything reads past the header section.
type errAfter struct{}

func (errAfter) Read([]byte) (int, error) { return 0, errors.New("read past the headers") }

func TestHeadersOnlyReadsOnlyTheHeaders(t *testing.T) {
	orig := io.MultiReader(strings.NewReader("Subject: x\r\nX-Long: "+strings.Repeat("y", 100<<10)+"\r\n\r\n"), errAfter{})
	p := parse(t, write(t, notice("HDRS", orig)))
	if !strings.HasPrefix(p.third, "Subject: x\r\nX-Long: yyy") || !strings.HasSuffix(p.third, "y\r\n") {
		t.Errorf("part 3 = %.40q…", p.third)
	}
}

// bigReader yields n bytes of short lines without holding them.
type bigReader struct{ n int }

func (r *bigReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	k := min(len(p), r.n)
	for i := range k {
		p[i] = "0123456789abcde\n"[(r.n-i)%16]
	}
	r.n -= k
	return k, nil
}

func TestRetFullStreams(t *testing.T) {
	const size = 8 << 20
	orig := io.MultiReader(strings.NewReader("Subject: big\n\n"), &bigReader{n: size})
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(Write(pw, notice("FULL", orig))) }()
	// Count the bytes as they go by: Write must not need the whole message first.
	n, err := io.Copy(io.Discard, pr)
	if err != nil {
		t.Fatal(err)
	}
	if n < size {
		t.Errorf("notice is %d bytes, smaller than the original", n)
	}
}

func TestCRLFSplitAcrossReads(t *testing.T) {
	var b bytes.Buffer
	line := strings.Repeat("x", 32<<10-1) + "\r\nnext\r\n"
	if err := copyLines(&b, strings.NewReader(line), false); err != nil {
		t.Fatal(err)
	}
	if b.String() != line {
		t.Errorf("CRLF split by the buffer became %q", b.String()[32<<10-4:])
	}
}

func TestNoNoticeToTheNullSender(t *testing.T) {
	for _, s := range []string{"", "<>", " "} {
		if !NullSender(s) {
			t.Errorf("NullSender(%q) = false", s)
		}
		n := notice("", nil)
		n.Sender = s
		if err := Write(io.Discard, n); err == nil {
			t.Errorf("Write to sender %q succeeded", s)
		}
	}
	if NullSender("s@sender.test") {
		t.Error("NullSender(s@sender.test) = true")
	}
}

func TestShouldNotify(t *testing.T) {
	tests := []struct {
		notify, action string
		want           bool
	}{
		{"", ActionFailed, true},
		{"", ActionDelayed, true},
		{"", "delivered", false},
		{"NEVER", ActionFailed, false},
		{"NEVER", ActionDelayed, false},
		{"FAILURE", ActionFailed, true},
		{"FAILURE", ActionDelayed, false},
		{"DELAY", ActionFailed, false},
		{"DELAY", ActionDelayed, true},
		{"success,delay", ActionFailed, false},
		{"SUCCESS, FAILURE", ActionFailed, true},
		{"SUCCESS", "relayed", true},
		{"FAILURE", "bogus", false},
	}
	for _, tt := range tests {
		if got := ShouldNotify(store.Recipient{Addr: "a@example.test", Notify: tt.notify}, tt.action); got != tt.want {
			t.Errorf("ShouldNotify(NOTIFY=%q, %s) = %v, want %v", tt.notify, tt.action, got, tt.want)
		}
	}
}
