package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"backupmx/internal/store"
)

const insertChunk = `INSERT INTO body_chunks (message_id, seq, data) VALUES ($1, $2, $3)`

// readChunk fills buf (reused: it grows only as far as the body needs, up
// to one chunk) with the body's next chunk; eof says the body ended.
func (s *Store) readChunk(body io.Reader, buf []byte) (_ []byte, eof bool, _ error) {
	buf = buf[:0]
	for len(buf) < s.chunk {
		if len(buf) == cap(buf) {
			buf = append(make([]byte, 0, min(max(2*cap(buf), 32<<10), s.chunk)), buf...)
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return buf, true, nil
		}
		if err != nil {
			return buf, false, err
		}
	}
	return buf, false, nil
}

// writeChunks streams the rest of body into body_chunks under tx, one chunk
// at a time from seq on, reusing buf, and returns the size written and the
// next seq.
func (s *Store) writeChunks(ctx context.Context, tx pgx.Tx, id string, body io.Reader, buf []byte, seq int) (int64, int, error) {
	var total int64
	for {
		var (
			eof bool
			err error
		)
		buf, eof, err = s.readChunk(body, buf)
		if err != nil {
			return 0, 0, err
		}
		if len(buf) > 0 {
			if _, err := tx.Exec(ctx, insertChunk, id, seq, buf); err != nil {
				return 0, 0, err
			}
			seq++
			total += int64(len(buf))
		}
		if eof {
			return total, seq, nil
		}
	}
}

// Body implements store.Store. The reader fetches one chunk per query, so a
// slow reader holds no connection and no more than one chunk of memory. If
// the message is removed while it is being read, the read fails.
func (s *Store) Body(ctx context.Context, id string) (io.ReadCloser, error) {
	var chunks int
	err := s.pool.QueryRow(ctx, `SELECT chunks FROM messages WHERE id = $1`, id).Scan(&chunks)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return &bodyReader{ctx: ctx, s: s, id: id, chunks: chunks}, nil
}

type bodyReader struct {
	ctx    context.Context
	s      *Store
	id     string
	chunks int // how many there are
	next   int // the next one to fetch
	buf    []byte
	off    int
	closed bool
}

func (r *bodyReader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, errors.New("postgres: read from a closed body")
	}
	for r.off == len(r.buf) {
		if r.next == r.chunks {
			return 0, io.EOF
		}
		if err := r.fetch(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.buf[r.off:])
	r.off += n
	return n, nil
}

// fetch replaces buf with chunk r.next, reusing buf's memory.
func (r *bodyReader) fetch() error {
	rows, err := r.s.pool.Query(r.ctx, `SELECT data FROM body_chunks WHERE message_id = $1 AND seq = $2`, r.id, r.next)
	if err != nil {
		return err
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return fmt.Errorf("postgres: body of %s: chunk %d is gone (message removed while read): %w", r.id, r.next, store.ErrNotFound)
	}
	var data pgtype.DriverBytes // valid until rows.Next/Close: copied out at once
	if err := rows.Scan(&data); err != nil {
		return err
	}
	r.buf = append(r.buf[:0], data...)
	r.off = 0
	r.next++
	rows.Close()
	return rows.Err()
}

func (r *bodyReader) Close() error {
	r.closed = true
	r.buf = nil
	return nil
}
