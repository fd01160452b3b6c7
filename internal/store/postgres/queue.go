package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"backupmx/internal/store"
	"backupmx/internal/store/sqlrow"
)

const (
	defaultLimit = 100
	maxLimit     = 1000
)

// dbNow is the database clock in unix nanoseconds (now(): the start of the
// transaction, the same for every statement in it).
const dbNow = `(extract(epoch FROM now()) * 1000000000)::bigint`

// leaseClock is the SQL for "the lease clock", given the caller's now as
// parameter $n: the caller's now under CallerClock, else the database's.
func (s *Store) leaseClock(n int) string {
	return fmt.Sprintf("coalesce($%d::bigint, %s)", n, dbNow)
}

// callerNow is the value for leaseClock's parameter: now in nanoseconds
// under CallerClock, else NULL.
func (s *Store) callerNow(now time.Time) *int64 {
	if !s.callerClock {
		return nil
	}
	n := sqlrow.Nanos(now)
	return &n
}

// Enqueue implements store.Store: body chunks, the message row, its
// deliveries and any new domains' lease rows in one transaction. A body of
// one chunk costs one round trip; a larger one streams chunk by chunk.
func (s *Store) Enqueue(ctx context.Context, env *store.Envelope, body io.Reader) (int64, error) {
	if err := checkID(env.ID); err != nil {
		return 0, err
	}
	if len(env.Domains) == 0 {
		return 0, fmt.Errorf("postgres: message %s has no recipients", env.ID)
	}
	envJSON, err := store.EnvelopeJSON(env)
	if err != nil {
		return 0, err
	}
	domains := make([]string, 0, len(env.Domains))
	rcpts := make(map[string]string, len(env.Domains))
	for dom, rs := range env.Domains {
		if dom == "" || len(rs) == 0 {
			return 0, fmt.Errorf("postgres: message %s: empty domain or recipient list", env.ID)
		}
		b, err := store.RecipientsJSON(rs)
		if err != nil {
			return 0, err
		}
		rcpts[dom] = string(b)
		domains = append(domains, dom)
	}
	slices.Sort(domains) // lease rows inserted in one order: no deadlocks between Enqueues

	// The rows besides the body, queued after its chunks.
	rows := func(b *pgx.Batch, size int64, chunks int) {
		b.Queue(`INSERT INTO messages (id, envelope, size, chunks) VALUES ($1, $2, $3, $4)`, env.ID, string(envJSON), size, chunks)
		for _, dom := range domains {
			// Before the delivery exists: ReleaseLease can't remove the
			// domain's lease row until we have committed (see domainLock).
			b.Queue(`SELECT pg_advisory_xact_lock_shared(`+domainLock+`)`, dom)
			next, attempts, lastErr := env.FirstSchedule(dom)
			b.Queue(`INSERT INTO deliveries (id, domain, recipients, next_attempt, attempts, last_error) VALUES ($1, $2, $3, $4, $5, $6)`,
				env.ID, dom, rcpts[dom], sqlrow.Nanos(next), attempts, lastErr)
			// Only when missing: a plain read first never waits on a lease row
			// another transaction is updating.
			b.Queue(`INSERT INTO leases (domain) SELECT $1::text WHERE NOT EXISTS (SELECT 1 FROM leases WHERE domain = $1)
				ON CONFLICT DO NOTHING`, dom)
		}
	}

	first, eof, err := s.readChunk(body, make([]byte, 0, 32<<10))
	if err != nil {
		return 0, err
	}
	size := int64(len(first))
	if eof {
		// A body of one chunk: everything in one batch, which the server
		// runs as one implicit transaction (one Sync), committed before
		// the batch's results are all read.
		b := &pgx.Batch{}
		chunks := 0
		if size > 0 {
			b.Queue(insertChunk, env.ID, 0, first)
			chunks = 1
		}
		rows(b, size, chunks)
		if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
			return 0, err
		}
		return size, nil
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, insertChunk, env.ID, 0, first); err != nil {
			return err
		}
		n, chunks, err := s.writeChunks(ctx, tx, env.ID, body, first, 1)
		if err != nil {
			return err
		}
		size += n
		b := &pgx.Batch{}
		rows(b, size, chunks)
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return 0, err
	}
	return size, nil
}

