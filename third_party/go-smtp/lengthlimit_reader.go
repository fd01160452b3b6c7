package smtp

import (
	"bytes"
	"errors"
	"io"
)

var ErrTooLongLine = errors.New("smtp: too long a line in input stream")

// lineLimitReader reads from the underlying Reader but restricts
// line length of lines in input stream to a certain length.
//
// If line length exceeds the limit - Read returns ErrTooLongLine
type lineLimitReader struct {
	R         io.Reader
	LineLimit int

	curLineLength int
}

func (r *lineLimitReader) Read(b []byte) (int, error) {
	if r.curLineLength > r.LineLimit && r.LineLimit > 0 {
		return 0, ErrTooLongLine
	}

	n, err := r.R.Read(b)
	if err != nil {
		return n, err
	}

	if r.LineLimit == 0 {
		return n, nil
	}

	// backupmx patch: jump from newline to newline instead of looking at
	// each byte; the count is the same as upstream's byte loop (a newline
	// starts the next line's count at 1).
	p := b[:n]
	for {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			r.curLineLength += len(p)
			if r.curLineLength > r.LineLimit {
				return 0, ErrTooLongLine
			}
			return n, nil
		}
		r.curLineLength += i
		if r.curLineLength > r.LineLimit {
			return 0, ErrTooLongLine // sticky: the next Read fails too
		}
		r.curLineLength = 1
		p = p[i+1:]
	}
}
