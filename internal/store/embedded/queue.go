package embedded

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"backupmx/internal/store"
	"backupmx/internal/store/embedded/safefile"
	"backupmx/internal/store/sqlrow"
)

const (
	defaultLimit = 100
	maxLimit     = 1000
)

// Enqueue implements store.Store. A body of at most the small-body
// threshold is appended to a segment and committed with its rows in one
// group (one segment fdatasync and one WAL fsync per group); a longer one is streamed to a body file, as the buffer of its
// first bytes and then the rest. Either way Enqueue holds at most
// threshold+1 bytes of the body in memory.
func (s *Store) Enqueue(ctx context.Context, env *store.Envelope, body io.Reader) (int64, error) {
	if err := checkID(env.ID); err != nil {
		return 0, err
	}
	rows, err := newMessage(env)
	if err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	// The writer may wait for this message before it commits others.
	a := s.w.arriving()
	defer a.done()

	// head is what was read of the body before deciding where it goes.
	var head []byte
	if s.smallMax > 0 {
		bp := s.bufs.Get().(*[]byte)
		defer s.bufs.Put(bp)
		n, err := io.ReadFull(body, *bp) // len(*bp) == smallMax+1
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return s.enqueueSmall(ctx, rows, (*bp)[:n], a)
		case err != nil:
			return 0, err
		}
		head = *bp
	}

	f, err := safefile.Create(filepath.Join(s.dir, "tmp"))
	if err != nil {
		return 0, err
	}
	if _, err := f.Write(head); err != nil {
		f.Abort()
		return 0, err
	}
	if _, err := io.Copy(f, body); err != nil {
		f.Abort()
		return 0, err
	}
	n := f.Size()
	final := s.bodyPath(env.ID)
	if err := f.Commit(final); err != nil {
		if errors.Is(err, safefile.ErrExist) {
			return 0, fmt.Errorf("embedded: duplicate queue id %s", env.ID)
		}
		return 0, err
	}

	rows.size = n
	err = s.w.doRows(ctx, dirSync(filepath.Dir(final)), rows, a)
	if err != nil {
		// No row points at the file (or the sweep will find it so).
		_ = os.Remove(final)
		return 0, err
	}
	return n, nil
}

// enqueueSmall appends a body of at most the threshold to the current
// segment, then commits the message's rows, its segbodies row among them, in
// one op of the writer's group (which fdatasyncs the segment first).
func (s *Store) enqueueSmall(ctx context.Context, rows *newRows, data []byte, a *arrival) (int64, error) {
	sg, off, err := s.segs.append(data)
	if err != nil {
		return 0, err
	}
	n := int64(len(data))
	rows.size, rows.inSeg, rows.seg, rows.off = n, true, int64(sg.n), off
	err = s.w.doRows(ctx, sg, rows, a)
	s.segs.settle(sg, off, n, err == nil)
	if err != nil {
		return 0, err
	}
	return n, nil
}

// newMessage checks env and makes the rows that store it (size and body
// place to be filled in): the envelope without Domains as JSON, and per
// domain the recipients as JSON, due at arrival or as env.Deferred says.
func newMessage(env *store.Envelope) (*newRows, error) {
	if len(env.Domains) == 0 {
		return nil, fmt.Errorf("embedded: message %s has no recipients", env.ID)
	}
	envJSON, err := store.EnvelopeJSON(env)
	if err != nil {
		return nil, err
	}
	r := &newRows{id: env.ID, env: string(envJSON)}
	for dom, rs := range env.Domains {
		if dom == "" || len(rs) == 0 {
			return nil, fmt.Errorf("embedded: message %s: empty domain or recipient list", env.ID)
		}
		b, err := store.RecipientsJSON(rs)
		if err != nil {
			return nil, err
		}
		next, attempts, lastErr := env.FirstSchedule(dom)
		r.dels = append(r.dels, newDelivery{dom, string(b), sqlrow.Nanos(next), attempts, lastErr})
	}
	return r, nil
}

// duplicateID says which id is taken when err, from inserting the messages
// row of id, is the primary key's.
func duplicateID(err error, id string) error {
	var se *sqlite.Error
	if errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY {
		return fmt.Errorf("embedded: duplicate queue id %s", id)
	}
	return err
}

