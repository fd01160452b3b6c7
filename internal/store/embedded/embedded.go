// Package embedded is the default, single-node store engine: the envelope
// and the schedule index in SQLite, small message bodies appended to
// segment files, larger bodies as files of their own.
//
// Layout under the store directory:
//
//	index.db            SQLite (WAL, synchronous=FULL): messages, deliveries,
//	                    leases, segbodies (where each small body is)
//	segments/<n>        small bodies (at most WithSmallMax, default 64 KiB),
//	                    appended at 4 KiB-aligned offsets; n = 16 hex digits
//	bodies/<xx>/<id>    one file per larger message, xx = 2 hex digits of a hash of id
//	tmp/                bodies being received
//	lock                flock(2)ed while the store is open
//
// Invariant: Enqueue returns only after the commit that contains the
// envelope, the deliveries and the body's location, and a row never points
// at a body that is not durable. A message's body is in exactly one place:
// a segment (its segbodies row is written in the same transaction as its
// messages row), or its file (or, in stores written before segments, a row
// of the bodies table, still read and removed). Enqueue reads up to the
// threshold+1 bytes into a buffer (the memory an Enqueue holds is bounded by
// the threshold); a body that ends within the threshold is written into the
// current segment by the caller, and the writer fdatasyncs that segment once
// for its whole group before the COMMIT, so one segment sync and one WAL
// fsync make a whole group of messages durable together, with no file
// creation and no directory fsync (segments.go). A longer body is streamed
// to tmp/ (buffer first, then the rest), fsynced, linked into bodies/ and
// its directory fsynced before the row is committed. Removal (Delete, or
// Complete removing the last delivery) deletes the body's row in the same
// transaction as the messages row; after that commit its file is removed,
// or its segment unlinked if no row points into it any more (the space of
// bodies gone from a segment still in use is punched out in bulk later).
// So a crash can leave body bytes or a body file without a row, never a row
// without its body: at Open a sweep removes everything in tmp/, every body
// file that has no row and every segment no row points into. Freed pages of index.db are reused, not
// given back to the file system.
//
// Writes go through one writer goroutine that commits whatever is pending in
// one transaction (group commit): concurrent callers share the segment,
// directory and WAL syncs, and each gets its own error. Before committing, the
// writer waits up to the commit delay for messages whose Enqueue has started
// and not yet reached it, so the groups are larger; with none on their way it
// commits at once. Claim runs in that writer too, so
// claims are atomic with respect to each other. Reads use a separate
// read-only connection pool. Leases left from a previous run are released at
// Open (one node owns the directory, enforced with flock); their fencing
// tokens are kept, so tokens increase across restarts.
//
// Lease times are the callers' now. Renew needs a lease that is still live at
// now; Complete and More only need the token to be current (nobody claimed the
// domain since): the fencing token, not the clock, guards the outcome write.
//
// Limits: Claim, More and List take at most 1000 rows (100 when limit <= 0).
// The List cursor is Cursor(last delivery), i.e. "<id> <domain>".
package embedded

import (
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	_ "modernc.org/sqlite" // driver "sqlite"

	"backupmx/internal/store"
	"backupmx/internal/store/embedded/safefile"
)

// ErrClosed is returned by operations on a closed Store.
var ErrClosed = errors.New("embedded: store closed")

// Option configures Open.
type Option func(*options)

type options struct {
	logger   *slog.Logger
	maxBatch int
	delay    time.Duration
	smallMax int64
	segMax   int64
}

// DefaultCommitDelay is the default longest wait of a group commit for
// messages on their way (WithCommitDelay).
const DefaultCommitDelay = 2 * time.Millisecond

// WithCommitDelay sets how long, at most, a group commit waits for the
// messages whose Enqueue has started and not yet reached it (default
// DefaultCommitDelay; 0 commits at once). A commit with none on their way
// does not wait.
func WithCommitDelay(d time.Duration) Option { return func(o *options) { o.delay = max(d, 0) } }

// DefaultSmallMax is the default small-body threshold (WithSmallMax).
const DefaultSmallMax = 64 << 10

// WithLogger sets the logger for the sweep and other rare events.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithMaxBatch caps how many writes one group commit carries (default 512).
func WithMaxBatch(n int) Option { return func(o *options) { o.maxBatch = n } }

// WithSmallMax sets the largest body, in bytes, appended to a segment and
// made durable by its group's commit (default DefaultSmallMax); larger
// bodies are files. 0 (or less) makes every body a file. Each Enqueue holds
// up to n+1 bytes in memory.
func WithSmallMax(n int64) Option { return func(o *options) { o.smallMax = max(n, 0) } }

