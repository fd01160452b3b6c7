// Package relay speaks SMTP to the primaries (and to the hosts that take our
// notices): it finds the hosts for a domain, opens one session that carries many
// messages, and reports per-recipient outcomes. It never decides retry policy;
// the queue does.
package relay

import (
	"context"
	"fmt"
	"io"

	"backupmx/internal/store"
)

// Reply is one SMTP reply.
type Reply struct {
	Code     int    // e.g. 250, 451, 550
	Enhanced string // e.g. "5.1.1" (may be empty)
	Text     string
}

func (r Reply) String() string {
	if r.Enhanced != "" {
		return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text)
	}
	return fmt.Sprintf("%d %s", r.Code, r.Text)
}

// Permanent reports a 5xx reply.
func (r Reply) Permanent() bool { return r.Code >= 500 && r.Code < 600 }

// RcptStatus is the fate of one recipient that was not delivered.
type RcptStatus struct {
	Addr  string
	Reply Reply
}

// Result is what one Send achieved. Every recipient of the delivery is in
// exactly one of the three lists.
type Result struct {
	Accepted []string     // the primary took responsibility (250 after DATA)
	Rejected []RcptStatus // permanent (5xx) for these recipients
	Deferred []RcptStatus // temporary (4xx) for these recipients
	// NoDSN: the host does not support DSN (RFC 3461), so the recipients'
	// NOTIFY and ORCPT stopped here: a SUCCESS notice (action "relayed",
	// §6.2.3.1) for the accepted ones is ours to send.
	NoDSN bool
}

// Session is one SMTP connection to one host, reused for many messages.
type Session interface {
	// Send transmits one delivery. A non-nil error means the session is no
	// longer usable (I/O error, timeout, 421); the caller then treats every
	// recipient not reported as accepted as deferred, and closes the session.
	Send(ctx context.Context, d *store.Delivery, body io.Reader) (Result, error)
	// Host is the host:port this session is connected to.
	Host() string
	// TLS describes the channel: "" for plaintext, else e.g. "TLS1.3 TLS_AES_128_GCM_SHA256".
	TLS() string
	Close() error
}

// Dialer opens sessions to a destination domain's hosts, in preference order,
// returning the first that greets and accepts EHLO/HELO. The error of a failed
// dial describes the last host tried (used as last_error).
type Dialer interface {
	Dial(ctx context.Context, domain string) (Session, error)
	// Probe checks whether the domain's primary answers (greeting and EHLO),
	// then says QUIT. nil means it is up.
	Probe(ctx context.Context, domain string) error
}
