package embedded

import (
	"context"
	"database/sql"
	"sync"

	"backupmx/internal/store/embedded/safefile"
)

// writer is the single goroutine that writes to SQLite. Callers hand it ops;
// it takes everything pending (up to maxBatch), fsyncs the body directories
// those ops need, runs each op in its own savepoint of one transaction,
// commits once, and answers each caller with its own error.
type writer struct {
	db       *sql.DB
	maxBatch int
	ops      chan *op

	mu     sync.RWMutex // held for reading while sending on ops
	closed bool
	quit   chan struct{}
	exited chan struct{}
}

type op struct {
	dir  string              // directory to fsync before the commit, or ""
	fn   func(*sql.Tx) error // runs inside the group's transaction
	done chan error
}

func newWriter(db *sql.DB, maxBatch int) *writer {
	w := &writer{
		db:       db,
		maxBatch: maxBatch,
		ops:      make(chan *op, maxBatch),
		quit:     make(chan struct{}),
		exited:   make(chan struct{}),
	}
	go w.run()
	return w
}

// do runs fn in the next group commit and returns once that commit is
// durable (or failed). fn's own error rolls back only fn's writes. Once
// handed over, an op is waited for even if ctx ends: its outcome is real.
func (w *writer) do(ctx context.Context, dir string, fn func(*sql.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	o := &op{dir: dir, fn: fn, done: make(chan error, 1)}
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

// close stops accepting ops, commits the ones already handed over, and
// waits for the goroutine to end.
func (w *writer) close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	w.mu.Unlock()
	close(w.quit)
	<-w.exited
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
		w.commit(w.fill(batch))
	}
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
	errs := make([]error, len(batch))
	defer func() {
		for i, o := range batch {
			o.done <- errs[i]
		}
	}()

	// Body files were linked into these directories by the callers; their
	// names must be durable before the rows that point at them. The
	// directories are synced at once, not one after the other: concurrent
	// fsyncs share the file system's journal commits.
	synced := make(map[string]*error)
	for _, o := range batch {
		if o.dir != "" && synced[o.dir] == nil {
			synced[o.dir] = new(error)
		}
	}
	var wg sync.WaitGroup
	for dir, errp := range synced {
		wg.Go(func() { *errp = safefile.SyncDir(dir) })
	}
	wg.Wait()
	for i, o := range batch {
		if o.dir != "" {
			errs[i] = *synced[o.dir]
		}
	}

	ctx := context.Background()
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		for i := range errs {
			errs[i] = err
		}
		return
	}
	for i, o := range batch {
		if errs[i] != nil {
			continue
		}
		if _, err := tx.ExecContext(ctx, "SAVEPOINT op"); err != nil {
			errs[i] = err
			continue
		}
		if err := o.fn(tx); err != nil {
			errs[i] = err
			if _, rerr := tx.ExecContext(ctx, "ROLLBACK TO op"); rerr != nil {
				// The transaction is in an unknown state: fail everyone.
				_ = tx.Rollback()
				for j := range errs {
					if errs[j] == nil {
						errs[j] = rerr
					}
				}
				return
			}
		}
		if _, err := tx.ExecContext(ctx, "RELEASE op"); err != nil && errs[i] == nil {
			errs[i] = err
		}
	}
	if err := tx.Commit(); err != nil {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
	}
}