// WithSegmentSize sets the size past which appends move to a new segment
// (default 64 MiB).
func WithSegmentSize(n int64) Option { return func(o *options) { o.segMax = max(n, segAlign) } }

// Store is the embedded engine. It implements store.Store.
type Store struct {
	dir    string
	log    *slog.Logger
	wdb    *sql.DB // one connection, used only by the writer goroutine
	rdb    *sql.DB // read-only pool
	rst    *rstmts // prepared on rdb
	lockFD *os.File

	smallMax     int64     // bodies of at most this many bytes go in segments
	bufs         sync.Pool // *[]byte of cap smallMax+1, Enqueue's read buffers
	segs         *segments
	legacyBodies bool // the bodies table had rows at Open

	w *writer

	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

const schema = `
CREATE TABLE IF NOT EXISTS messages (
	id       TEXT PRIMARY KEY,
	envelope TEXT NOT NULL,   -- JSON store.Envelope without Domains
	size     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
	id           TEXT NOT NULL,
	domain       TEXT NOT NULL,
	recipients   TEXT NOT NULL,  -- JSON []store.Recipient
	attempts     INTEGER NOT NULL DEFAULT 0,
	next_attempt INTEGER NOT NULL, -- unix nanoseconds
	last_error   TEXT NOT NULL DEFAULT '',
	held         INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (id, domain)
) WITHOUT ROWID;
-- Claim, NextDue: due unheld work in time order (covering: the PK is in it).
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (held, next_attempt);
-- Claim/More within a domain, Waiting, Flush/Hold by domain.
CREATE INDEX IF NOT EXISTS deliveries_domain ON deliveries (domain, held, next_attempt);
CREATE TABLE IF NOT EXISTS leases (
	domain  TEXT PRIMARY KEY,
	owner   TEXT NOT NULL,    -- '' when released
	token   INTEGER NOT NULL, -- fencing token, never reset
	expires INTEGER NOT NULL  -- unix nanoseconds; 0 when released
) WITHOUT ROWID;
-- Claim: the live leases, without reading every domain ever leased.
CREATE INDEX IF NOT EXISTS leases_live ON leases (expires);
-- Where each small body is: segment number, offset, length. A row exists
-- exactly while its messages row does (same transactions).
CREATE TABLE IF NOT EXISTS segbodies (
	id  TEXT PRIMARY KEY,
	seg INTEGER NOT NULL,
	off INTEGER NOT NULL,
	len INTEGER NOT NULL
) WITHOUT ROWID;
-- Is a segment still used (removal of empty segments, the sweep), and
-- where are the gaps between its bodies (reclaim)?
CREATE INDEX IF NOT EXISTS segbodies_seg ON segbodies (seg, off, len);
-- Small bodies of stores written before segments: read and removed, no
-- longer written.
CREATE TABLE IF NOT EXISTS bodies (
	id   TEXT PRIMARY KEY,
	data BLOB NOT NULL
);
`

// Open opens (creating if needed) the store in dir, sweeps orphaned body
// files, and starts the writer.
func Open(dir string, opts ...Option) (*Store, error) {
	o := options{logger: slog.New(slog.DiscardHandler), maxBatch: 512, delay: DefaultCommitDelay, smallMax: DefaultSmallMax, segMax: defaultSegMax}
	for _, opt := range opts {
		opt(&o)
	}
	if o.maxBatch < 1 {
		o.maxBatch = 1
	}
	s := &Store{dir: dir, log: o.logger, smallMax: o.smallMax}
	s.bufs.New = func() any {
		b := make([]byte, s.smallMax+1)
		return &b
	}
	if err := s.open(o); err != nil {
		s.closeAll()
		return nil, err
	}
	return s, nil
}

func (s *Store) open(o options) error {
	for _, d := range []string{s.dir, filepath.Join(s.dir, "tmp"), filepath.Join(s.dir, "bodies")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	lf, err := os.OpenFile(filepath.Join(s.dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	s.lockFD = lf
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("embedded: %s is in use by another process: %w", s.dir, err)
	}
	for i := range 256 {
		if err := os.MkdirAll(filepath.Join(s.dir, "bodies", fmt.Sprintf("%02x", i)), 0o700); err != nil {
			return err
		}
	}
	if err := safefile.SyncDir(filepath.Join(s.dir, "bodies")); err != nil {
		return err
	}
	if err := safefile.SyncDir(s.dir); err != nil {
		return err
	}

	path := filepath.Join(s.dir, "index.db")
	s.wdb, err = sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_txlock=immediate")
	if err != nil {
		return err
	}
	s.wdb.SetMaxOpenConns(1)
	s.wdb.SetConnMaxIdleTime(0)
	s.wdb.SetConnMaxLifetime(0)
	if _, err := s.wdb.Exec(schema); err != nil {
		return fmt.Errorf("embedded: schema: %w", err)
	}
	// A previous run's leases belong to a process that is gone.
	if _, err := s.wdb.Exec(`UPDATE leases SET owner = '', expires = 0 WHERE expires != 0`); err != nil {
		return err
	}
	s.rdb, err = sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)&_pragma=query_only(1)")
	if err != nil {
		return err
	}
	s.rdb.SetMaxOpenConns(8)
	s.rdb.SetMaxIdleConns(8)
	if s.rst, err = prepareReaders(s.rdb); err != nil {
		return err
	}
	if err := s.sweep(); err != nil {
		return err
	}
	if err := s.rst.hasBodies.QueryRow().Scan(&s.legacyBodies); err != nil {
		return err
	}
	s.segs, err = openSegments(filepath.Join(s.dir, "segments"), o.segMax, s.log, storeIndex{s.rst})
	if err != nil {
		return err
	}
	s.w, err = newWriter(s.wdb, o.maxBatch, o.delay)
	return err
}

// sweep removes leftover temporary files and body files that have no row.
func (s *Store) sweep() error {
	tmp := filepath.Join(s.dir, "tmp")
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(tmp, e.Name())); err != nil {
			return err
		}
	}
	orphans := 0
	for i := range 256 {
		shard := filepath.Join(s.dir, "bodies", fmt.Sprintf("%02x", i))
		n, err := s.sweepShard(shard)
		orphans += n
		if err != nil {
			return err
		}
	}
	if len(ents) > 0 || orphans > 0 {
		s.log.Info("store sweep", "tmp_removed", len(ents), "orphan_bodies_removed", orphans)
	}
	return nil
}

