package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
)

// The hot statements are prepared once: the writer's on its own connection
// (wstmts), the readers' on the read pool (rstmts, prepared by database/sql
// on each pooled connection the first time it runs there). Rare or
// dynamically built statements (List, Flush, Hold, Waiting) are parsed per
// call.

const selectDeliveries = `SELECT d.id, d.domain, d.recipients, d.attempts, d.next_attempt, d.last_error, d.held, m.envelope, m.size
		FROM deliveries d JOIN messages m ON m.id = d.id `

// Statements of the writer (?1… as in each SQL text).
const (
	claimLeaseSQL = `
			INSERT INTO leases (domain, owner, token, expires) VALUES (?, ?, 1, ?)
			ON CONFLICT (domain) DO UPDATE SET owner = excluded.owner, token = leases.token + 1, expires = excluded.expires
			RETURNING token`
	// claimDeliveriesSQL: domain, now, limit.
	claimDeliveriesSQL = selectDeliveries + `WHERE d.domain = ? AND d.held = 0 AND d.next_attempt <= ?
			ORDER BY d.next_attempt, d.id LIMIT ?`
	leaseHeldSQL = `SELECT 1 FROM leases WHERE domain = ? AND owner = ? AND token = ? AND expires != 0`
	renewSQL     = `UPDATE leases SET expires = ? WHERE domain = ? AND owner = ? AND token = ? AND expires > ?`
	releaseSQL   = `UPDATE leases SET owner = '', expires = 0 WHERE domain = ? AND owner = ? AND token = ?`

	// Complete's statements take the ids of one Complete as a JSON array,
	// walked first (CROSS JOIN fixes the order), so each id costs one
	// primary key seek whatever the size of the domain's backlog;
	// plan_test.go checks it.
	// completeRowsSQL: domain, ids.
	completeRowsSQL = `SELECT d.id, d.recipients FROM json_each(?2) AS j CROSS JOIN deliveries AS d
			WHERE d.id = j.value AND d.domain = ?1`
	updDeliverySQL = `UPDATE deliveries SET recipients = ?, next_attempt = ?, last_error = ?, attempts = attempts + ?
			WHERE id = ? AND domain = ?`
	// delDeliveriesSQL: domain, ids.
	delDeliveriesSQL = `DELETE FROM deliveries WHERE (id, domain) IN (SELECT j.value, ?1 FROM json_each(?2) AS j)`
	// delMessagesSQL: ids. It removes the messages among them that have no
	// delivery left, and returns their ids.
	delMessagesSQL = `DELETE FROM messages WHERE id IN (
			SELECT j.value FROM json_each(?1) AS j WHERE NOT EXISTS (SELECT 1 FROM deliveries x WHERE x.id = j.value))
			RETURNING id`

	// delBodiesSQL and delSegBodiesSQL: ids (of messages just removed).
	// They return the bodies that were in the legacy bodies table and in
	// segments; the others have a file.
	delBodiesSQL    = `DELETE FROM bodies WHERE id IN (SELECT j.value FROM json_each(?1) AS j) RETURNING id`
	delSegBodiesSQL = `DELETE FROM segbodies WHERE id IN (SELECT j.value FROM json_each(?1) AS j) RETURNING id, seg, off, len`

	delMessageDeliveriesSQL = `DELETE FROM deliveries WHERE id = ?`
	delMessageSQL           = `DELETE FROM messages WHERE id = ?`
	delBodySQL              = `DELETE FROM bodies WHERE id = ?`
	delSegBodySQL           = `DELETE FROM segbodies WHERE id = ? RETURNING id, seg, off, len`
)

// wstmts are the writer's prepared statements, valid on its connection only.
type wstmts struct {
	begin, commit, rollback, savepoint, releaseOp, rollbackTo *sql.Stmt

	claimFront, claimWalk, claimLease, claimDeliveries    *sql.Stmt
	leaseHeld, renew, release                             *sql.Stmt
	completeRows, updDelivery, delDeliveries, delMessages *sql.Stmt
	delBodies, delMessageDeliveries, delMessage, delBody  *sql.Stmt
	delSegBodies, delSegBody                              *sql.Stmt
	all                                                   []*sql.Stmt

	// multi holds INSERTs of several rows at once, by table and row count,
	// prepared when first needed (see insertRows).
	multi map[multiKey]*sql.Stmt
}

type multiKey struct {
	table string
	rows  int
}

// multiInsert returns the prepared INSERT of n rows into table (columns
// cols), preparing it on the writer's connection the first time.
func (st *wstmts) multiInsert(t *wtx, table, cols string, ncols, n int) (*sql.Stmt, error) {
	k := multiKey{table, n}
	if s, ok := st.multi[k]; ok {
		return s, nil
	}
	var b strings.Builder
	b.WriteString("INSERT INTO " + table + " (" + cols + ") VALUES ")
	row := "(" + strings.Repeat("?, ", ncols-1) + "?)"
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(row)
	}
	s, err := t.conn.PrepareContext(t.ctx, b.String())
	if err != nil {
		return nil, err
	}
	if st.multi == nil {
		st.multi = make(map[multiKey]*sql.Stmt)
	}
	st.multi[k] = s
	st.all = append(st.all, s)
	return s, nil
}

