package embedded

// This file is for benchmarks and load generators only (bench/scale): the
// server never calls Fill.

import (
	"context"
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
	type place struct {
		sg  *segment
		off int64
	}
	rows := make([]*newRows, 0, len(items))
	var placed []place // the segment appends, to settle after the commit
	settle := func(committed bool) {
		for _, p := range placed {
			s.segs.settle(p.sg, p.off, int64(len(body)), committed)
		}
	}
	small := int64(len(body)) <= s.smallMax
	for _, it := range items {
		e := it.Env
		if err := checkID(e.ID); err != nil {
			settle(false)
			return err
		}
		r, err := newMessage(e)
		if err != nil {
			settle(false)
			return err
		}
		next := sqlrow.Nanos(e.Received)
		if !it.Next.IsZero() {
			next = sqlrow.Nanos(it.Next)
		}
		for i := range r.dels {
			r.dels[i].next, r.dels[i].attempts, r.dels[i].lastErr = next, it.Attempts, it.LastErr
		}
		r.size = int64(len(body))
		if small {
			sg, off, err := s.segs.append(body)
			if err != nil {
				settle(false)
				return err
			}
			placed = append(placed, place{sg, off})
			r.inSeg, r.seg, r.off = true, int64(sg.n), off
		} else if err := os.WriteFile(s.bodyPath(e.ID), body, 0o600); err != nil {
			settle(false)
			return err
		}
		rows = append(rows, r)
	}
	syscall.Sync() // sync(2): every body written above is durable
	err := s.w.do(ctx, nil, func(tx *wtx) error { return insertRows(tx, rows) })
	settle(err == nil)
	return err
}
