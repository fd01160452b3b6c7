package relay

import (
	"bufio"
	"bytes"
)

// dotStuffer writes a message body as the DATA block of RFC 5321 §4.5.2:
// a '.' doubled at the start of a line, bare LF sent as CRLF, and Close ends
// with CRLF "." CRLF. It works a line at a time (net/textproto's DotWriter
// goes byte by byte, which the drain profile showed).
type dotStuffer struct {
	w   *bufio.Writer
	bol bool // at the beginning of a line
	cr  bool // the last byte written was '\r'
}

func newDotStuffer(w *bufio.Writer) *dotStuffer { return &dotStuffer{w: w, bol: true} }

func (d *dotStuffer) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if d.bol && p[0] == '.' {
			d.w.WriteByte('.')
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			d.w.Write(p)
			d.cr, d.bol = p[len(p)-1] == '\r', false
			break
		}
		if i > 0 {
			d.w.Write(p[:i])
			d.cr = p[i-1] == '\r'
		}
		if !d.cr {
			d.w.WriteByte('\r')
		}
		d.w.WriteByte('\n')
		d.bol, d.cr = true, false
		p = p[i+1:]
	}
	// bufio.Writer's errors are sticky: the first one is reported here.
	if _, err := d.w.Write(nil); err != nil {
		return 0, err
	}
	return n, nil
}

// Close ends the last line if needed, writes the final dot and flushes.
func (d *dotStuffer) Close() error {
	switch {
	case d.cr:
		d.w.WriteByte('\n')
	case !d.bol:
		d.w.WriteString("\r\n")
	}
	d.w.WriteString(".\r\n")
	return d.w.Flush()
}
