package smtp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
)

type EnhancedCode [3]int

// SMTPError specifies the error code, enhanced error code (if any) and
// message returned by the server.
type SMTPError struct {
	Code         int
	EnhancedCode EnhancedCode
	Message      string
}

// NoEnhancedCode is used to indicate that enhanced error code should not be
// included in response.
//
// Note that RFC 2034 requires an enhanced code to be included in all 2xx, 4xx
// and 5xx responses. This constant is exported for use by extensions, you
// should probably use EnhancedCodeNotSet instead.
var NoEnhancedCode = EnhancedCode{-1, -1, -1}

// EnhancedCodeNotSet is a nil value of EnhancedCode field in SMTPError, used
// to indicate that backend failed to provide enhanced status code. X.0.0 will
// be used (X is derived from error code).
var EnhancedCodeNotSet = EnhancedCode{0, 0, 0}

func (err *SMTPError) Error() string {
	s := fmt.Sprintf("SMTP error %03d", err.Code)
	if err.Message != "" {
		s += ": " + err.Message
	}
	return s
}

func (err *SMTPError) Temporary() bool {
	return err.Code/100 == 4
}

var ErrDataTooLarge = &SMTPError{
	Code:         552,
	EnhancedCode: EnhancedCode{5, 3, 4},
	Message:      "Maximum message size exceeded",
}

type dataReader struct {
	r     *bufio.Reader
	state int

	limited bool
	n       int64 // Maximum bytes remaining
}

func newDataReader(c *Conn) *dataReader {
	dr := &dataReader{
		r: c.text.R,
	}

	if c.server.MaxMessageBytes > 0 {
		dr.limited = true
		dr.n = int64(c.server.MaxMessageBytes)
	}

	return dr
}

func (r *dataReader) Read(b []byte) (n int, err error) {
	if r.limited {
		if r.n <= 0 {
			return 0, ErrDataTooLarge
		}
		if int64(len(b)) > r.n {
			b = b[0:r.n]
		}
	}

	// Code below is taken from net/textproto with only one modification to
	// not rewrite CRLF -> LF.

	// Run data through a simple state machine to
	// elide leading dots and detect End-of-Data (<CR><LF>.<CR><LF>) line.
	const (
		stateBeginLine = iota // beginning of line; initial state; must be zero
		stateDot              // read . at beginning of line
		stateDotCR            // read .\r at beginning of line
		stateCR               // read \r (possibly at end of line)
		stateData             // reading data in middle of line
		stateEOF              // reached .\r\n end marker line
	)
	for n < len(b) && r.state != stateEOF {
		// backupmx patch: in the middle of a line, copy the run of bytes up
		// to the next '\r' straight from the buffer instead of one
		// ReadByte call per byte (20% of the accept CPU in a profile).
		// Whole lines go the same way (see plainRun): the state machine
		// byte by byte is left for the bytes where it decides something.
		if r.state == stateData || r.state == stateBeginLine {
			if k := r.r.Buffered(); k > 0 {
				buf, _ := r.r.Peek(k)
				if m := len(b) - n; len(buf) > m {
					buf = buf[:m]
				}
				if j, mid := plainRun(buf, r.state == stateData); j > 0 {
					copy(b[n:], buf[:j])
					n += j
					r.r.Discard(j)
					r.state = stateBeginLine
					if mid {
						r.state = stateData
					}
					continue
				}
			}
		}
		var c byte
		c, err = r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			break
		}
		switch r.state {
		case stateBeginLine:
			if c == '.' {
				r.state = stateDot
				continue
			}
			if c == '\r' {
				r.state = stateCR
				break
			}
			r.state = stateData
		case stateDot:
			if c == '\r' {
				r.state = stateDotCR
				continue
			}
			r.state = stateData
		case stateDotCR:
			if c == '\n' {
				r.state = stateEOF
				continue
			}
			r.state = stateData
		case stateCR:
			if c == '\n' {
				r.state = stateBeginLine
				break
			}
			// backupmx patch: a second '\r' may still start the CRLF that
			// ends the line; upstream fell back to data here and so missed
			// the end of "...\r\r\n.\r\n" and waited for the timeout.
			if c != '\r' {
				r.state = stateData
			}
		case stateData:
			if c == '\r' {
				r.state = stateCR
			}
		}
		b[n] = c
		n++
	}
	if err == nil && r.state == stateEOF {
		err = io.EOF
	}

	if r.limited {
		r.n -= int64(n)
	}
	return
}

// plainRun returns how many bytes at the head of buf the end-of-data state
// machine would pass through unchanged, without anything to decide: the rest
// of the current line (if midLine) and then whole lines ending in CRLF that
// start with neither '.' nor '\r', and the start of a last line up to a '\r'
// or the end of buf. mid reports whether the run ends inside a line (the
// state after it is stateData; else stateBeginLine). backupmx patch: per
// line, this replaced three ReadByte calls and a Peek.
func plainRun(buf []byte, midLine bool) (j int, mid bool) {
	mid = midLine
	for j < len(buf) {
		if !mid {
			if c := buf[j]; c == '.' || c == '\r' {
				return j, false
			}
			mid = true
		}
		i := bytes.IndexByte(buf[j:], '\r')
		if i < 0 {
			return len(buf), true
		}
		if j+i+1 >= len(buf) || buf[j+i+1] != '\n' {
			return j + i, true // the '\r' is the state machine's
		}
		j += i + 2
		mid = false
	}
	return j, mid
}
