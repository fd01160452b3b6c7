package queue

import (
	"context"
	"io"
	"strings"

	"backupmx/internal/config"
	"backupmx/internal/dsn"
	"backupmx/internal/store"
)

// bounce is one recipient that will not be delivered.
type bounce struct {
	addr, status, diag, remote string
	expired                    bool
}

// notify enqueues one DSN (RFC 3464) to the sender of d about bounces, unless
// the sender is null, the delivery is itself a notice, or the recipients'
// NOTIFY (RFC 3461) asks for none. It returns nil only once the DSN is
// durable (or none is due).
func (s *Scheduler) notify(ctx context.Context, d *store.Delivery, bounces []bounce) error {
	log := s.Log.With("id", d.ID, "domain", d.Domain)
	env := d.Envelope
	if env.Sender == "" || env.Notice {
		log.Info("bounced without DSN (null sender)", "recipients", len(bounces))
		return nil
	}
	byAddr := make(map[string]store.Recipient, len(d.Recipients))
	for _, r := range d.Recipients {
		byAddr[r.Addr] = r
	}
	now := s.Now()
	n := &dsn.Notice{
		ReportingMTA: s.Config.Hostname,
		Sender:       env.Sender,
		EnvID:        env.EnvID,
		Ret:          env.Ret,
		Arrival:      env.Received,
		Date:         now,
	}
	for _, b := range bounces {
		r := byAddr[b.addr]
		if r.Addr == "" {
			r.Addr = b.addr
		}
		if !dsn.ShouldNotify(r, dsn.ActionFailed) {
			continue
		}
		reason := b.diag
		if b.expired {
			reason = "held for " + s.retention(d.Domain).String() + " without reaching the primary; last error: " + b.diag
		}
		n.Recipients = append(n.Recipients, dsn.Recipient{
			Addr:        r.Addr,
			ORcpt:       r.ORcpt,
			Action:      dsn.ActionFailed,
			Status:      b.status,
			Diagnostic:  reason,
			RemoteMTA:   b.remote,
			LastAttempt: now,
		})
	}
	if len(n.Recipients) == 0 {
		log.Info("bounced without DSN (NOTIFY)", "recipients", len(bounces))
		return nil
	}
	at := strings.LastIndexByte(env.Sender, '@')
	domain, err := config.NormalizeDomain(env.Sender[at+1:])
	if at < 0 || err != nil || domain == "" {
		log.Warn("bounced without DSN (sender domain unusable)", "sender", env.Sender)
		return nil
	}
	notice := &store.Envelope{
		ID:       store.NewID(now),
		Sender:   "",
		Received: now,
		Notice:   true,
		UTF8:     env.UTF8,
		Client:   store.Client{Addr: "127.0.0.1", Name: "localhost", HELO: s.Config.Hostname, Proto: "ESMTP"},
		Domains:  map[string][]store.Recipient{domain: {{Addr: env.Sender, Notify: "NEVER"}}},
	}
	if env.Ret == "FULL" && env.Body == "8BITMIME" {
		notice.Body = "8BITMIME" // the original travels whole inside the notice
	}
	pr, pw := io.Pipe()
	go func() {
		orig, err := s.Store.Body(ctx, d.ID)
		if err != nil {
			pw.CloseWithError(err)
			return
		}
		defer orig.Close()
		n.Original = orig
		pw.CloseWithError(dsn.Write(pw, n))
	}()
	_, err = s.Store.Enqueue(ctx, notice, pr)
	pr.CloseWithError(io.ErrClosedPipe)
	if err != nil {
		return err
	}
	log.Info("bounced", "dsn_id", notice.ID, "to", env.Sender, "recipients", len(n.Recipients))
	return nil
}
