package embedded

import (
	"context"
	"database/sql"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"backupmx/internal/store/embedded/safefile"
)

// writer is the single goroutine that writes to SQLite. Callers hand it ops;
// it takes everything pending (up to maxBatch), syncs what those ops need
// durable first (body directories, segments), runs the ops in one transaction, commits once, and answers
// each caller with its own error.
//
// An op's error must undo only that op's writes. Savepoints give that, at a
// price per op (two more statements, and the first change to every page is
// copied to the sub-journal), so a group first runs without them; if any op
// fails, the whole group is rolled back and run again with a savepoint per op.
// So an op's fn may run twice: it must set, not accumulate, what it reports.
//
// Commit delay: a group's syncs and commit cost about the same for one
// message as for twenty, so when other messages are on their way (their
// Enqueue has started: the body is being received or written) the writer
// waits for them, at most delay, before it commits: fewer, larger groups.
// With nothing on its way (one sender at a time) it commits at once.
//
// It holds one connection for its whole life and prepares its statements on
// it once (SQLite parsing and planning was the largest part of the cost of
// a write); transactions are BEGIN IMMEDIATE … COMMIT on that connection.
type writer struct {
	conn     *sql.Conn
	st       *wstmts
	maxBatch int
	delay    time.Duration // longest wait for messages on their way (0: none)
	ops      chan *op
	// coming counts the Enqueues started and not yet handed over (arrival).
	coming atomic.Int64
	groups atomic.Int64 // groups committed or rolled back so far

	mu     sync.RWMutex // held for reading while sending on ops
	closed bool
	quit   chan struct{}
	exited chan struct{}
}

type op struct {
	sync syncer           // to make durable before the commit, or nil
	fn   func(*wtx) error // runs inside the group's transaction
	// rows, if set, are a new message's rows, which fn inserts: with other
	// ops' rows they are inserted by a few multi-row INSERTs (see runPlain).
	rows *newRows
	// arrival, if set, ends just before the op is handed over (it takes
	// the caller's Enqueue out of coming).
	arrival *arrival
	done    chan error
}

// A syncer is something an op needs durable before its rows are committed:
// a directory a body file was linked into, or a segment a body was
// appended to. Ops of one group with the same syncer share one sync.
type syncer interface{ Sync() error }

// dirSync is a directory to fsync.
type dirSync string

func (d dirSync) Sync() error { return safefile.SyncDir(string(d)) }

// wtx is the writer's open transaction as an op sees it: ad-hoc SQL and the
// prepared statements, all on the writer's connection.
type wtx struct {
	ctx  context.Context
	conn *sql.Conn
	*wstmts
}

// Exec runs q (parsed each time: for rare statements).
func (t *wtx) Exec(q string, args ...any) (sql.Result, error) {
	return t.conn.ExecContext(t.ctx, q, args...)
}

// newWriter takes one connection of db for good, prepares the writer's
// statements on it and starts the goroutine.
func newWriter(db *sql.DB, maxBatch int, delay time.Duration) (*writer, error) {
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	st, err := prepareWriter(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	w := &writer{
		conn:     conn,
		st:       st,
		maxBatch: maxBatch,
		delay:    delay,
		ops:      make(chan *op, maxBatch),
		quit:     make(chan struct{}),
		exited:   make(chan struct{}),
	}
	go w.run()
	return w, nil
}

// do runs fn in the next group commit and returns once that commit is
// durable (or failed). fn's own error rolls back only fn's writes. Once
// handed over, an op is waited for even if ctx ends: its outcome is real.
func (w *writer) do(ctx context.Context, sync syncer, fn func(*wtx) error) error {
	return w.send(ctx, &op{sync: sync, fn: fn})
}

// doRows is do for inserting a new message's rows; a is the arrival
// that Enqueue started.
func (w *writer) doRows(ctx context.Context, sync syncer, rows *newRows, a *arrival) error {
	fn := func(tx *wtx) error { return insertRows(tx, []*newRows{rows}) }
	return w.send(ctx, &op{sync: sync, fn: fn, rows: rows, arrival: a})
}

// An arrival is a message on its way to the writer: counted in coming from
// Enqueue's start until its op is handed over or Enqueue gives up.
type arrival struct {
	w     *writer
	ended bool
}

// arriving counts a message on its way; the caller must call done (twice
// is harmless).
func (w *writer) arriving() *arrival {
	w.coming.Add(1)
	return &arrival{w: w}
}

func (a *arrival) done() {
	if !a.ended {
		a.ended = true
		a.w.coming.Add(-1)
	}
}

func (w *writer) send(ctx context.Context, o *op) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	o.done = make(chan error, 1)
	if o.arrival != nil {
		o.arrival.done()
	}
	w.mu.RLock()
	if w.closed {
		w.mu.RUnlock()
		return ErrClosed
	}
	select {
	case w.ops <- o:
	case <-ctx.Done():
		w.mu.RUnlock()
		return ctx.Err()
	}
	w.mu.RUnlock()
	return <-o.done
}

// close stops accepting ops, commits the ones already handed over, waits
// for the goroutine to end, and gives the connection back.
func (w *writer) close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	close(w.quit)
	<-w.exited
	w.st.close()
	return w.conn.Close()
}

func (w *writer) run() {
	defer close(w.exited)
	batch := make([]*op, 0, w.maxBatch)
	for {
		select {
		case o := <-w.ops:
			batch = append(batch[:0], o)
		case <-w.quit:
			// No sender is left (close took the lock); drain what is queued.
			for {
				batch = w.fill(batch[:0])
				if len(batch) == 0 {
					return
				}
				w.commit(batch)
			}
		}
		w.commit(w.gather(w.fill(batch)))
	}
}

