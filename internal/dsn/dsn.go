// Package dsn writes delivery status notifications (RFC 3464) to the senders
// of mail we could not deliver, or not yet.
//
// Invariant: a notice goes only to a real sender. Write refuses the null
// sender (RFC 5321 §4.5.5: a notice is sent with a null reverse path, so a
// notice about a notice could loop), and callers check NullSender and
// ShouldNotify (RFC 3461 NOTIFY) before building one. The original message is
// streamed, never held in memory: for RET=HDRS (the default) only its header
// section is read.
package dsn

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/textproto"
	"strings"
	"time"

	"backupmx/internal/store"
)

// Actions (RFC 3464 §2.3.3) that backupmx reports.
const (
	ActionFailed  = "failed"
	ActionDelayed = "delayed"
	// ActionRelayed: handed to a server that does not support DSN, so no
	// further notice will come (RFC 3461 §6.2.3.1); sent for NOTIFY=SUCCESS.
	ActionRelayed = "relayed"
)

// Notice is one DSN about one message.
type Notice struct {
	ReportingMTA string    // our host name: From, Reporting-MTA, Message-ID
	Sender       string    // the original envelope sender: the notice's To
	EnvID        string    // RFC 3461 ENVID of the original, if any
	Ret          string    // RFC 3461 RET: "FULL" returns the whole message, else headers
	Arrival      time.Time // when we received the original
	Date         time.Time // the notice's date; zero = now
	MessageID    string    // without <>; "" = a fresh random one
	Reason       string    // optional sentence for the human-readable part
	Recipients   []Recipient
	// Original is the message as we received it; nil leaves out the third part.
	Original io.Reader
}

// Recipient is one recipient's fate (RFC 3464 §2.3).
type Recipient struct {
	Addr           string    // Final-Recipient (rfc822)
	ORcpt          string    // RFC 3461 ORCPT as "type;address", if given
	Action         string    // ActionFailed, ActionDelayed or ActionRelayed
	Status         string    // RFC 3463 code, e.g. "5.1.1"; "" = 5.0.0 / 4.0.0
	Diagnostic     string    // the remote reply ("550 5.1.1 …") or our own words
	RemoteMTA      string    // the host that answered (port, if any, is dropped)
	LastAttempt    time.Time // zero = omitted
	WillRetryUntil time.Time // for delayed: when we give up; zero = omitted
}

// NullSender reports whether sender is the null reverse path "<>", to which
// no notice may ever be sent.
func NullSender(sender string) bool {
	s := strings.TrimSpace(sender)
	return s == "" || s == "<>"
}

// ShouldNotify applies the recipient's RFC 3461 §4.1 NOTIFY to a notice with
// the given action. NEVER: no notice. A list: only the listed kinds (FAILURE
// for failed, DELAY for delayed, SUCCESS for delivered/relayed). No NOTIFY:
// failed and delayed, which §4.1 lets the MTA choose ("FAILURE" or
// "FAILURE,DELAY"); whether delay notices are sent at all is the caller's
// policy.
func ShouldNotify(r store.Recipient, action string) bool {
	want := map[string]string{
		ActionFailed: "FAILURE", ActionDelayed: "DELAY",
		"delivered": "SUCCESS", "relayed": "SUCCESS", "expanded": "SUCCESS",
	}[strings.ToLower(action)]
	if want == "" {
		return false
	}
	n := strings.ToUpper(strings.ReplaceAll(r.Notify, " ", ""))
	if n == "" {
		return want != "SUCCESS"
	}
	for _, v := range strings.Split(n, ",") {
		if v == want {
			return true
		}
	}
	return false // includes NEVER
}

