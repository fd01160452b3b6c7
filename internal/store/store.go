// Package store defines the durable mail queue that every engine implements.
//
// Invariant: a message handed to Enqueue is durable (fsynced or committed) before
// Enqueue returns nil; until then the caller must not acknowledge it. A message
// is split into one Delivery per destination domain. Work is handed out in
// bounded batches under a per-domain Lease carrying a fencing token: every write
// that reports an outcome checks the token, so a holder whose lease expired can't
// overwrite the work of a newer owner. Nothing in this interface loads the whole
// queue: every listing takes a limit.
package store

import (
	"context"
	"errors"
	"io"
	"time"
)

// Errors shared by all engines.
var (
	// ErrNotFound: no message or delivery with that id.
	ErrNotFound = errors.New("store: not found")
	// ErrLeaseLost: the lease expired or was taken over; the write was refused.
	ErrLeaseLost = errors.New("store: lease lost")
)

// Recipient is one envelope recipient with its RFC 3461 parameters.
type Recipient struct {
	Addr   string `json:"addr"`             // the address as given in RCPT TO, normalised
	Notify string `json:"notify,omitempty"` // RFC 3461 NOTIFY, e.g. "FAILURE,DELAY" or "NEVER"
	ORcpt  string `json:"orcpt,omitempty"`  // RFC 3461 ORCPT, e.g. "rfc822;u@example.test"
}

// Client describes the SMTP client that handed us the message, kept so that the
// primary can see it (XFORWARD) and so that DSNs can name it.
type Client struct {
	Addr  string `json:"addr,omitempty"`  // IP address
	Name  string `json:"name,omitempty"`  // reverse DNS name, if verified
	HELO  string `json:"helo,omitempty"`  // HELO/EHLO argument
	Proto string `json:"proto,omitempty"` // SMTP or ESMTP (RFC 3848 value)
}

// Envelope is what the SMTP dialogue said about a message.
type Envelope struct {
	ID       string    `json:"id"`       // queue id, assigned by the caller (it appears in Received)
	Sender   string    `json:"sender"`   // reverse path; "" is the null sender <>
	Received time.Time `json:"received"` // when we accepted it
	Client   Client    `json:"client"`
	Body     string    `json:"body,omitempty"`   // "", "7BIT", "8BITMIME" (RFC 6152)
	UTF8     bool      `json:"utf8,omitempty"`   // SMTPUTF8 (RFC 6531)
	Ret      string    `json:"ret,omitempty"`    // RFC 3461 RET: "FULL" or "HDRS"
	EnvID    string    `json:"envid,omitempty"`  // RFC 3461 ENVID
	Notice   bool      `json:"notice,omitempty"` // a DSN we generated: routed to the sender's side
	// Recipients grouped by destination domain (lower-case A-label). Each key
	// becomes one Delivery.
	Domains map[string][]Recipient `json:"domains,omitempty"`
	// Deferred names domains whose first attempt is already decided at
	// Enqueue: their primary is known down, so the delivery starts as one
	// failed attempt (Attempts 1, LastError, NextAttempt) instead of due now.
	// Only Enqueue reads it; it is not stored with the envelope.
	Deferred map[string]Deferral `json:"-"`
}

// Deferral is a delivery's recorded first attempt, decided at Enqueue.
type Deferral struct {
	Next  time.Time // when the delivery is due
	Error string    // its last_error
}

// FirstSchedule is what Enqueue stores for the new delivery to domain: due
// at arrival with no attempt yet, or as Deferred says.
func (e *Envelope) FirstSchedule(domain string) (next time.Time, attempts int, lastError string) {
	if d, ok := e.Deferred[domain]; ok {
		return d.Next, 1, d.Error
	}
	return e.Received, 0, ""
}

// Delivery is the part of a message bound for one domain, with its schedule.
type Delivery struct {
	ID          string      `json:"id"` // the message's queue id
	Domain      string      `json:"domain"`
	Recipients  []Recipient `json:"recipients"`
	Size        int64       `json:"size"`
	Attempts    int         `json:"attempts"`
	NextAttempt time.Time   `json:"next_attempt"`
	LastError   string      `json:"last_error"`
	Held        bool        `json:"held"`
	Envelope    Envelope    `json:"envelope"` // Domains is left nil here
}

