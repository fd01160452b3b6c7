package embedded

import "syscall"

// punchHole deallocates [off, off+n) of the file, keeping its size
// (FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE). File systems without hole
// punching return an error, which callers ignore: the space then comes back
// when the segment is removed.
func punchHole(fd int, off, n int64) error {
	return syscall.Fallocate(fd, 0x1|0x2, off, n)
}

func fdatasync(fd int) error {
	for {
		err := syscall.Fdatasync(fd)
		if err != syscall.EINTR {
			return err
		}
	}
}

// preallocate allocates the blocks of [0, size) without writing them.
func preallocate(fd int, size int64) error { return syscall.Fallocate(fd, 0, 0, size) }