// Write writes the whole notice: header section, then a multipart/report
// (RFC 6522) with the human-readable explanation, the message/delivery-status
// and the original (text/rfc822-headers, or message/rfc822 for RET=FULL).
// Line ends are CRLF throughout.
func Write(w io.Writer, n *Notice) error {
	if NullSender(n.Sender) {
		return errors.New("dsn: no notice to the null sender")
	}
	if len(n.Recipients) == 0 {
		return errors.New("dsn: notice without recipients")
	}
	date := n.Date
	if date.IsZero() {
		date = time.Now()
	}
	msgID := n.MessageID
	if msgID == "" {
		var b [12]byte
		rand.Read(b[:])
		msgID = hex.EncodeToString(b[:]) + "@" + n.ReportingMTA
	}
	failed, relayed := false, true
	for _, r := range n.Recipients {
		failed = failed || (r.Action != ActionDelayed && r.Action != ActionRelayed)
		relayed = relayed && r.Action == ActionRelayed
	}
	subject := "Delayed Mail (still being retried)"
	switch {
	case failed:
		subject = "Undelivered Mail Returned to Sender"
	case relayed:
		subject = "Successful Mail Delivery Report"
	}

	bw := bufio.NewWriter(w)
	mw := multipart.NewWriter(bw)
	hdr := func(k, v string) { fmt.Fprintf(bw, "%s: %s\r\n", k, v) }
	hdr("From", "Mail Delivery System <MAILER-DAEMON@"+n.ReportingMTA+">")
	hdr("To", "<"+n.Sender+">")
	hdr("Subject", subject)
	hdr("Date", date.Format(time.RFC1123Z))
	hdr("Message-ID", "<"+msgID+">")
	hdr("MIME-Version", "1.0")
	hdr("Auto-Submitted", "auto-replied") // RFC 3834 §5
	hdr("Content-Type", "multipart/report; report-type=delivery-status;\r\n\tboundary=\""+mw.Boundary()+"\"")
	bw.WriteString("\r\nThis is a MIME-encapsulated message.\r\n\r\n")

	// Part 1: for people.
	p, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":              {"text/plain; charset=utf-8"},
		"Content-Transfer-Encoding": {"quoted-printable"},
		"Content-Description":       {"Notification"},
	})
	if err != nil {
		return err
	}
	qp := quotedprintable.NewWriter(p)
	io.WriteString(qp, explanation(n, failed, relayed, date))
	if err := qp.Close(); err != nil {
		return err
	}

	// Part 2: for programs.
	p, err = mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":        {"message/delivery-status"},
		"Content-Description": {"Delivery report"},
	})
	if err != nil {
		return err
	}
	if _, err := io.WriteString(p, status(n)); err != nil {
		return err
	}

	// Part 3: the original, streamed.
	if n.Original != nil {
		full := strings.EqualFold(n.Ret, "FULL")
		ct, desc := "text/rfc822-headers", "Undelivered message headers"
		if full {
			ct, desc = "message/rfc822", "Undelivered message"
		}
		if relayed {
			desc = strings.Replace(desc, "Undelivered message", "Message", 1)
		}
		p, err = mw.CreatePart(textproto.MIMEHeader{"Content-Type": {ct}, "Content-Description": {desc}})
		if err != nil {
			return err
		}
		if err := copyLines(p, n.Original, !full); err != nil {
			return fmt.Errorf("dsn: reading the original: %w", err)
		}
	}
	if err := mw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// explanation is the human-readable part.
func explanation(n *Notice, failed, relayed bool, date time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "This is the mail system at %s.\r\n\r\n", n.ReportingMTA)
	switch {
	case failed:
		b.WriteString("Your message could not be delivered to one or more recipients.\r\n")
	case relayed:
		b.WriteString("Your message was handed to the recipients' mail server, as you asked to be told.\r\n" +
			"That server does not send delivery notifications, so this is the last one you will get.\r\n")
	default:
		b.WriteString("Your message has not been delivered yet to one or more recipients.\r\n" +
			"It is still queued and will be retried; you need not send it again.\r\n")
	}
	if !n.Arrival.IsZero() {
		fmt.Fprintf(&b, "We received it on %s and have held it for %s.\r\n",
			n.Arrival.Format(time.RFC1123Z), humanDuration(date.Sub(n.Arrival)))
	}
	if n.Reason != "" {
		b.WriteString("\r\n" + n.Reason + "\r\n")
	}
	b.WriteString("\r\n")
	for _, r := range n.Recipients {
		fmt.Fprintf(&b, "<%s>: %s", r.Addr, r.Action)
		if r.Diagnostic != "" {
			fmt.Fprintf(&b, ": %s", oneLine(r.Diagnostic))
		}
		if !r.WillRetryUntil.IsZero() {
			fmt.Fprintf(&b, " (will retry until %s)", r.WillRetryUntil.Format(time.RFC1123Z))
		}
		b.WriteString("\r\n")
	}
	return b.String()
}

