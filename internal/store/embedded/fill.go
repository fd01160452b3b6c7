package embedded

// This file is for benchmarks and load generators only (bench/scale): the
// server never calls Fill.

import (
	"context"
	"encoding/json"
	"os"
	"syscall"
	"time"

	"backupmx/internal/store"
	"backupmx/internal/store/sqlrow"
)

// FillItem is one message for Fill.
type FillItem struct {
	Env      *store.Envelope
	Next     time.Time // NextAttempt of its deliveries; zero: Env.Received
	Attempts int       // as if it had been tried this many times
	LastErr  string
}

// Fill stores many messages, all with the same body, at a rate Enqueue can't
// reach: every row is inserted in one transaction. Bodies (in segments if
// within the small-body threshold, as Enqueue would store them; otherwise
// files) are written first without a per-body sync, then one sync(2) makes
// them all durable. The invariant holds (a row only once its body
// is durable); what is lost is only the per-message acknowledgement. For
// benchmarks: the server never calls it. Ids must be new.
func (s *Store) Fill(ctx context.Context, items []FillItem, body []byte) error {
	type row struct {
		id, env string
		rcpts   map[string]string
		next    int64
		att     int
		lastErr string
		sg      *segment
		off     int64
	}
	rows := make([]row, 0, len(items))
	settle := func(committed bool) {
		for _, r := range rows {
			if r.sg != nil {
				s.segs.settle(r.sg, r.off, int64(len(body)), committed)
			}
		}
	}
	small := int64(len(body)) <= s.smallMax
	if body == nil {
		body = []byte{} // an empty blob, not NULL
	}
	for _, it := range items {
		e := it.Env
		if err := checkID(e.ID); err != nil {
			return err
		}
		c := *e
		c.Domains = nil
		ej, err := json.Marshal(&c)
		if err != nil {
			return err
		}
		r := row{id: e.ID, env: string(ej), rcpts: map[string]string{}, next: sqlrow.Nanos(e.Received), att: it.Attempts, lastErr: it.LastErr}
		if !it.Next.IsZero() {
			r.next = sqlrow.Nanos(it.Next)
		}
		for dom, rs := range e.Domains {
			b, err := json.Marshal(rs)
			if err != nil {
				return err
			}
			r.rcpts[dom] = string(b)
		}
		if small {
			sg, off, err := s.segs.append(body)
			if err != nil {
				settle(false)
				return err
			}
			r.sg, r.off = sg, off
		} else if err := os.WriteFile(s.bodyPath(e.ID), body, 0o600); err != nil {
			settle(false)
			return err
		}
		rows = append(rows, r)
	}
	syscall.Sync() // sync(2): every body written above is durable
	err := s.w.do(ctx, nil, func(tx *wtx) error {
		for _, r := range rows {
			if _, err := tx.insMessage.Exec(r.id, r.env, len(body)); err != nil {
				return err
			}
			if r.sg != nil {
				if _, err := tx.insSegBody.Exec(r.id, int64(r.sg.n), r.off, len(body)); err != nil {
					return err
				}
			}
			for dom, rc := range r.rcpts {
				if _, err := tx.insDelivery.Exec(r.id, dom, rc, r.next, r.att, r.lastErr); err != nil {
					return err
				}
			}
		}
		return nil
	})
	settle(err == nil)
	return err
}
