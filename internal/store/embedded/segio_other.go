//go:build !linux

package embedded

import "syscall"

// punchHole is not available here: a removed body's space comes back when
// its segment is removed.
func punchHole(fd int, off, n int64) error { return nil }

func fdatasync(fd int) error { return syscall.Fsync(fd) }

// preallocate is not available here: segments grow as they are written.
func preallocate(fd int, size int64) error { return nil }
