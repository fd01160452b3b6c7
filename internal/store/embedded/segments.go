package embedded

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"backupmx/internal/store"
	"backupmx/internal/store/embedded/safefile"
)

// Small bodies live in segment files: segments/<16 hex digits>, numbered
// upwards, each appended to until it passes its size and never appended to
// again (nor after a restart: Open starts a new one). A segment's blocks
// are allocated when it is created, ahead of need (the spare). A body is
// written at a block-aligned offset by the goroutine that received it,
// concurrently with the others; the writer fdatasyncs each segment its group
// appended to before the COMMIT that adds the segbodies rows pointing there,
// so a row never points at bytes that are not durable. A segment is
// unlinked once it takes no appends and no row points into it; one that
// keeps some bodies long has the space between them punched out, in bulk
// (reclaim). The SQLite WAL carries only the small rows, not the bodies
// (each 10 KB body cost three WAL frames written at commit and copied again
// at checkpoint).

const (
	segAlign      = 4096     // file-system block: a freed body's blocks go back whole
	defaultSegMax = 64 << 20 // largest segment
	firstSegSize  = 1 << 20  // first segment after Open; each next one is twice the last, up to the largest
)

func alignUp(n int64) int64 { return (n + segAlign - 1) &^ (segAlign - 1) }

// segRef is where one body lives.
type segRef struct {
	id       string
	seg      uint64
	off, len int64
}

// segments hands out space in the current segment and frees it again.
type segments struct {
	dir   string
	max   int64
	log   *slog.Logger
	index segIndex

	mu        sync.Mutex
	cur       *segment            // nil until the first append after Open
	spare     *segment            // prepared to be the next cur, or nil
	preparing chan struct{}       // closed when the spare being prepared is ready
	next      uint64              // number of the next segment to create
	live      map[uint64]*segment // cur, and older segments with appends not settled
	freed     map[uint64]*freedSpace
	closed    bool

	reclaims      chan uint64 // segments to reclaim; 0 is a barrier (tests)
	barrier       chan struct{}
	reclaimerDone chan struct{}
}

// segIndex is what segments ask the index.
type segIndex interface {
	// used reports whether any row points into seg.
	used(seg uint64) (bool, error)
	// live lists the bodies in seg, by offset.
	live(seg uint64) ([]segRef, error)
}

// segment is an open segment file. Its descriptor stays open while it takes
// appends or has appends not yet settled.
type segment struct {
	n       uint64
	f       *os.File
	fd      int
	cap     int64 // appends move to the next segment past this size
	size    int64 // end of the space handed out so far (cur only)
	pending int   // appends handed out and not yet settled; under segments.mu
}

// Sync makes the segment's data durable (the writer calls it before a
// commit whose rows point into the segment).
func (sg *segment) Sync() error { return fdatasync(sg.fd) }

// openSegments scans dir: segments no row points into (left by a crash
// between an append and its commit, or between a removal's commit and the
// unlink, and the previous run's spare) are removed; the others are handed
// to the reclaimer, which gives back, in the background, the space between
// and after their bodies (the tail of the previous run's current segment,
// what was freed since the last reclaim). Appends go to a new segment.
func openSegments(dir string, segMax int64, log *slog.Logger, index segIndex) (*segments, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	s := &segments{dir: dir, max: segMax, log: log, index: index, next: 1, live: map[uint64]*segment{}, freed: map[uint64]*freedSpace{}}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	removed := 0
	var used []uint64
	for i, e := range ents {
		n, err := strconv.ParseUint(e.Name(), 16, 64)
		if err != nil || len(e.Name()) != 16 {
			continue
		}
		s.next = max(s.next, n+1)
		inUse, err := index.used(n)
		if err != nil {
			return nil, err
		}
		if inUse {
			used = append(used, n)
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			return nil, err
		}
		if i < len(ents)-1 { // the last one is normally the spare
			removed++
		}
	}
	if removed > 0 {
		s.log.Info("store sweep", "unused_segments_removed", removed)
	}
	s.reclaims = make(chan uint64, max(reclaimQueue, len(used)))
	s.barrier = make(chan struct{})
	s.reclaimerDone = make(chan struct{})
	for _, n := range used {
		f := &freedSpace{queued: true}
		if fi, err := os.Stat(s.path(n)); err == nil {
			f.size = fi.Size()
		}
		s.freed[n] = f
		s.reclaims <- n
	}
	go s.reclaimer()
	return s, nil
}

// reclaimQueue is how many segments may wait for the reclaimer; beyond, a
// segment waits for its next free.
const reclaimQueue = 4096

func (s *segments) path(n uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%016x", n))
}

