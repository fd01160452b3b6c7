package smtpd

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// scanDataBytes is scanData's state machine run one byte at a time, the
// reference its shortcuts must agree with.
func scanDataBytes(c *conn) (n int, end bool) {
	for i, b := range c.buf {
		switch c.data {
		case dataBeginLine:
			switch b {
			case '.':
				c.data = dataDot
			case '\r':
				c.data = dataCR
			default:
				c.data = dataText
			}
		case dataDot:
			c.data = dataText
			if b == '\r' {
				c.data = dataDotCR
			}
		case dataDotCR:
			if b == '\n' {
				return i + 1, true
			}
			c.data = dataText
		case dataCR:
			switch b {
			case '\n':
				c.data = dataBeginLine
			case '\r':
			default:
				c.data = dataText
			}
		case dataText:
			if b == '\r' {
				c.data = dataCR
			}
		}
	}
	return len(c.buf), false
}

// scanData finds the same end of body as the byte-by-byte machine, on
// random bodies (dots, bare CRs and LFs, "\r\r\n.\r\n" ends) arriving in
// random pieces.
func TestScanDataAgrees(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	pieces := []string{"text", "x", "\r\n", "\r\n.", "\r\n..", ".", "\r", "\n", "\r\n.\r\n", "\r\r\n.\r\n", "\r\n\r\n", " ", ".\r\n"}
	for range 20000 {
		var b strings.Builder
		for range rng.IntN(40) {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		body := b.String()
		fast, slow := &conn{data: dataBeginLine}, &conn{data: dataBeginLine}
		for off := 0; off < len(body); {
			k := min(len(body)-off, 1+rng.IntN(16))
			fast.buf, slow.buf = []byte(body[off:off+k]), []byte(body[off:off+k])
			n1, end1 := fast.scanData()
			n2, end2 := scanDataBytes(slow)
			if n1 != n2 || end1 != end2 || fast.data != slow.data {
				t.Fatalf("body %q, piece at %d (%q): scanData = %d, %v, state %v; byte by byte %d, %v, state %v",
					body, off, body[off:off+k], n1, end1, fast.data, n2, end2, slow.data)
			}
			if end1 {
				break
			}
			off += k
		}
	}
}