func (s *Store) sweepShard(shard string) (int, error) {
	d, err := os.Open(shard)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	removed := 0
	for {
		names, err := d.Readdirnames(1024)
		for _, name := range names {
			var one int
			err := s.rst.hasMessage.QueryRow(name).Scan(&one)
			if errors.Is(err, sql.ErrNoRows) {
				s.log.Warn("store sweep: body without row", "id", name)
				if err := os.Remove(filepath.Join(shard, name)); err != nil {
					return removed, err
				}
				removed++
				continue
			}
			if err != nil {
				return removed, err
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return removed, nil
			}
			return removed, err
		}
	}
}

// storeIndex answers the segments' questions from the read pool.
type storeIndex struct{ st *rstmts }

func (x storeIndex) used(n uint64) (bool, error) {
	var one int
	err := x.st.segUsed.QueryRow(int64(n)).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

func (x storeIndex) live(n uint64) ([]segRef, error) {
	rows, err := x.st.segLive.Query(int64(n))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var refs []segRef
	for rows.Next() {
		r := segRef{seg: n}
		if err := rows.Scan(&r.off, &r.len); err != nil {
			return nil, err
		}
		refs = append(refs, r)
	}
	return refs, rows.Err()
}

// Dir is the directory the store lives in.
func (s *Store) Dir() string { return s.dir }

// Close waits for pending writes, then closes the store. It is safe to call
// more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.closeAll() })
	return s.closeErr
}

func (s *Store) closeAll() error {
	var errs []error
	if s.w != nil {
		errs = append(errs, s.w.close())
	}
	if s.segs != nil {
		s.segs.close()
	}
	if s.rst != nil {
		s.rst.close()
	}
	if s.rdb != nil {
		errs = append(errs, s.rdb.Close())
	}
	if s.wdb != nil {
		errs = append(errs, s.wdb.Close())
	}
	if s.lockFD != nil {
		errs = append(errs, s.lockFD.Close()) // releases the flock
	}
	return errors.Join(errs...)
}

// bodyPath is where the body of message id lives. Ids are validated by
// checkID, so they are safe file names.
func (s *Store) bodyPath(id string) string {
	h := fnv.New32a()
	h.Write([]byte(id))
	return filepath.Join(s.dir, "bodies", fmt.Sprintf("%02x", h.Sum32()&0xff), id)
}

// checkID accepts ids that are safe as file names: 1–128 characters of
// [A-Za-z0-9_.-], not starting with a dot.
func checkID(id string) error {
	if id == "" || len(id) > 128 || id[0] == '.' {
		return fmt.Errorf("embedded: invalid queue id %q", id)
	}
	for _, c := range []byte(id) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
		default:
			return fmt.Errorf("embedded: invalid queue id %q", id)
		}
	}
	return nil
}