func prepareWriter(ctx context.Context, conn *sql.Conn) (*wstmts, error) {
	st := &wstmts{}
	for _, p := range []struct {
		dst **sql.Stmt
		sql string
	}{
		{&st.begin, `BEGIN IMMEDIATE`},
		{&st.commit, `COMMIT`},
		{&st.rollback, `ROLLBACK`},
		{&st.savepoint, `SAVEPOINT op`},
		{&st.releaseOp, `RELEASE op`},
		{&st.rollbackTo, `ROLLBACK TO op`},
		{&st.claimFront, claimFrontSQL},
		{&st.claimWalk, claimWalkSQL},
		{&st.claimLease, claimLeaseSQL},
		{&st.claimDeliveries, claimDeliveriesSQL},
		{&st.leaseHeld, leaseHeldSQL},
		{&st.renew, renewSQL},
		{&st.release, releaseSQL},
		{&st.completeRows, completeRowsSQL},
		{&st.updDelivery, updDeliverySQL},
		{&st.delDeliveries, delDeliveriesSQL},
		{&st.delMessages, delMessagesSQL},
		{&st.delBodies, delBodiesSQL},
		{&st.delMessageDeliveries, delMessageDeliveriesSQL},
		{&st.delMessage, delMessageSQL},
		{&st.delBody, delBodySQL},
		{&st.delSegBodies, delSegBodiesSQL},
		{&st.delSegBody, delSegBodySQL},
	} {
		s, err := conn.PrepareContext(ctx, p.sql)
		if err != nil {
			st.close()
			return nil, fmt.Errorf("embedded: prepare %q: %w", p.sql, err)
		}
		*p.dst = s
		st.all = append(st.all, s)
	}
	return st, nil
}

func (st *wstmts) close() {
	for _, s := range st.all {
		_ = s.Close()
	}
}

// Statements of the readers.
const (
	// moreSQL: domain, now, skipped ids (JSON), limit.
	moreSQL = selectDeliveries + `WHERE d.domain = ? AND d.held = 0 AND d.next_attempt <= ?
		AND d.id NOT IN (SELECT value FROM json_each(?))
		ORDER BY d.next_attempt, d.id LIMIT ?`
	nextDueSQL    = `SELECT MIN(next_attempt) FROM deliveries WHERE held = 0`
	hasMessageSQL = `SELECT 1 FROM messages WHERE id = ?`
	getBodySQL    = `SELECT data FROM bodies WHERE id = ?`
	// getBodiesSQL: ids (JSON).
	getBodiesSQL  = `SELECT b.id, b.data FROM json_each(?) AS j CROSS JOIN bodies AS b WHERE b.id = j.value`
	getSegBodySQL = `SELECT seg, off, len FROM segbodies WHERE id = ?`
	// getSegBodiesSQL: ids (JSON).
	getSegBodiesSQL = `SELECT b.id, b.seg, b.off, b.len FROM json_each(?) AS j CROSS JOIN segbodies AS b WHERE b.id = j.value`
	segUsedSQL      = `SELECT 1 FROM segbodies WHERE seg = ? LIMIT 1`
	segLiveSQL      = `SELECT off, len FROM segbodies WHERE seg = ? ORDER BY off`
	hasBodiesSQL    = `SELECT EXISTS (SELECT 1 FROM bodies)`
)

// rstmts are the readers' prepared statements, on the read pool.
type rstmts struct {
	leaseHeld, more, nextDue, hasMessage, getBody, getBodies *sql.Stmt
	getSegBody, getSegBodies, segUsed, segLive, hasBodies    *sql.Stmt
}

func prepareReaders(db *sql.DB) (*rstmts, error) {
	st := &rstmts{}
	var errs []error
	for _, p := range []struct {
		dst **sql.Stmt
		sql string
	}{
		{&st.leaseHeld, leaseHeldSQL},
		{&st.more, moreSQL},
		{&st.nextDue, nextDueSQL},
		{&st.hasMessage, hasMessageSQL},
		{&st.getBody, getBodySQL},
		{&st.getBodies, getBodiesSQL},
		{&st.getSegBody, getSegBodySQL},
		{&st.getSegBodies, getSegBodiesSQL},
		{&st.segUsed, segUsedSQL},
		{&st.segLive, segLiveSQL},
		{&st.hasBodies, hasBodiesSQL},
	} {
		s, err := db.Prepare(p.sql)
		if err != nil {
			errs = append(errs, fmt.Errorf("embedded: prepare %q: %w", p.sql, err))
			continue
		}
		*p.dst = s
	}
	if err := errors.Join(errs...); err != nil {
		st.close()
		return nil, err
	}
	return st, nil
}

func (st *rstmts) close() {
	for _, s := range []*sql.Stmt{st.leaseHeld, st.more, st.nextDue, st.hasMessage, st.getBody, st.getBodies, st.getSegBody, st.getSegBodies, st.segUsed, st.segLive, st.hasBodies} {
		if s != nil {
			_ = s.Close()
		}
	}
}