// newRows are the rows of a new message: messages, segbodies if its body
// is in a segment, and one deliveries row per domain.
type newRows struct {
	id, env  string
	size     int64
	inSeg    bool
	seg, off int64
	dels     []newDelivery
}

type newDelivery struct {
	domain, rcpts string
	next          int64
	attempts      int
	lastErr       string
}

// maxRowsPerInsert bounds the rows of one multi-row INSERT (and so the
// statements prepared for them: one per table and row count).
const maxRowsPerInsert = 32

// insertRows inserts new messages' rows, with one INSERT of many rows per
// table (a chunk of at most maxRowsPerInsert rows each). A taken id fails
// it; with one message, the error says so.
func insertRows(tx *wtx, rows []*newRows) error {
	var msgs, segs, dels []any
	for _, r := range rows {
		msgs = append(msgs, r.id, r.env, r.size)
		if r.inSeg {
			segs = append(segs, r.id, r.seg, r.off, r.size)
		}
		for _, d := range r.dels {
			dels = append(dels, r.id, d.domain, d.rcpts, d.next, d.attempts, d.lastErr)
		}
	}
	for _, t := range []struct {
		table, cols string
		ncols       int
		args        []any
	}{
		{"messages", "id, envelope, size", 3, msgs},
		{"segbodies", "id, seg, off, len", 4, segs},
		{"deliveries", "id, domain, recipients, next_attempt, attempts, last_error", 6, dels},
	} {
		for args := t.args; len(args) > 0; {
			n := min(len(args)/t.ncols, maxRowsPerInsert)
			st, err := tx.multiInsert(tx, t.table, t.cols, t.ncols, n)
			if err != nil {
				return err
			}
			if _, err := st.Exec(args[:n*t.ncols]...); err != nil {
				if len(rows) == 1 && t.table == "messages" {
					return duplicateID(err, rows[0].id)
				}
				return err
			}
			args = args[n*t.ncols:]
		}
	}
	return nil
}