// humanDuration says "15 days", "5 hours", "12 minutes".
func humanDuration(d time.Duration) string {
	unit, n := "minute", int(d/time.Minute)
	switch {
	case d >= 48*time.Hour:
		unit, n = "day", int(d/(24*time.Hour))
	case d >= 2*time.Hour:
		unit, n = "hour", int(d/time.Hour)
	}
	if n != 1 {
		unit += "s"
	}
	return fmt.Sprintf("%d %s", n, unit)
}

// status is the message/delivery-status body (RFC 3464 §2.1): per-message
// fields, then one block per recipient, blocks separated by blank lines.
func status(n *Notice) string {
	var b strings.Builder
	field := func(k, v string) { b.WriteString(k + ": " + ascii(oneLine(v)) + "\r\n") }
	field("Reporting-MTA", "dns; "+n.ReportingMTA)
	if n.EnvID != "" {
		field("Original-Envelope-Id", n.EnvID)
	}
	if !n.Arrival.IsZero() {
		field("Arrival-Date", n.Arrival.Format(time.RFC1123Z))
	}
	for _, r := range n.Recipients {
		b.WriteString("\r\n")
		if typ, addr, ok := strings.Cut(r.ORcpt, ";"); ok {
			field("Original-Recipient", strings.TrimSpace(typ)+"; "+strings.TrimSpace(addr))
		}
		field("Final-Recipient", "rfc822; "+r.Addr)
		field("Action", r.Action)
		st := r.Status
		if st == "" {
			st = "5.0.0"
			switch r.Action {
			case ActionDelayed:
				st = "4.0.0"
			case ActionRelayed:
				st = "2.0.0"
			}
		}
		field("Status", st)
		if r.RemoteMTA != "" {
			host := r.RemoteMTA
			if h, _, err := net.SplitHostPort(host); err == nil {
				host = h
			}
			field("Remote-MTA", "dns; "+host)
		}
		if r.Diagnostic != "" {
			field("Diagnostic-Code", diagnosticType(r.Diagnostic)+"; "+r.Diagnostic)
		}
		if !r.LastAttempt.IsZero() {
			field("Last-Attempt-Date", r.LastAttempt.Format(time.RFC1123Z))
		}
		if r.Action == ActionDelayed && !r.WillRetryUntil.IsZero() {
			field("Will-Retry-Until", r.WillRetryUntil.Format(time.RFC1123Z))
		}
	}
	return b.String()
}

// diagnosticType is "smtp" for an SMTP reply ("550 …"), else our own type
// (RFC 3464 §2.3.6 allows X- types) for words of ours.
func diagnosticType(d string) string {
	if len(d) >= 3 && d[0] >= '2' && d[0] <= '5' && d[1] >= '0' && d[1] <= '9' && d[2] >= '0' && d[2] <= '9' &&
		(len(d) == 3 || d[3] == ' ' || d[3] == '-') {
		return "smtp"
	}
	return "X-Backupmx"
}

// oneLine folds a multi-line reply into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// ascii replaces what message/delivery-status (RFC 3464 §2.1.1, US-ASCII)
// can't carry.
func ascii(s string) string {
	return strings.Map(func(r rune) rune {
		if r > '~' {
			return '?'
		}
		return r
	}, s)
}

// copyLines streams r to w with CRLF line ends; with headersOnly it stops at
// the blank line that ends the header section (not copying it).
func copyLines(w io.Writer, r io.Reader, headersOnly bool) error {
	br := bufio.NewReaderSize(r, 32<<10)
	atStart := true    // at the start of a line
	pendingCR := false // a chunk ended in "\r": a line end, or not, per the next byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(chunk) > 0 {
			if pendingCR && chunk[0] != '\n' {
				if _, werr := io.WriteString(w, "\r"); werr != nil {
					return werr
				}
			}
			pendingCR = false
			full := chunk[len(chunk)-1] == '\n'
			line := chunk
			if full {
				line = line[:len(line)-1]
			}
			if len(line) > 0 && line[len(line)-1] == '\r' {
				line = line[:len(line)-1]
				pendingCR = !full
			}
			if headersOnly && atStart && full && len(line) == 0 {
				return nil
			}
			if _, werr := w.Write(line); werr != nil {
				return werr
			}
			if full {
				if _, werr := io.WriteString(w, "\r\n"); werr != nil {
					return werr
				}
			}
			atStart = full
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err == io.EOF:
			if !atStart {
				_, err := io.WriteString(w, "\r\n")
				return err
			}
			return nil
		case err != nil:
			return err
		}
	}
}