// gather waits, at most w.delay, for the messages on their way to join
// batch, and then takes whatever else is pending.
func (w *writer) gather(batch []*op) []*op {
	if w.delay <= 0 || len(batch) >= w.maxBatch || w.coming.Load() == 0 {
		return batch
	}
	t := time.NewTimer(w.delay)
	defer t.Stop()
wait:
	for len(batch) < w.maxBatch && w.coming.Load() > 0 {
		select {
		case o := <-w.ops:
			batch = append(batch, o)
		case <-t.C:
			break wait
		case <-w.quit:
			break wait
		}
	}
	return w.fill(batch)
}

// fill appends pending ops to batch without waiting.
func (w *writer) fill(batch []*op) []*op {
	for len(batch) < w.maxBatch {
		select {
		case o := <-w.ops:
			batch = append(batch, o)
		default:
			return batch
		}
	}
	return batch
}

func (w *writer) commit(batch []*op) {
	w.groups.Add(1)
	errs := make([]error, len(batch))
	defer func() {
		for i, o := range batch {
			o.done <- errs[i]
		}
	}()

	// Body files were linked into directories, and bodies appended to
	// segments, by the callers; they must be durable before the rows that
	// point at them are committed. They are synced at once, not one after
	// the other (concurrent fsyncs share the file system's journal
	// commits), and while the group's statements run: only the COMMIT has
	// to wait for them.
	synced := make(map[syncer]*error)
	for _, o := range batch {
		if o.sync != nil && synced[o.sync] == nil {
			synced[o.sync] = new(error)
		}
	}
	var syncs sync.WaitGroup
	for sn, errp := range synced {
		syncs.Go(func() { *errp = sn.Sync() })
	}
	// syncFailed waits for the syncs and fails the ops whose sync failed.
	syncFailed := func() bool {
		syncs.Wait()
		failed := false
		for i, o := range batch {
			if o.sync != nil && *synced[o.sync] != nil && errs[i] == nil {
				errs[i] = *synced[o.sync]
				failed = true
			}
		}
		return failed
	}

	ctx := context.Background()
	st := w.st
	failAll := func(err error) {
		for j := range errs {
			if errs[j] == nil {
				errs[j] = err
			}
		}
	}
	if _, err := st.begin.ExecContext(ctx); err != nil {
		syncs.Wait()
		failAll(err)
		return
	}
	tx := &wtx{ctx: ctx, conn: w.conn, wstmts: st}
	settled := w.runPlain(tx, batch, errs)
	if !syncFailed() && settled {
		w.finish(errs, failAll)
		return
	}
	// Some op failed, or the sync some needed: their writes are mixed with
	// the others'. Start again, each op in its own savepoint.
	if _, err := st.rollback.ExecContext(ctx); err != nil {
		failAll(err)
		return
	}
	if _, err := st.begin.ExecContext(ctx); err != nil {
		failAll(err)
		return
	}
	for i, o := range batch {
		if errs[i] != nil {
			continue
		}
		if _, err := st.savepoint.ExecContext(ctx); err != nil {
			errs[i] = err
			continue
		}
		if err := o.fn(tx); err != nil {
			errs[i] = err
			if _, rerr := st.rollbackTo.ExecContext(ctx); rerr != nil {
				// The transaction is in an unknown state: fail everyone.
				_, _ = st.rollback.ExecContext(ctx)
				failAll(rerr)
				return
			}
		}
		if _, err := st.releaseOp.ExecContext(ctx); err != nil && errs[i] == nil {
			errs[i] = err
		}
	}
	w.finish(errs, failAll)
}

// runPlain runs the group's ops (those without an error yet) one after the
// other in the open transaction, without savepoints. It reports whether the
// group is settled: all succeeded, or the only op failed (its error is
// recorded; finish rolls back: there is nothing to run again).
func (w *writer) runPlain(tx *wtx, batch []*op, errs []error) bool {
	live := 0
	for i := range batch {
		if errs[i] == nil {
			live++
		}
	}
	// The new messages' rows go in first, a few statements for all of them
	// (per row, a statement of its own cost more than the row: 3 per
	// message). If that fails, so does the group, which then runs op by op
	// (fn inserts one message's rows).
	var rows []*newRows
	first := -1
	for i, o := range batch {
		if errs[i] == nil && o.rows != nil {
			rows = append(rows, o.rows)
			if first < 0 {
				first = i
			}
		}
	}
	if len(rows) > 0 {
		if err := insertRows(tx, rows); err != nil {
			if live > 1 {
				return false
			}
			errs[first] = err
			return true
		}
	}
	for i, o := range batch {
		if errs[i] != nil || o.rows != nil {
			continue
		}
		if err := o.fn(tx); err != nil {
			if live > 1 {
				return false
			}
			errs[i] = err
			return true
		}
	}
	return true
}

// finish commits the open transaction, if any op is left to commit.
func (w *writer) finish(errs []error, failAll func(error)) {
	if !slices.Contains(errs, nil) {
		// Every op failed: nothing to keep.
		_, _ = w.st.rollback.ExecContext(context.Background())
		return
	}
	if _, err := w.st.commit.ExecContext(context.Background()); err != nil {
		// A failed COMMIT may leave the transaction open (SQLITE_BUSY);
		// end it so the next group starts clean.
		_, _ = w.st.rollback.ExecContext(context.Background())
		failAll(err)
	}
}