// append writes data at a new block-aligned offset of the current segment,
// without syncing. The caller must settle it once its commit is decided.
func (s *segments) append(data []byte) (*segment, int64, error) {
	alen := alignUp(int64(len(data)))
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, 0, ErrClosed
	}
	var retired *segment
	if s.cur == nil || (s.cur.size > 0 && s.cur.size+alen > s.cur.cap) {
		var err error
		if retired, err = s.rotateLocked(); err != nil {
			s.mu.Unlock()
			return nil, 0, err
		}
	}
	sg := s.cur
	off := sg.size
	sg.size += alen
	sg.pending++
	s.mu.Unlock()
	if retired != nil {
		s.retire(retired)
	}
	if _, err := sg.f.WriteAt(data, off); err != nil {
		s.settle(sg, off, int64(len(data)), false)
		return nil, 0, err
	}
	return sg, off, nil
}

// rotateLocked makes the spare segment current (or, if it is not ready,
// creates one now), starts preparing the next spare, and returns the
// previous segment if nothing is pending on it. Segments start small after
// Open (a store that takes a few messages holds a few MiB) and double.
func (s *segments) rotateLocked() (*segment, error) {
	sg := s.spare
	s.spare = nil
	if sg == nil {
		size := min(firstSegSize, s.max)
		if s.cur != nil {
			size = min(2*s.cur.cap, s.max)
		}
		var err error
		if sg, err = s.create(s.next, size); err != nil {
			return nil, err
		}
		s.next++
	}
	old := s.cur
	s.cur = sg
	s.live[sg.n] = sg
	if s.preparing == nil {
		n := s.next
		s.next++
		done := make(chan struct{})
		s.preparing = done
		go s.prepare(n, min(2*sg.cap, s.max), done)
	}
	if old != nil && old.pending == 0 {
		delete(s.live, old.n)
		return old, nil
	}
	return nil, nil
}

// prepare creates segment n as the spare: its creation (a directory fsync)
// is off the appends' path.
func (s *segments) prepare(n uint64, size int64, done chan struct{}) {
	defer close(done)
	sg, err := s.create(n, size)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.preparing = nil
	switch {
	case err != nil:
		s.log.Warn("store: preparing a segment failed", "segment", n, "err", err)
	case s.closed:
		sg.f.Close()
	default:
		s.spare = sg
	}
}

// create makes segment n, its blocks allocated (fallocate) and its name
// durable. Appends to allocated blocks cost each group's fdatasync less
// than appends that grow the file; filling segments with zeros instead
// cost more (the zeros are written, and synced, before the bodies are).
func (s *segments) create(n uint64, size int64) (*segment, error) {
	f, err := os.OpenFile(s.path(n), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*segment, error) {
		f.Close()
		os.Remove(s.path(n))
		return nil, err
	}
	_ = preallocate(int(f.Fd()), size) // best effort: without it the file grows
	if err := safefile.SyncDir(s.dir); err != nil {
		return fail(err)
	}
	return &segment{n: n, f: f, fd: int(f.Fd()), cap: size}, nil
}

// settle ends an append: committed says whether a row now points at it. An
// append that was not committed has its space given back.
func (s *segments) settle(sg *segment, off, n int64, committed bool) {
	if !committed && n > 0 {
		_ = punchHole(sg.fd, off, alignUp(n)) // best effort: the segment goes when empty
	}
	s.mu.Lock()
	sg.pending--
	done := sg != s.cur && sg.pending == 0
	if done {
		delete(s.live, sg.n)
	}
	s.mu.Unlock()
	if done {
		s.retire(sg)
	}
}

// retire closes a segment that takes no more appends and removes it if no
// row points into it.
func (s *segments) retire(sg *segment) {
	sg.f.Close()
	if !s.removeIfUnused(sg.n) {
		s.mu.Lock()
		s.reclaimLocked(sg.n) // what was freed while it took appends
		s.mu.Unlock()
	}
}

