package smtpd

import (
	"bytes"
	"errors"
	"io"
)

// errTooManyHops ends a body whose header has more Received fields than
// smtp.max_received: a mail loop (RFC 5321 §6.3).
var errTooManyHops = errors.New("too many Received header fields: mail loop")

// hopReader counts the Received header fields of the body it passes on and
// fails with errTooManyHops as soon as they are more than max, before the
// store has taken anything. It looks at each header line's first bytes
// only, and at nothing after the header.
type hopReader struct {
	r     io.Reader
	max   int
	count int
	done  bool    // past the header
	head  [9]byte // the current line's first bytes, while fewer than 9
	nhead int
	mid   bool // inside a line whose first bytes are judged
}

var receivedField = []byte("received:")

func (h *hopReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if !h.done && n > 0 {
		h.scan(p[:n])
		if h.count > h.max {
			return 0, errTooManyHops
		}
	}
	return n, err
}

func (h *hopReader) scan(b []byte) {
	for len(b) > 0 && !h.done {
		if !h.mid {
			// At (or in the first bytes of) a line: gather up to 9 bytes.
			for len(b) > 0 && h.nhead < len(h.head) {
				c := b[0]
				if c == '\n' {
					if h.nhead == 0 || (h.nhead == 1 && h.head[0] == '\r') {
						h.done = true // the empty line ends the header
						return
					}
					h.nhead = 0 // a short line
					b = b[1:]
					continue
				}
				h.head[h.nhead] = c
				h.nhead++
				b = b[1:]
			}
			if h.nhead < len(h.head) {
				return // the line's start continues in the next Read
			}
			if bytes.EqualFold(h.head[:], receivedField) {
				h.count++
			}
			h.mid, h.nhead = true, 0
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return
		}
		b = b[i+1:]
		h.mid = false
	}
}