// Claim implements store.Store. Candidates are the domains whose earliest
// unheld delivery is due and whose lease is free or expired, earliest first
// (one index probe per domain, never a scan of the queue); the first one
// whose leases row no other transaction holds is taken.
func (s *Store) Claim(ctx context.Context, owner string, now time.Time, ttl time.Duration, limit int) (*store.Lease, []store.Delivery, error) {
	if owner == "" {
		return nil, nil, errors.New("postgres: Claim needs an owner")
	}
	var (
		lease *store.Lease
		rows  []sqlrow.Delivery
	)
	err := s.tx(ctx, func(tx pgx.Tx) error {
		lease, rows = nil, nil
		var domain string
		err := tx.QueryRow(ctx, `
			SELECT l.domain FROM leases l
			CROSS JOIN LATERAL (
				SELECT d.next_attempt FROM deliveries d
				WHERE d.domain = l.domain AND NOT d.held
				ORDER BY d.next_attempt LIMIT 1) first
			WHERE first.next_attempt <= $1 AND l.expires <= `+s.leaseClock(2)+`
			ORDER BY first.next_attempt, l.domain
			LIMIT 1
			FOR UPDATE OF l SKIP LOCKED`, sqlrow.Nanos(now), s.callerNow(now)).Scan(&domain)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		var token, expires int64
		err = tx.QueryRow(ctx, `
			UPDATE leases SET owner = $2, token = nextval('lease_tokens'), expires = `+s.leaseClock(3)+` + $4
			WHERE domain = $1 RETURNING token, expires`,
			domain, owner, s.callerNow(now), ttl.Nanoseconds()).Scan(&token, &expires)
		if err != nil {
			return err
		}
		rows, err = queryDeliveries(ctx, tx, `WHERE d.domain = $1 AND NOT d.held AND d.next_attempt <= $2
			ORDER BY d.next_attempt, d.id LIMIT $3`, domain, sqlrow.Nanos(now), clampLimit(limit))
		if err != nil {
			return err
		}
		lease = &store.Lease{Domain: domain, Owner: owner, Token: token, Expires: sqlrow.FromNanos(expires)}
		return nil
	})
	if err != nil || lease == nil {
		return nil, nil, err
	}
	ds, err := decodeDeliveries(rows)
	if err != nil {
		return nil, nil, err
	}
	return lease, ds, nil
}

// More implements store.Store.
func (s *Store) More(ctx context.Context, l *store.Lease, now time.Time, limit int, skip []string) ([]store.Delivery, error) {
	var one int
	err := s.pool.QueryRow(ctx, `SELECT 1 FROM leases WHERE domain = $1 AND owner = $2 AND token = $3 AND expires <> 0`,
		l.Domain, l.Owner, l.Token).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, store.ErrLeaseLost
	}
	if err != nil {
		return nil, err
	}
	if skip == nil {
		skip = []string{}
	}
	rows, err := queryDeliveries(ctx, s.pool, `WHERE d.domain = $1 AND NOT d.held AND d.next_attempt <= $2
		AND NOT (d.id = ANY($3::text[]))
		ORDER BY d.next_attempt, d.id LIMIT $4`, l.Domain, sqlrow.Nanos(now), skip, clampLimit(limit))
	if err != nil {
		return nil, err
	}
	return decodeDeliveries(rows)
}

// Renew implements store.Store. It does not modify *l.
func (s *Store) Renew(ctx context.Context, l *store.Lease, now time.Time, ttl time.Duration) error {
	tag, err := s.pool.Exec(ctx, `UPDATE leases SET expires = `+s.leaseClock(4)+` + $5
		WHERE domain = $1 AND owner = $2 AND token = $3 AND expires > `+s.leaseClock(4),
		l.Domain, l.Owner, l.Token, s.callerNow(now), ttl.Nanoseconds())
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return store.ErrLeaseLost
	}
	return nil
}

// domainLock is the SQL for the advisory lock key of domain $1 (two int4
// keys: their space does not overlap the migration lock's bigint one). Every
// Enqueue holds it shared from before it inserts a delivery until it
// commits; ReleaseLease removes a domain's leases row only while holding it
// exclusively. So when the row goes, every delivery ever enqueued for the
// domain is committed and visible, none is, and any later Enqueue recreates
// the row. A hash collision only makes a removal wait for the next release.
const domainLock = `1650680683, hashtext($1)`

