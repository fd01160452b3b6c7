// Package postgres is the store engine for several nodes sharing one queue
// in PostgreSQL (pgx v5 connection pool).
//
// Tables (schema applied at Open, see migrations):
//
//	messages     id, envelope (JSON, without Domains), size, chunks
//	body_chunks  message_id, seq, data: the body in ~1 MiB bytea chunks
//	deliveries   id, domain, recipients (JSON), attempts, next_attempt, last_error, held
//	leases       one row per destination domain with mail: owner, token, expires
//
// Invariants:
//
//   - A message, its body chunks and its deliveries are written in one
//     transaction: Enqueue returns only after COMMIT (synchronous_commit is
//     forced on unless the DSN sets it), so an acknowledged message is as
//     durable as the database makes a commit. The body is streamed in
//     chunks both ways; no call holds more than one chunk of it in memory.
//   - Work is claimed per domain: Claim locks the domain's leases row with
//     FOR UPDATE SKIP LOCKED, so two nodes claiming at once never get the
//     same domain, and gives it a fencing token from one global sequence,
//     so tokens only ever grow. Every write under a lease (Complete, Renew,
//     ReleaseLease) checks owner and token in the same transaction while
//     holding the leases row, so once a newer owner has the domain, an old
//     holder's writes are refused with store.ErrLeaseLost and change nothing.
//
// Clocks. Schedules (NextAttempt, Flush, Unhold, Waiting, due-ness in
// Claim/More) always use the now the caller passes, so a node's scheduler
// and its fake clock in tests agree. Lease times come from the database clock
// by default (DatabaseClock: expires = now() + ttl, compared with now()), so
// nodes with skewed clocks can't steal each other's leases; CallerClock takes
// them from the caller's now instead, which is what a conformance suite
// driving a fake clock needs. A lease whose time ran out but that nobody has
// taken over still accepts Complete (the token check alone fences: recording
// a finished delivery then saves a duplicate); Renew needs it unexpired.
//
// When the database is unreachable every call returns an error (never a
// success it could not make durable); the pool reconnects by itself when it
// is back, following target_session_attrs=read-write in multi-host DSNs.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"backupmx/internal/store"
)

// LeaseClock says whose clock times leases.
type LeaseClock int

const (
	// DatabaseClock: lease expiry is the database's now() + ttl (default).
	DatabaseClock LeaseClock = iota
	// CallerClock: lease expiry is the caller's now + ttl (tests, one node).
	CallerClock
)

// Options configures Open. The zero value is the production setting.
type Options struct {
	Logger     *slog.Logger
	LeaseClock LeaseClock
	// ChunkSize is the body chunk size in bytes (default 1 MiB).
	ChunkSize int
}

// KickChannel is the LISTEN/NOTIFY channel that Flush, Unhold and Kick
// notify: a hint that there may be work due now.
const KickChannel = "backupmx_kick"

const (
	defaultChunk    = 1 << 20
	defaultMaxConns = 16
	defaultTimeout  = 10 * time.Second
	migrationLockID = 0x6261636b75706d78 // "backupmx"
)

// Store is the PostgreSQL engine. It implements store.Store.
type Store struct {
	pool        *pgxpool.Pool
	log         *slog.Logger
	callerClock bool
	chunk       int
	closeOnce   sync.Once
}

var _ store.Store = (*Store)(nil)

// Open connects to dsn and brings the schema up to date. Unless the DSN says
// otherwise, the pool holds up to 16 connections, connecting times out after
// 10 s, and sessions run with synchronous_commit=on and application_name
// backupmx.
func Open(ctx context.Context, dsn string, o Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if !strings.Contains(dsn, "pool_max_conns") {
		cfg.MaxConns = defaultMaxConns
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = defaultTimeout
	}
	rp := cfg.ConnConfig.RuntimeParams
	if _, ok := rp["synchronous_commit"]; !ok {
		rp["synchronous_commit"] = "on"
	}
	if _, ok := rp["application_name"]; !ok {
		rp["application_name"] = "backupmx"
	}
	s := &Store{log: o.Logger, callerClock: o.LeaseClock == CallerClock, chunk: o.ChunkSize}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.chunk <= 0 {
		s.chunk = defaultChunk
	}
	s.pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := s.migrate(ctx); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("postgres: schema: %w", err)
	}
	return s, nil
}

// Close closes the pool. It may be called more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(s.pool.Close)
	return nil
}

