// Package safefile writes files atomically and durably.
//
// Invariant: a file written through this package either does not exist under
// its final name, or exists there complete and with its content on disk. Its
// name is durable once the final directory has been synced (SyncDir), which
// Commit leaves to the caller so that many files landing in one directory can
// share one directory fsync.
//
// It assumes a POSIX filesystem on which link(2) is atomic, the temporary and
// the final directories are on the same filesystem, and fsync of a directory
// makes the entries in it durable. Leftover temporary files (after a crash) are
// the caller's to sweep: they never carry a final name.
package safefile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// ErrExist is returned by Commit when the final name is already taken: a
// committed file is never replaced.
var ErrExist = os.ErrExist

// File is a file being written under a temporary name.
type File struct {
	f    *os.File
	n    int64
	done bool
}

// Create starts a new file in tmpDir.
func Create(tmpDir string) (*File, error) {
	f, err := os.CreateTemp(tmpDir, "tmp-*")
	if err != nil {
		return nil, err
	}
	return &File{f: f}, nil
}

// Write appends p to the file.
func (f *File) Write(p []byte) (int, error) {
	n, err := f.f.Write(p)
	f.n += int64(n)
	return n, err
}

// Size is the number of bytes written so far.
func (f *File) Size() int64 { return f.n }

// Commit makes the content durable (fsync), then gives the file its final
// name without ever replacing an existing file (ErrExist). The name is durable
// only once SyncDir(filepath.Dir(final)) has returned. On error the temporary
// file is removed; Commit and Abort may not be called again.
func (f *File) Commit(final string) error {
	if f.done {
		return errors.New("safefile: already committed or aborted")
	}
	f.done = true
	tmp := f.f.Name()
	err := f.f.Sync()
	if cerr := f.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// link(2), unlike rename(2), fails instead of replacing final.
		err = os.Link(tmp, final)
	}
	// Once linked, a leftover temporary name is only litter for the sweep.
	_ = os.Remove(tmp)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("safefile: %s: %w", final, ErrExist)
		}
		return fmt.Errorf("safefile: %w", err)
	}
	return nil
}

// Abort discards the file. It is a no-op after Commit.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	_ = f.f.Close()
	_ = os.Remove(f.f.Name())
}

// SyncDir fsyncs a directory so that the names created or removed in it
// survive a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("safefile: sync %s: %w", dir, err)
	}
	return nil
}

// WriteFile copies r into a new file named final, durably: content synced,
// name linked, directory synced. It returns the number of bytes written. If r
// fails, nothing is left behind and r's error is returned.
func WriteFile(tmpDir, final string, r io.Reader) (int64, error) {
	f, err := Create(tmpDir)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, r)
	if err != nil {
		f.Abort()
		return 0, err
	}
	if err := f.Commit(final); err != nil {
		return 0, err
	}
	if err := SyncDir(filepath.Dir(final)); err != nil {
		return 0, err
	}
	return n, nil
}