// removeIfUnused unlinks segment n if it takes no appends (nor will again:
// only the current segment does) and no row points into it, and reports
// whether n is gone.
func (s *segments) removeIfUnused(n uint64) bool {
	s.mu.Lock()
	_, live := s.live[n]
	s.mu.Unlock()
	if live {
		return false
	}
	used, err := s.index.used(n)
	if err != nil {
		s.log.Warn("store: segment check failed", "segment", n, "err", err)
		return false
	}
	if used {
		return false
	}
	if err := os.Remove(s.path(n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("store: segment removal failed", "segment", n, "err", err)
		return false
	}
	return true
}

// free is told of bodies whose rows are committed as removed: segments left
// unused are unlinked, and a segment that still holds bodies has the space
// between them given back once a quarter of it is freed (reclaim). Punching
// each body out as it goes cost more than the delivery (an extent split
// and page-cache work per body: BenchmarkDrain 4.6× slower), and most
// segments empty out whole and are simply unlinked.
func (s *segments) free(refs []segRef) {
	freed := make(map[uint64]int64)
	for _, r := range refs {
		freed[r.seg] += alignUp(r.len)
	}
	for n, b := range freed {
		if s.removeIfUnused(n) {
			s.mu.Lock()
			delete(s.freed, n)
			s.mu.Unlock()
			continue
		}
		s.mu.Lock()
		f := s.freed[n]
		if f == nil {
			f = &freedSpace{}
			if fi, err := os.Stat(s.path(n)); err == nil {
				f.size = fi.Size()
			}
			s.freed[n] = f
		}
		f.bytes += b
		s.reclaimLocked(n)
		s.mu.Unlock()
	}
}

// reclaimLocked hands segment n to the reclaimer if a quarter of it was
// freed since its last reclaim (and it is not queued already, or closing).
// With the queue full it waits for the next free.
func (s *segments) reclaimLocked(n uint64) {
	f := s.freed[n]
	if f == nil || f.queued || f.bytes < f.size/4 || s.closed {
		return
	}
	select {
	case s.reclaims <- n:
		f.queued = true
	default:
	}
}

// freedSpace is what was freed in a segment since it was last reclaimed.
type freedSpace struct {
	bytes, size int64
	queued      bool // handed to the reclaimer
}

// reclaimer gives back, one segment at a time, the space between the bodies
// still in a segment (one hole per gap, however many bodies went). A
// segment that takes appends, or has appends not settled, is skipped: the
// space of an append not yet committed looks like a gap. Once a segment is
// neither, rows are only ever removed from it, so gaps only grow.
func (s *segments) reclaimer() {
	defer close(s.reclaimerDone)
	for n := range s.reclaims {
		if n == 0 {
			s.barrier <- struct{}{}
			continue
		}
		s.mu.Lock()
		_, live := s.live[n]
		if f := s.freed[n]; f != nil {
			f.queued = false
			if !live {
				f.bytes = 0
			}
		}
		s.mu.Unlock()
		if live {
			continue
		}
		if err := s.reclaim(n); err != nil {
			s.log.Warn("store: segment reclaim failed", "segment", n, "err", err)
		}
	}
}

func (s *segments) reclaim(n uint64) error {
	bodies, err := s.index.live(n)
	if err != nil {
		return err
	}
	return punchGaps(s.path(n), bodies)
}

// punchGaps gives back the space of file p outside the bodies keep (sorted
// by offset). A file that is gone needs nothing.
func punchGaps(p string, keep []segRef) error {
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	var at int64 // start of the current gap
	for _, b := range append(keep, segRef{off: fi.Size()}) {
		if b.off > at {
			_ = punchHole(int(f.Fd()), at, b.off-at) // best effort, as every punch
		}
		at = max(at, alignUp(b.off+b.len))
	}
	return nil
}

// drainReclaims waits until the reclaims asked for so far are done (tests).
func (s *segments) drainReclaims() {
	s.reclaims <- 0
	<-s.barrier
}

// reader opens a body for reading.
func (s *segments) reader(r segRef) (io.ReadCloser, error) {
	f, err := os.Open(s.path(r.seg))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return &segReader{SectionReader: io.NewSectionReader(f, r.off, r.len), f: f}, nil
}

type segReader struct {
	*io.SectionReader
	f *os.File
}

func (r *segReader) Close() error { return r.f.Close() }

// readAll reads the bodies refs point at, opening each segment once. A
// body whose segment is gone (removed meanwhile) is left out.
func (s *segments) readAll(refs []segRef, out map[string][]byte) error {
	files := make(map[uint64]*os.File)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, r := range refs {
		f, ok := files[r.seg]
		if !ok {
			var err error
			f, err = os.Open(s.path(r.seg))
			if errors.Is(err, fs.ErrNotExist) {
				files[r.seg] = nil
				continue
			}
			if err != nil {
				return err
			}
			files[r.seg] = f
		}
		if f == nil {
			continue
		}
		b := make([]byte, r.len)
		if _, err := f.ReadAt(b, r.off); err != nil {
			return fmt.Errorf("embedded: body %s in segment %d: %w", r.id, r.seg, err)
		}
		out[r.id] = b
	}
	return nil
}

// close closes the open segments (after the writer has stopped). The
// current one's unused tail is given back; a spare is left for the next
// Open's sweep.
func (s *segments) close() {
	s.mu.Lock()
	s.closed = true
	close(s.reclaims)
	preparing := s.preparing
	s.mu.Unlock()
	<-s.reclaimerDone
	if preparing != nil {
		<-preparing
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil {
		if fi, err := s.cur.f.Stat(); err == nil && fi.Size() > s.cur.size {
			_ = punchHole(s.cur.fd, s.cur.size, fi.Size()-s.cur.size)
		}
	}
	for _, sg := range s.live {
		sg.f.Close()
	}
	if s.spare != nil {
		s.spare.f.Close()
	}
	s.live = map[uint64]*segment{}
	s.cur, s.spare = nil, nil
}

// idle waits until no spare is being prepared (tests).
func (s *segments) idle() {
	s.mu.Lock()
	p := s.preparing
	s.mu.Unlock()
	if p != nil {
		<-p
	}
}