// migrations[i] brings the schema from version i to i+1. Append only.
var migrations = []string{
	// 1: the queue.
	`
CREATE SEQUENCE lease_tokens;
CREATE TABLE messages (
	id       text COLLATE "C" PRIMARY KEY,
	envelope text NOT NULL,     -- JSON store.Envelope without Domains
	size     bigint NOT NULL,
	chunks   integer NOT NULL   -- body_chunks rows, seq 0..chunks-1
);
CREATE TABLE body_chunks (
	message_id text COLLATE "C" NOT NULL
		REFERENCES messages (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
	seq        integer NOT NULL,
	data       bytea NOT NULL,
	PRIMARY KEY (message_id, seq)
);
CREATE TABLE deliveries (
	id           text COLLATE "C" NOT NULL
		REFERENCES messages (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
	domain       text COLLATE "C" NOT NULL,
	recipients   text NOT NULL,    -- JSON []store.Recipient
	attempts     integer NOT NULL DEFAULT 0,
	next_attempt bigint NOT NULL,  -- unix nanoseconds
	last_error   text NOT NULL DEFAULT '',
	held         boolean NOT NULL DEFAULT false,
	PRIMARY KEY (id, domain)
);
-- Claim and NextDue (earliest unheld per domain, walking leases), More,
-- Waiting, Flush and Hold by domain. Deliberately no index on next_attempt
-- alone: the planner would prefer it for "earliest of this domain" and then
-- walk other domains' work.
CREATE INDEX deliveries_ready ON deliveries (domain, next_attempt, id) WHERE NOT held;
-- List by domain.
CREATE INDEX deliveries_domain ON deliveries (domain, id);
-- Unhold: held deliveries are few.
CREATE INDEX deliveries_held ON deliveries (domain, id) WHERE held;
-- Every domain that has a delivery has a row here (Enqueue adds it;
-- ReleaseLease removes it once the domain has no delivery left: see
-- domainLock in queue.go).
CREATE TABLE leases (
	domain  text COLLATE "C" PRIMARY KEY,
	owner   text NOT NULL DEFAULT '',  -- '' when free
	token   bigint NOT NULL DEFAULT 0, -- fencing token, from lease_tokens
	expires bigint NOT NULL DEFAULT 0  -- unix nanoseconds; 0 when free
);
`,
}

// migrate applies the missing migrations in one transaction under an
// advisory lock, so nodes starting together apply each exactly once.
func (s *Store) migrate(ctx context.Context) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLockID)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)`); err != nil {
			return err
		}
		var v int
		err := tx.QueryRow(ctx, `SELECT version FROM schema_version`).Scan(&v)
		if errors.Is(err, pgx.ErrNoRows) {
			_, err = tx.Exec(ctx, `INSERT INTO schema_version (version) VALUES (0)`)
		}
		if err != nil {
			return err
		}
		if v > len(migrations) {
			return fmt.Errorf("database schema version %d is newer than this build's %d", v, len(migrations))
		}
		for i := v; i < len(migrations); i++ {
			if _, err := tx.Exec(ctx, migrations[i]); err != nil {
				return fmt.Errorf("migration %d: %w", i+1, err)
			}
			s.log.Info("store schema migrated", "version", i+1)
		}
		_, err = tx.Exec(ctx, `UPDATE schema_version SET version = $1`, len(migrations))
		return err
	})
}

// Kick notifies KickChannel: other nodes listening should look for due work.
func (s *Store) Kick(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, `SELECT pg_notify($1, '')`, KickChannel)
	return err
}

// Notifications delivers a value whenever some node kicked (Flush, Unhold or
// Kick), and once after each (re)connection of its listening session, since
// kicks may have been missed meanwhile. It is a hint: polling stays the
// truth. The channel is closed when ctx is done.
func (s *Store) Notifications(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	kick := func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	go func() {
		defer close(ch)
		backoff := 100 * time.Millisecond
		for ctx.Err() == nil {
			err := s.listen(ctx, kick)
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("store notification session lost", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
		}
	}()
	return ch
}

// listen holds one LISTEN session until it fails or ctx is done.
func (s *Store) listen(ctx context.Context, kick func()) error {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+KickChannel); err != nil {
		return err
	}
	kick()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		kick()
	}
}

// tx runs fn in a transaction, again (up to twice more) if the database
// aborted it for a deadlock or serialization failure.
func (s *Store) tx(ctx context.Context, fn func(pgx.Tx) error) error {
	for attempt := 0; ; attempt++ {
		err := pgx.BeginFunc(ctx, s.pool, fn)
		var pe *pgconn.PgError
		if attempt < 2 && errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001") {
			continue
		}
		return err
	}
}
