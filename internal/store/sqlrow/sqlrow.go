// Package sqlrow is what the SQL engines share about reading the queue: a
// delivery joined with its message, scanned as stored (recipients and envelope
// as JSON, times as unix nanoseconds), and its decoding into store.Delivery.
// Scanning is separate from decoding so that an engine can scan inside a
// transaction or its writer and decode after.
package sqlrow

import (
	"encoding/json"
	"fmt"
	"math"
	"time"

	"backupmx/internal/store"
)

// Delivery is one row of
//
//	SELECT d.id, d.domain, d.recipients, d.attempts, d.next_attempt,
//	       d.last_error, d.held, m.envelope, m.size
type Delivery struct {
	ID, Domain, Rcpts, LastErr, Env string
	Attempts                        int
	Next, Size                      int64
	Held                            bool
}

// Rows is the part of *sql.Rows and pgx.Rows that ScanAll uses.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// ScanAll reads every row (the caller closes rows).
func ScanAll(rows Rows) ([]Delivery, error) {
	var out []Delivery
	for rows.Next() {
		var r Delivery
		if err := rows.Scan(&r.ID, &r.Domain, &r.Rcpts, &r.Attempts, &r.Next, &r.LastErr, &r.Held, &r.Env, &r.Size); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Decode turns scanned rows into deliveries.
func Decode(rows []Delivery) ([]store.Delivery, error) {
	out := make([]store.Delivery, 0, len(rows))
	for _, r := range rows {
		d := store.Delivery{
			ID:          r.ID,
			Domain:      r.Domain,
			Size:        r.Size,
			Attempts:    r.Attempts,
			NextAttempt: FromNanos(r.Next),
			LastError:   r.LastErr,
			Held:        r.Held,
		}
		if err := json.Unmarshal([]byte(r.Rcpts), &d.Recipients); err != nil {
			return nil, fmt.Errorf("delivery %s/%s: %w", r.ID, r.Domain, err)
		}
		if err := json.Unmarshal([]byte(r.Env), &d.Envelope); err != nil {
			return nil, fmt.Errorf("message %s: %w", r.ID, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// Nanos is t in unix nanoseconds, clamped to what int64 can hold (years
// 1678–2261), so the zero time sorts first.
func Nanos(t time.Time) int64 {
	switch y := t.Year(); {
	case y < 1678:
		return math.MinInt64
	case y > 2261:
		return math.MaxInt64
	}
	return t.UnixNano()
}

// FromNanos is the inverse of Nanos, in UTC.
func FromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }
