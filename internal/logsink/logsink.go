// Package logsink hands log lines to their file or pipe from a goroutine of
// its own, so that a connection logging a line does not wait for a write
// system call. Under load the lines that arrive while one write is under
// way go out together in the next: at a few thousand messages a second the
// server writes its log in a few hundred calls instead of one per line.
//
// A line is handed over at once when nothing is being written, so an idle
// server's log is as current as with direct writes; lines not yet written
// when the process is killed (kill -9, a crash) are lost, as are those a
// blocked direct write would have been stuck in. What is pending is
// bounded: past MaxPending bytes, Write waits until the goroutine has taken
// them, as a direct write to a full pipe would.
package logsink

import (
	"io"
	"sync"
)

// MaxPending is how many bytes may wait to be written before Write waits.
const MaxPending = 1 << 20

// Writer is an io.Writer whose writes reach out from its own goroutine, in
// the order they were made. Close writes what is left and stops it.
type Writer struct {
	out  io.Writer
	wake chan struct{} // one token when writing turns true
	done chan struct{} // closed when the goroutine has ended

	mu      sync.Mutex
	taken   sync.Cond // broadcast when pending is taken or writing ends
	pending []byte    // written to w, not yet to out
	writing bool      // the goroutine has pending to write (or is writing)
	closed  bool
}

// New starts a Writer that writes to out.
func New(out io.Writer) *Writer {
	w := &Writer{out: out, wake: make(chan struct{}, 1), done: make(chan struct{})}
	w.taken.L = &w.mu
	go w.run()
	return w
}

// Write queues a copy of p for writing and returns; it reports no error
// from out (slog drops them too). After Close it writes to out directly.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	for len(w.pending) >= MaxPending && !w.closed {
		w.taken.Wait()
	}
	if w.closed {
		w.mu.Unlock()
		return w.out.Write(p)
	}
	w.pending = append(w.pending, p...)
	kick := !w.writing
	w.writing = true
	w.mu.Unlock()
	if kick {
		w.wake <- struct{}{} // never blocks: one token per false→true
	}
	return len(p), nil
}

func (w *Writer) run() {
	defer close(w.done)
	var buf []byte
	for range w.wake {
		for {
			w.mu.Lock()
			if len(w.pending) == 0 {
				w.writing = false
				w.taken.Broadcast()
				w.mu.Unlock()
				break
			}
			buf, w.pending = w.pending, buf[:0]
			w.taken.Broadcast()
			w.mu.Unlock()
			_, _ = w.out.Write(buf)
			if cap(buf) > MaxPending { // a burst's buffer is not kept
				buf = nil
			}
		}
	}
}

// Close writes what is pending, stops the goroutine, and makes later
// writes go to out directly. It does not close out.
func (w *Writer) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	for w.writing {
		w.taken.Wait()
	}
	w.closed = true
	w.taken.Broadcast()
	w.mu.Unlock()
	close(w.wake)
	<-w.done
	return nil
}