// Claim implements store.Store. It runs in the writer, so two Claims never
// lease the same domain.
func (s *Store) Claim(ctx context.Context, owner string, now time.Time, ttl time.Duration, limit int) (*store.Lease, []store.Delivery, error) {
	if owner == "" {
		return nil, nil, errors.New("embedded: Claim needs an owner")
	}
	limit = clampLimit(limit)
	n := sqlrow.Nanos(now)
	var (
		lease *store.Lease
		rows  []sqlrow.Delivery
	)
	err := s.w.do(ctx, nil, func(tx *wtx) error {
		domain, found, err := claimDomain(tx, n)
		if err != nil || !found {
			return err
		}
		exp := now.Add(ttl)
		var token int64
		err = tx.claimLease.QueryRow(domain, owner, sqlrow.Nanos(exp)).Scan(&token)
		if err != nil {
			return err
		}
		rows, err = scanDeliveries(tx.claimDeliveries.Query(domain, n, limit))
		if err != nil {
			return err
		}
		lease = &store.Lease{Domain: domain, Owner: owner, Token: token, Expires: exp}
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

// claimLookahead bounds how many due deliveries Claim's first query reads
// (passing over those of domains under a live lease) before it walks the
// domains instead.
const claimLookahead = 1000

// Claim's queries (?1 = now, ?2 = claimLookahead); plan_test.go checks
// that they only seek indexes.
const (
	claimFrontSQL = `		WITH front AS (
			SELECT d.domain, d.next_attempt FROM deliveries d INDEXED BY deliveries_due
			WHERE d.held = 0 AND d.next_attempt <= ?1 ORDER BY d.next_attempt LIMIT ?2)
		SELECT (SELECT COUNT(*) FROM front),
		       (SELECT domain FROM front WHERE domain NOT IN (SELECT domain FROM leases WHERE expires > ?1)
		        ORDER BY next_attempt LIMIT 1)`
	claimWalkSQL = `		WITH RECURSIVE doms(d) AS (
			SELECT MIN(domain) FROM deliveries
			UNION ALL
			SELECT (SELECT MIN(domain) FROM deliveries WHERE domain > doms.d) FROM doms WHERE doms.d IS NOT NULL
		)
		SELECT d FROM (
			SELECT d, (SELECT MIN(x.next_attempt) FROM deliveries x WHERE x.domain = doms.d AND x.held = 0) AS t
			FROM doms WHERE d IS NOT NULL AND d NOT IN (SELECT domain FROM leases WHERE expires > ?1))
		WHERE t <= ?1 ORDER BY t LIMIT 1`
)

// claimDomain picks the unleased domain with the oldest due, unheld delivery
// at n. It first reads the claimLookahead oldest due deliveries
// (deliveries_due); if all of them belong to leased domains (one big domain
// being drained fills the front of the queue), it walks the domains through
// deliveries_domain instead, two index seeks per domain, so a Claim never
// reads a leased domain's whole backlog.
func claimDomain(tx *wtx, n int64) (string, bool, error) {
	var (
		read   int
		domain sql.NullString
	)
	err := tx.claimFront.QueryRow(n, claimLookahead).Scan(&read, &domain)
	if err != nil || domain.Valid || read < claimLookahead {
		return domain.String, domain.Valid, err
	}
	err = tx.claimWalk.QueryRow(n).Scan(&domain)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	return domain.String, domain.Valid, err
}

// More implements store.Store.
func (s *Store) More(ctx context.Context, l *store.Lease, now time.Time, limit int, skip []string) ([]store.Delivery, error) {
	if err := s.checkLease(ctx, l); err != nil {
		return nil, err
	}
	if skip == nil {
		skip = []string{}
	}
	skipJSON, err := json.Marshal(skip)
	if err != nil {
		return nil, err
	}
	rows, err := scanDeliveries(s.rst.more.QueryContext(ctx, l.Domain, sqlrow.Nanos(now), string(skipJSON), clampLimit(limit)))
	if err != nil {
		return nil, err
	}
	return decodeDeliveries(rows)
}

func (s *Store) checkLease(ctx context.Context, l *store.Lease) error {
	var one int
	err := s.rst.leaseHeld.QueryRowContext(ctx, l.Domain, l.Owner, l.Token).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return store.ErrLeaseLost
	}
	return err
}

// Renew implements store.Store. It does not modify *l.
func (s *Store) Renew(ctx context.Context, l *store.Lease, now time.Time, ttl time.Duration) error {
	return s.w.do(ctx, nil, func(tx *wtx) error {
		res, err := tx.renew.Exec(sqlrow.Nanos(now.Add(ttl)), l.Domain, l.Owner, l.Token, sqlrow.Nanos(now))
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return store.ErrLeaseLost
		}
		return nil
	})
}

// ReleaseLease implements store.Store. The token stays so that the next
// lease on the domain gets a larger one.
func (s *Store) ReleaseLease(ctx context.Context, l *store.Lease) error {
	return s.w.do(ctx, nil, func(tx *wtx) error {
		_, err := tx.release.Exec(l.Domain, l.Owner, l.Token)
		return err
	})
}

// Complete implements store.Store. The body rows of messages it removes go
// in the same transaction; their segment space and body files are freed
// after the commit.
func (s *Store) Complete(ctx context.Context, l *store.Lease, results []store.Result) error {
	var gone removed
	err := s.w.do(ctx, nil, func(tx *wtx) error {
		var one int
		err := tx.leaseHeld.QueryRow(l.Domain, l.Owner, l.Token).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrLeaseLost
		}
		if err != nil {
			return err
		}
		gone, err = completeAll(tx, l.Domain, results, s.legacyBodies)
		return err
	})
	if err != nil {
		return err
	}
	s.freeBodies(gone)
	return nil
}

// removed is what a commit removed whose space is given back after it.
type removed struct {
	files []string // ids whose body is a file
	segs  []segRef // bodies in segments
}

// freeBodies gives back the space of bodies whose removal is committed.
func (s *Store) freeBodies(r removed) {
	for _, id := range r.files {
		_ = os.Remove(s.bodyPath(id)) // if this fails, the sweep will
	}
	if len(r.segs) > 0 {
		s.segs.free(r.segs)
	}
}