// State is "held" or "queued", as shown to operators.
func (d *Delivery) State() string {
	if d.Held {
		return "held"
	}
	return "queued"
}

// BodiesReader is implemented by stores that can read several message bodies
// in one go (the scheduler reads ahead of its sessions with it). Bodies
// returns those of ids it holds as small in-memory values; an id missing from
// the map is read with Store.Body.
type BodiesReader interface {
	Bodies(ctx context.Context, ids []string) (map[string][]byte, error)
}

// Lease grants its Owner the exclusive right to work on Domain until Expires.
type Lease struct {
	Domain  string
	Owner   string
	Token   int64 // fencing token: strictly increasing per domain
	Expires time.Time
}

// Result is the outcome of one attempt at one delivery.
type Result struct {
	ID        string
	Delivered []string // recipients the primary accepted: removed
	Failed    []string // recipients failed for good (DSN already enqueued): removed
	// Remaining recipients (neither delivered nor failed) stay, due at Next.
	Next      time.Time
	LastError string
	Attempted bool // counts as an attempt (false: skipped, e.g. domain known down)
}

// Filter selects deliveries for List, Flush, Hold and Release.
type Filter struct {
	ID     string // one message
	Domain string // one domain
}

// Page is one page of List.
type Page struct {
	After string // cursor from the previous page ("" for the first)
	Limit int    // at most this many (engines cap it)
}

// Store is the durable queue.
type Store interface {
	// Enqueue reads body to EOF and stores it with env. It returns the body's
	// size once the message and its deliveries (due at env.Received) are
	// durable. If body returns an error, nothing is kept and that error is returned.
	Enqueue(ctx context.Context, env *Envelope, body io.Reader) (int64, error)

	// Claim leases one domain that has due (NextAttempt <= now), unheld work
	// and no live lease, and returns up to limit of its due deliveries, oldest
	// NextAttempt first. It returns (nil, nil, nil) when nothing is due.
	Claim(ctx context.Context, owner string, now time.Time, ttl time.Duration, limit int) (*Lease, []Delivery, error)
	// More returns up to limit further due deliveries of the leased domain,
	// excluding those whose ids are in skip (the ones already being worked on).
	More(ctx context.Context, l *Lease, now time.Time, limit int, skip []string) ([]Delivery, error)
	// Renew extends a live lease to now+ttl; ErrLeaseLost if it is no longer ours.
	Renew(ctx context.Context, l *Lease, now time.Time, ttl time.Duration) error
	// ReleaseLease gives the lease up. Releasing a lost lease is not an error.
	ReleaseLease(ctx context.Context, l *Lease) error
	// Complete records results under the lease in one durable write: delivered
	// and failed recipients are removed, a delivery with none left is removed,
	// and a message with no deliveries left is removed with its body. Others
	// get Next, LastError, and Attempts+1 if Attempted. ErrLeaseLost if the
	// lease is no longer ours (then nothing is written).
	Complete(ctx context.Context, l *Lease, results []Result) error

	// NextDue is the earliest NextAttempt of any unheld delivery (ok=false if none).
	NextDue(ctx context.Context) (t time.Time, ok bool, err error)
	// Waiting lists the domains that have unheld deliveries not yet due at now.
	Waiting(ctx context.Context, now time.Time) ([]string, error)

	// Body opens the stored message (as received, with our Received header).
	Body(ctx context.Context, id string) (io.ReadCloser, error)
	// List returns deliveries matching f in (id, domain) order, after the cursor.
	List(ctx context.Context, f Filter, p Page) ([]Delivery, error)
	// Flush makes every matching unheld delivery that is not yet due due at
	// now; returns how many (those already due are neither written nor
	// counted: a flush during a drain costs nothing for them).
	Flush(ctx context.Context, f Filter, now time.Time) (int, error)
	// Hold and Unhold set or clear Held on matching deliveries; Unhold also
	// makes them due at now. They return how many changed.
	Hold(ctx context.Context, f Filter) (int, error)
	Unhold(ctx context.Context, f Filter, now time.Time) (int, error)
	// Delete removes a message and all its deliveries without any DSN.
	Delete(ctx context.Context, id string) error

	Close() error
}