// ReleaseLease implements store.Store. When the domain has nothing left in
// the queue and no Enqueue for it is in flight, its leases row is removed,
// so the table holds only domains with mail (destinations come and go: DSN
// notices to senders' domains); Enqueue recreates it. Otherwise the lease
// is freed and the token stays. Either way the next lease takes a larger
// token from the global sequence, so fencing never depends on the row.
func (s *Store) ReleaseLease(ctx context.Context, l *store.Lease) error {
	return s.tx(ctx, func(tx pgx.Tx) error {
		var locked bool
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(`+domainLock+`)`, l.Domain).Scan(&locked); err != nil {
			return err
		}
		if locked {
			// A new statement, so a new snapshot: it sees every Enqueue
			// that held the lock before we took it.
			tag, err := tx.Exec(ctx, `DELETE FROM leases WHERE domain = $1 AND owner = $2 AND token = $3
				AND NOT EXISTS (SELECT 1 FROM deliveries WHERE domain = $1)`, l.Domain, l.Owner, l.Token)
			if err != nil || tag.RowsAffected() > 0 {
				return err
			}
		}
		_, err := tx.Exec(ctx, `UPDATE leases SET owner = '', expires = 0 WHERE domain = $1 AND owner = $2 AND token = $3`,
			l.Domain, l.Owner, l.Token)
		return err
	})
}

// Complete implements store.Store, in one transaction that holds the lease
// row (so no Claim can take the domain over meanwhile). Rows are locked
// message first, then delivery, the order Delete's cascade takes too.
func (s *Store) Complete(ctx context.Context, l *store.Lease, results []store.Result) error {
	return s.tx(ctx, func(tx pgx.Tx) error {
		var one int
		err := tx.QueryRow(ctx, `SELECT 1 FROM leases WHERE domain = $1 AND owner = $2 AND token = $3 AND expires <> 0 FOR UPDATE`,
			l.Domain, l.Owner, l.Token).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return store.ErrLeaseLost
		}
		if err != nil {
			return err
		}
		for _, r := range results {
			if err := completeOne(ctx, tx, l.Domain, r); err != nil {
				return err
			}
		}
		return nil
	})
}

// completeOne applies r to the delivery (r.ID, domain). A delivery that no
// longer exists (deleted by an operator) is skipped.
func completeOne(ctx context.Context, tx pgx.Tx, domain string, r store.Result) error {
	var one int
	err := tx.QueryRow(ctx, `SELECT 1 FROM messages WHERE id = $1 FOR UPDATE`, r.ID).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	var rj string
	err = tx.QueryRow(ctx, `SELECT recipients FROM deliveries WHERE id = $1 AND domain = $2 FOR UPDATE`, r.ID, domain).Scan(&rj)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	var rcpts []store.Recipient
	if err := json.Unmarshal([]byte(rj), &rcpts); err != nil {
		return fmt.Errorf("postgres: delivery %s/%s: %w", r.ID, domain, err)
	}
	done := make(map[string]bool, len(r.Delivered)+len(r.Failed))
	for _, a := range r.Delivered {
		done[a] = true
	}
	for _, a := range r.Failed {
		done[a] = true
	}
	left := rcpts[:0]
	for _, rc := range rcpts {
		if !done[rc.Addr] {
			left = append(left, rc)
		}
	}
	if len(left) > 0 {
		b, err := json.Marshal(left)
		if err != nil {
			return err
		}
		attempted := 0
		if r.Attempted {
			attempted = 1
		}
		_, err = tx.Exec(ctx, `UPDATE deliveries SET recipients = $3, next_attempt = $4, last_error = $5, attempts = attempts + $6
			WHERE id = $1 AND domain = $2`, r.ID, domain, string(b), sqlrow.Nanos(r.Next), r.LastError, attempted)
		return err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM deliveries WHERE id = $1 AND domain = $2`, r.ID, domain); err != nil {
		return err
	}
	// We hold the message row, so any other Complete of this message runs
	// after our commit and sees our deletion: the last one removes it.
	_, err = tx.Exec(ctx, `DELETE FROM messages WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM deliveries WHERE id = $1)`, r.ID)
	return err
}

// NextDue implements store.Store: one index probe per domain.
func (s *Store) NextDue(ctx context.Context) (time.Time, bool, error) {
	var n *int64
	err := s.pool.QueryRow(ctx, `SELECT min(first.next_attempt) FROM leases l
		CROSS JOIN LATERAL (
			SELECT d.next_attempt FROM deliveries d
			WHERE d.domain = l.domain AND NOT d.held
			ORDER BY d.next_attempt LIMIT 1) first`).Scan(&n)
	if err != nil || n == nil {
		return time.Time{}, false, err
	}
	return sqlrow.FromNanos(*n), true, nil
}

// Waiting implements store.Store: one index probe per known domain.
func (s *Store) Waiting(ctx context.Context, now time.Time) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT l.domain FROM leases l WHERE EXISTS (
		SELECT 1 FROM deliveries d WHERE d.domain = l.domain AND NOT d.held AND d.next_attempt > $1)
		ORDER BY l.domain`, sqlrow.Nanos(now))
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// List implements store.Store. The cursor is "<id> <domain>" of the last
// delivery of the previous page, as in the embedded engine; Page.Limit
// defaults to 100 and is capped at 1000.
func (s *Store) List(ctx context.Context, f store.Filter, p store.Page) ([]store.Delivery, error) {
	where, args := filterSQL(f, 1)
	if p.After != "" {
		id, dom, ok := strings.Cut(p.After, " ")
		if !ok {
			return nil, fmt.Errorf("postgres: bad cursor %q", p.After)
		}
		where += fmt.Sprintf(" AND (d.id, d.domain) > ($%d, $%d)", len(args)+1, len(args)+2)
		args = append(args, id, dom)
	}
	args = append(args, clampLimit(p.Limit))
	rows, err := queryDeliveries(ctx, s.pool, "WHERE "+where+" ORDER BY d.id, d.domain LIMIT $"+strconv.Itoa(len(args)), args...)
	if err != nil {
		return nil, err
	}
	return decodeDeliveries(rows)
}

// Cursor is the List cursor that continues after d.
func Cursor(d store.Delivery) string { return d.ID + " " + d.Domain }

// Flush implements store.Store. Only deliveries not yet due are written:
// those already overdue keep their earlier time, so they stay ahead in
// Claim's order. Other nodes are kicked.
func (s *Store) Flush(ctx context.Context, f store.Filter, now time.Time) (int, error) {
	where, args := filterSQL(f, 2)
	return s.update(ctx, true, `UPDATE deliveries AS d SET next_attempt = $1 WHERE NOT d.held AND d.next_attempt > $1 AND `+where,
		append([]any{sqlrow.Nanos(now)}, args...))
}

// Hold implements store.Store.
func (s *Store) Hold(ctx context.Context, f store.Filter) (int, error) {
	where, args := filterSQL(f, 1)
	return s.update(ctx, false, `UPDATE deliveries AS d SET held = true WHERE NOT d.held AND `+where, args)
}

// Unhold implements store.Store. Other nodes are kicked.
func (s *Store) Unhold(ctx context.Context, f store.Filter, now time.Time) (int, error) {
	where, args := filterSQL(f, 2)
	return s.update(ctx, true, `UPDATE deliveries AS d SET held = false, next_attempt = $1 WHERE d.held AND `+where,
		append([]any{sqlrow.Nanos(now)}, args...))
}

// update runs one UPDATE and, if kick and it changed something, notifies
// KickChannel in the same transaction (delivered at commit).
func (s *Store) update(ctx context.Context, kick bool, q string, args []any) (int, error) {
	var n int64
	err := s.tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, q, args...)
		if err != nil {
			return err
		}
		n = tag.RowsAffected()
		if kick && n > 0 {
			_, err = tx.Exec(ctx, `SELECT pg_notify($1, '')`, KickChannel)
		}
		return err
	})
	return int(n), err
}

// Delete implements store.Store. Deliveries and body chunks go by cascade.
func (s *Store) Delete(ctx context.Context, id string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM messages WHERE id = $1`, id)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	return nil
}