// completeAll applies results, in order, to the deliveries (r.ID, domain),
// removes the messages left without deliveries with their body rows, and
// returns where the bodies of those gone messages were (segments, files;
// bodies in the legacy bodies table, looked for only if the store had any
// at Open, need nothing more). A delivery that no
// longer exists (deleted by an operator) is skipped. The whole group costs
// one read, one delete of deliveries, one of messages and one of segment
// bodies (two with legacy bodies), plus an update per delivery that keeps
// recipients.
func completeAll(tx *wtx, domain string, results []store.Result, legacyBodies bool) (removed, error) {
	var none removed
	if len(results) == 0 {
		return none, nil
	}
	ids := make([]string, len(results))
	for i, r := range results {
		ids[i] = r.ID
	}
	idsJSON, err := json.Marshal(ids)
	if err != nil {
		return none, err
	}
	rows, err := tx.completeRows.Query(domain, string(idsJSON))
	if err != nil {
		return none, err
	}
	left := make(map[string][]store.Recipient, len(results))
	for rows.Next() {
		var id, rj string
		if err := rows.Scan(&id, &rj); err != nil {
			rows.Close()
			return none, err
		}
		var rcpts []store.Recipient
		if err := json.Unmarshal([]byte(rj), &rcpts); err != nil {
			rows.Close()
			return none, fmt.Errorf("embedded: delivery %s/%s: %w", id, domain, err)
		}
		left[id] = rcpts
	}
	if err := rows.Close(); err != nil {
		return none, err
	}

	// What each result leaves; a later result for the same id applies on
	// top of an earlier one.
	type outcome struct {
		next     int64
		lastErr  string
		attempts int
	}
	var order []string
	outcomes := make(map[string]*outcome, len(left))
	for _, r := range results {
		rcpts, ok := left[r.ID]
		if !ok {
			continue
		}
		if len(r.Delivered)+len(r.Failed) > 0 {
			keep := make([]store.Recipient, 0, len(rcpts))
			for _, rc := range rcpts {
				if !slices.Contains(r.Delivered, rc.Addr) && !slices.Contains(r.Failed, rc.Addr) {
					keep = append(keep, rc)
				}
			}
			left[r.ID] = keep
		}
		o := outcomes[r.ID]
		if o == nil {
			o = &outcome{}
			outcomes[r.ID] = o
			order = append(order, r.ID)
		}
		o.next, o.lastErr = sqlrow.Nanos(r.Next), r.LastError
		if r.Attempted {
			o.attempts++
		}
	}

	var done []string
	for _, id := range order {
		rcpts := left[id]
		if len(rcpts) == 0 {
			done = append(done, id)
			continue
		}
		b, err := json.Marshal(rcpts)
		if err != nil {
			return none, err
		}
		o := outcomes[id]
		if _, err := tx.updDelivery.Exec(string(b), o.next, o.lastErr, o.attempts, id, domain); err != nil {
			return none, err
		}
	}
	if len(done) == 0 {
		return none, nil
	}
	doneJSON, err := json.Marshal(done)
	if err != nil {
		return none, err
	}
	if _, err := tx.delDeliveries.Exec(domain, string(doneJSON)); err != nil {
		return none, err
	}
	gone, err := scanIDs(tx.delMessages.Query(string(doneJSON)))
	if err != nil || len(gone) == 0 {
		return none, err
	}
	goneJSON, err := json.Marshal(gone)
	if err != nil {
		return none, err
	}
	var legacy []string
	if legacyBodies {
		if legacy, err = scanIDs(tx.delBodies.Query(string(goneJSON))); err != nil {
			return none, err
		}
	}
	segs, err := scanSegRefs(tx.delSegBodies.Query(string(goneJSON)))
	if err != nil {
		return none, err
	}
	out := removed{segs: segs}
	if len(legacy)+len(segs) == len(gone) {
		return out, nil
	}
	known := make(map[string]bool, len(legacy)+len(segs))
	for _, id := range legacy {
		known[id] = true
	}
	for _, r := range segs {
		known[r.id] = true
	}
	for _, id := range gone {
		if !known[id] {
			out.files = append(out.files, id)
		}
	}
	return out, nil
}

