package queue

import (
	"context"
	"io"
	"strings"

	"backupmx/internal/config"
	"backupmx/internal/dsn"
	"backupmx/internal/store"
)

// bounce is one recipient that will not be delivered, or (action relayed)
// one handed to a primary without DSN support.
type bounce struct {
	addr, status, diag, remote string
	expired                    bool
	action                     string // "" = dsn.ActionFailed
}

// notify enqueues one DSN (RFC 3464) to the sender of d about bounces, unless
// the sender is null, the delivery is itself a notice, or the recipients'
// NOTIFY (RFC 3461) asks for none. It returns nil only once the DSN is
// durable (or none is due). All bounces share one action: failed, or
// relayed (a success notice, RFC 3461 §6.2.3.1, headers only per §4.3).
func (s *Scheduler) notify(ctx context.Context, d *store.Delivery, bounces []bounce) error {
	log := s.Log.With("id", d.ID, "domain", d.Domain)
	env := d.Envelope
	action, what := dsn.ActionFailed, "bounced"
	if len(bounces) > 0 && bounces[0].action != "" {
		action, what = bounces[0].action, "relayed"
	}
	if env.Sender == "" || env.Notice {
		if action == dsn.ActionFailed {
			log.Info("bounced without DSN (null sender)", "recipients", len(bounces))
		}
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
		if !dsn.ShouldNotify(r, action) {
			continue
		}
		reason := b.diag
		if b.expired {
			reason = "held for " + s.retention(d.Domain).String() + " without reaching the primary; last error: " + b.diag
		}
		n.Recipients = append(n.Recipients, dsn.Recipient{
			Addr:        r.Addr,
			ORcpt:       r.ORcpt,
			Action:      action,
			Status:      b.status,
			Diagnostic:  reason,
			RemoteMTA:   b.remote,
			LastAttempt: now,
		})
	}
	if len(n.Recipients) == 0 {
		if action == dsn.ActionFailed {
			log.Info("bounced without DSN (NOTIFY)", "recipients", len(bounces))
		}
		return nil
	}
	if action == dsn.ActionRelayed {
		n.Ret = "HDRS" // RFC 3461 §4.3: no content in a success notice
	}
	at := strings.LastIndexByte(env.Sender, '@')
	domain, err := config.NormalizeDomain(env.Sender[at+1:])
	if at < 0 || err != nil || domain == "" {
		log.Warn(what+" without DSN (sender domain unusable)", "sender", env.Sender)
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
	if n.Ret == "FULL" && env.Body == "8BITMIME" {
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
	log.Info(what+" notice queued", "dsn_id", notice.ID, "action", action, "to", env.Sender, "recipients", len(n.Recipients))
	return nil
}