// filterSQL is the WHERE condition for f on deliveries d ("true" for all),
// its parameters numbered from first.
func filterSQL(f store.Filter, first int) (string, []any) {
	conds := []string{"true"}
	var args []any
	if f.ID != "" {
		args = append(args, f.ID)
		conds = append(conds, fmt.Sprintf("d.id = $%d", first+len(args)-1))
	}
	if f.Domain != "" {
		args = append(args, f.Domain)
		conds = append(conds, fmt.Sprintf("d.domain = $%d", first+len(args)-1))
	}
	return strings.Join(conds, " AND "), args
}

func clampLimit(n int) int {
	switch {
	case n <= 0:
		return defaultLimit
	case n > maxLimit:
		return maxLimit
	}
	return n
}

// checkID accepts queue ids that can't break the "<id> <domain>" cursor.
func checkID(id string) error {
	if id == "" || len(id) > 128 {
		return fmt.Errorf("postgres: invalid queue id %q", id)
	}
	for _, c := range []byte(id) {
		if c <= ' ' || c >= 0x7f {
			return fmt.Errorf("postgres: invalid queue id %q", id)
		}
	}
	return nil
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func queryDeliveries(ctx context.Context, q querier, tail string, args ...any) ([]sqlrow.Delivery, error) {
	rows, err := q.Query(ctx, `SELECT d.id, d.domain, d.recipients, d.attempts, d.next_attempt, d.last_error, d.held, m.envelope, m.size
		FROM deliveries d JOIN messages m ON m.id = d.id `+tail, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return sqlrow.ScanAll(rows)
}

func decodeDeliveries(rows []sqlrow.Delivery) ([]store.Delivery, error) {
	ds, err := sqlrow.Decode(rows)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	return ds, nil
}