// scanSegRefs reads rows of (id, seg, off, len).
func scanSegRefs(rows *sql.Rows, err error) ([]segRef, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var refs []segRef
	for rows.Next() {
		var r segRef
		var seg int64
		if err := rows.Scan(&r.id, &seg, &r.off, &r.len); err != nil {
			return nil, err
		}
		r.seg = uint64(seg)
		refs = append(refs, r)
	}
	return refs, rows.Err()
}

// scanIDs reads rows of one text column (ids, domains).
func scanIDs(rows *sql.Rows, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// NextDue implements store.Store.
func (s *Store) NextDue(ctx context.Context) (time.Time, bool, error) {
	var n sql.NullInt64
	err := s.rst.nextDue.QueryRowContext(ctx).Scan(&n)
	if err != nil || !n.Valid {
		return time.Time{}, false, err
	}
	return sqlrow.FromNanos(n.Int64), true, nil
}

// Waiting implements store.Store. It walks the distinct domains through
// deliveries_domain (one index seek per domain), never the whole queue.
func (s *Store) Waiting(ctx context.Context, now time.Time) ([]string, error) {
	return scanIDs(s.rdb.QueryContext(ctx, `
		WITH RECURSIVE doms(d) AS (
			SELECT MIN(domain) FROM deliveries
			UNION ALL
			SELECT (SELECT MIN(domain) FROM deliveries WHERE domain > doms.d) FROM doms WHERE doms.d IS NOT NULL
		)
		SELECT d FROM doms WHERE d IS NOT NULL AND EXISTS (
			SELECT 1 FROM deliveries x WHERE x.domain = doms.d AND x.held = 0 AND x.next_attempt > ?)`, sqlrow.Nanos(now)))
}

// Body implements store.Store. A small body is read from its segment (or,
// in a store written by an older version, from the legacy bodies table);
// otherwise Body opens the file without asking the index: the
// files are a superset of the file-bodied rows (such a row is committed only
// once its file is durable, and removed before its file), and the only files
// without a row are (1) those of an Enqueue not yet committed, whose id
// nobody has been given yet, (2) those of a message whose removal is being
// committed, as racy as a Body that checks the row just before the removal,
// and (3) crash leftovers, which the sweep removed at Open. Complete and
// Delete return only after removing the files, so Body after them is
// ErrNotFound. (If that removal fails, the file is served until the next
// Open's sweep.)
func (s *Store) Body(ctx context.Context, id string) (io.ReadCloser, error) {
	if checkID(id) != nil {
		return nil, store.ErrNotFound
	}
	r := segRef{id: id}
	var seg int64
	err := s.rst.getSegBody.QueryRowContext(ctx, id).Scan(&seg, &r.off, &r.len)
	if err == nil {
		r.seg = uint64(seg)
		return s.segs.reader(r)
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	if s.legacyBodies {
		var data []byte
		err := s.rst.getBody.QueryRowContext(ctx, id).Scan(&data)
		if err == nil {
			return io.NopCloser(bytes.NewReader(data)), nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return nil, err
		}
	}
	f, err := os.Open(s.bodyPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, store.ErrNotFound
	}
	return f, err
}

// Bodies implements store.BodiesReader: the small bodies among ids, located
// in one statement and read with one pread each (one read transaction
// instead of one per body). Bodies kept as files are not in the map.
func (s *Store) Bodies(ctx context.Context, ids []string) (map[string][]byte, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	idsJSON, err := json.Marshal(ids)
	if err != nil {
		return nil, err
	}
	refs, err := scanSegRefs(s.rst.getSegBodies.QueryContext(ctx, string(idsJSON)))
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(ids))
	if err := s.segs.readAll(refs, out); err != nil {
		return nil, err
	}
	if !s.legacyBodies || len(out) == len(ids) {
		return out, nil
	}
	rows, err := s.rst.getBodies.QueryContext(ctx, string(idsJSON))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var data []byte
		if err := rows.Scan(&id, &data); err != nil {
			return nil, err
		}
		out[id] = data
	}
	return out, rows.Err()
}

// List implements store.Store. The cursor is "<id> <domain>" of the last
// delivery of the previous page (see Cursor); Page.Limit defaults to 100 and
// is capped at 1000.
func (s *Store) List(ctx context.Context, f store.Filter, p store.Page) ([]store.Delivery, error) {
	where, args := filterSQL(f)
	if p.After != "" {
		id, dom, ok := strings.Cut(p.After, " ")
		if !ok {
			return nil, fmt.Errorf("embedded: bad cursor %q", p.After)
		}
		where += " AND (d.id, d.domain) > (?, ?)"
		args = append(args, id, dom)
	}
	args = append(args, clampLimit(p.Limit))
	rows, err := scanDeliveries(s.rdb.QueryContext(ctx, selectDeliveries+"WHERE "+where+" ORDER BY d.id, d.domain LIMIT ?", args...))
	if err != nil {
		return nil, err
	}
	return decodeDeliveries(rows)
}

// Cursor is the List cursor that continues after d.
func Cursor(d store.Delivery) string { return d.ID + " " + d.Domain }

// Flush implements store.Store. Deliveries already overdue keep their
// earlier time, so they stay ahead in Claim's order.
func (s *Store) Flush(ctx context.Context, f store.Filter, now time.Time) (int, error) {
	q, args := flushSQL(f, now)
	return s.update(ctx, q, args)
}

// flushSQL is Flush's statement. With a domain it reads only that domain's
// rows (deliveries_domain); plan_test.go checks it.
func flushSQL(f store.Filter, now time.Time) (string, []any) {
	where, args := filterSQL(f)
	n := sqlrow.Nanos(now)
	return `UPDATE deliveries AS d SET next_attempt = ? WHERE d.held = 0 AND d.next_attempt > ? AND ` + where,
		append([]any{n, n}, args...)
}

// Hold implements store.Store.
func (s *Store) Hold(ctx context.Context, f store.Filter) (int, error) {
	where, args := filterSQL(f)
	return s.update(ctx, `UPDATE deliveries AS d SET held = 1 WHERE d.held = 0 AND `+where, args)
}

// Unhold implements store.Store.
func (s *Store) Unhold(ctx context.Context, f store.Filter, now time.Time) (int, error) {
	where, args := filterSQL(f)
	return s.update(ctx, `UPDATE deliveries AS d SET held = 0, next_attempt = ? WHERE d.held = 1 AND `+where,
		append([]any{sqlrow.Nanos(now)}, args...))
}

func (s *Store) update(ctx context.Context, q string, args []any) (int, error) {
	var n int64
	err := s.w.do(ctx, nil, func(tx *wtx) error {
		res, err := tx.Exec(q, args...)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return int(n), err
}

// Delete implements store.Store. The body's row goes in the same
// transaction as the message; its segment space or file is freed after the
// commit.
func (s *Store) Delete(ctx context.Context, id string) error {
	if checkID(id) != nil {
		return store.ErrNotFound
	}
	var gone removed
	err := s.w.do(ctx, nil, func(tx *wtx) error {
		gone = removed{}
		if _, err := tx.delMessageDeliveries.Exec(id); err != nil {
			return err
		}
		res, err := tx.delMessage.Exec(id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return store.ErrNotFound
		}
		res, err = tx.delBody.Exec(id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n > 0 {
			return nil // a legacy inline body
		}
		gone.segs, err = scanSegRefs(tx.delSegBody.Query(id))
		if err != nil {
			return err
		}
		if len(gone.segs) == 0 {
			gone.files = []string{id}
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.freeBodies(gone)
	return nil
}

// filterSQL is the WHERE condition for f on deliveries d ("1" for all).
func filterSQL(f store.Filter) (string, []any) {
	conds := []string{"1"}
	var args []any
	if f.ID != "" {
		conds = append(conds, "d.id = ?")
		args = append(args, f.ID)
	}
	if f.Domain != "" {
		conds = append(conds, "d.domain = ?")
		args = append(args, f.Domain)
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

// scanDeliveries reads the rows of a query on selectDeliveries.
func scanDeliveries(rows *sql.Rows, err error) ([]sqlrow.Delivery, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return sqlrow.ScanAll(rows)
}

func decodeDeliveries(rows []sqlrow.Delivery) ([]store.Delivery, error) {
	ds, err := sqlrow.Decode(rows)
	if err != nil {
		return nil, fmt.Errorf("embedded: %w", err)
	}
	return ds, nil
}
