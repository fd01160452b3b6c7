// Package downgrade converts a message with 8-bit body parts to 7 bit, for
// a primary that does not offer 8BITMIME (RFC 6152 §3: a relay converts or
// returns the message; RFC 2045 for the encodings), as Postfix does.
//
// The MIME structure is kept: multipart bodies are walked part by part
// (nested multiparts and message/rfc822 parts included), and a leaf whose
// transfer encoding is 8bit or binary, or whose content has 8-bit bytes
// without saying so, is encoded again: quoted-printable for text/*,
// base64 for anything else, with its Content-Transfer-Encoding header
// rewritten. Everything else passes byte for byte. A message without
// MIME-Version whose body has 8-bit bytes becomes MIME (text/plain,
// charset unknown-8bit: RFC 1428) and quoted-printable. 8-bit bytes in a
// header cannot be converted (that is SMTPUTF8's business): ErrHeader; nor
// can a structure nested deeper than 50 levels: ErrNesting.
// Converting changes the bytes a DKIM signature covers. Header reads a
// message's header, for the relay to tell whether mail sent with SMTPUTF8
// needs it.
package downgrade

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"
)

// Errors for messages that cannot be sent in 7 bit.
var (
	ErrHeader  = errors.New("downgrade: 8-bit bytes in a header")
	ErrNesting = errors.New("downgrade: MIME structure nested too deep")
)

// maxDepth bounds the nesting of multiparts and enclosed messages.
const maxDepth = 50

// Needed reports whether b has bytes that 7-bit transport cannot carry.
func Needed(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 || c == 0 {
			return true
		}
	}
	return false
}

// Convert reads a message from src and writes it in 7 bit to dst.
func Convert(dst io.Writer, src io.Reader) error {
	c := &converter{r: bufio.NewReaderSize(src, 64<<10), w: bufio.NewWriter(dst)}
	if _, err := c.entity(nil, true, "text/plain", 0); err != nil {
		return err
	}
	return c.w.Flush()
}

type converter struct {
	r *bufio.Reader
	w *bufio.Writer
	// peeked is a line read but not consumed (the boundary that ended a part).
	peeked []byte
	eof    bool
}

// line returns the next line with its line ending, or nil at the end.
func (c *converter) line() ([]byte, error) {
	if c.peeked != nil {
		l := c.peeked
		c.peeked = nil
		return l, nil
	}
	if c.eof {
		return nil, nil
	}
	l, err := c.r.ReadBytes('\n')
	if err == io.EOF {
		c.eof, err = true, nil
		if len(l) == 0 {
			l = nil
		}
	}
	return l, err
}

// boundary reports whether l is a delimiter line of one of bounds (the
// innermost last), and whether it closes its multipart.
func boundary(l []byte, bounds []string) (isBoundary, closing bool) {
	if !bytes.HasPrefix(l, []byte("--")) {
		return false, false
	}
	rest := bytes.TrimRight(l[2:], " \t\r\n")
	for i := len(bounds) - 1; i >= 0; i-- {
		b := bounds[i]
		if !bytes.HasPrefix(rest, []byte(b)) {
			continue
		}
		switch tail := rest[len(b):]; {
		case len(tail) == 0:
			return true, false
		case string(tail) == "--":
			return true, true
		}
	}
	return false, false
}

// entity converts one entity (a message or a body part) up to the
// boundary that ends it (left unread) or the end of the input. defType is
// the Content-Type it has without one. It reports whether it met the end
// of the input.
func (c *converter) entity(bounds []string, top bool, defType string, depth int) (bool, error) {
	if depth > maxDepth {
		return false, ErrNesting
	}
	// The header: raw lines, kept as they are unless rewritten.
	var hdr [][]byte
	var blank []byte // the empty line that ends the header, if any
	for {
		l, err := c.line()
		if err != nil {
			return false, err
		}
		if l == nil {
			break
		}
		if is, _ := boundary(l, bounds); is {
			c.peeked = l // a part without a body
			break
		}
		if len(bytes.TrimRight(l, "\r\n")) == 0 {
			blank = l
			break
		}
		if Needed(l) {
			return false, ErrHeader
		}
		hdr = append(hdr, l)
	}
	ctype, params := defType, map[string]string(nil)
	if v, ok := field(hdr, "Content-Type"); ok {
		if t, p, err := mime.ParseMediaType(v); err == nil {
			ctype, params = strings.ToLower(t), p
		}
	}
	cte := "7bit"
	if v, ok := field(hdr, "Content-Transfer-Encoding"); ok {
		cte = strings.ToLower(strings.TrimSpace(v))
	}
	_, isMIME := field(hdr, "MIME-Version")
	if top && !isMIME {
		// Not MIME: the body is one text; convert it if it needs it.
		body, eof, err := c.leafBody(bounds)
		if err != nil {
			return false, err
		}
		if !Needed(body) {
			return eof, c.write(hdr, blank, body)
		}
		hdr = append(hdr, []byte("MIME-Version: 1.0\r\n"))
		if _, ok := field(hdr, "Content-Type"); !ok {
			hdr = append(hdr, []byte("Content-Type: text/plain; charset=unknown-8bit\r\n"))
		}
		return eof, c.writeConverted(hdr, blank, body, "text/plain", !eof)
	}
	switch {
	case strings.HasPrefix(ctype, "multipart/") && params["boundary"] != "":
		if cte != "7bit" {
			hdr = setCTE(hdr, "7bit") // a multipart is only 7bit, 8bit or binary
		}
		if err := c.write(hdr, blank, nil); err != nil {
			return false, err
		}
		sub := "text/plain"
		if ctype == "multipart/digest" {
			sub = "message/rfc822"
		}
		return c.multipart(append(bounds[:len(bounds):len(bounds)], params["boundary"]), sub, depth)
	case ctype == "message/rfc822" && (cte == "8bit" || cte == "binary"):
		hdr = setCTE(hdr, "7bit")
		if err := c.write(hdr, blank, nil); err != nil {
			return false, err
		}
		return c.entity(bounds, false, "text/plain", depth+1)
	}
	body, eof, err := c.leafBody(bounds)
	if err != nil {
		return false, err
	}
	eight := Needed(body)
	switch {
	case cte == "8bit" || cte == "binary" || ((cte == "7bit" || cte == "") && eight):
		return eof, c.writeConverted(hdr, blank, body, ctype, !eof)
	case eight:
		// Already encoded, yet with raw 8-bit bytes (broken): written so
		// that a lenient decoder gets what it got before.
		return eof, c.write(hdr, blank, fixEncoded(body, cte))
	}
	return eof, c.write(hdr, blank, body)
}

// fixEncoded makes a quoted-printable or base64 body that has raw 8-bit
// bytes 7-bit without changing what a lenient decoder makes of it: in
// quoted-printable each such byte becomes =XX (what it decodes to anyway),
// in base64 it goes (decoders skip characters outside the alphabet).
// Anything else gets '?' instead.
func fixEncoded(body []byte, cte string) []byte {
	const hex = "0123456789ABCDEF"
	out := make([]byte, 0, len(body)+len(body)/8)
	for _, b := range body {
		if b < 0x80 && b != 0 {
			out = append(out, b)
			continue
		}
		switch cte {
		case "quoted-printable":
			out = append(out, '=', hex[b>>4], hex[b&15])
		case "base64":
		default:
			out = append(out, '?')
		}
	}
	return out
}

// multipart converts a multipart body after its header: preamble, parts,
// epilogue, up to a boundary of an enclosing multipart or the end.
func (c *converter) multipart(bounds []string, sub string, depth int) (bool, error) {
	own := bounds[len(bounds)-1]
	closed := false
	for {
		l, err := c.line()
		if err != nil {
			return false, err
		}
		if l == nil {
			return true, nil
		}
		if is, closing := boundary(l, bounds); is {
			mine, _ := boundary(l, []string{own})
			if !mine || closed {
				c.peeked = l // the enclosing multipart's
				return false, nil
			}
			if _, err := c.w.Write(l); err != nil {
				return false, err
			}
			if closing {
				closed = true
				continue
			}
			eof, err := c.entity(bounds, false, sub, depth+1)
			if err != nil || eof {
				return eof, err
			}
			continue
		}
		// Preamble or epilogue: ignored by readers; 8-bit bytes there
		// become '?'.
		if _, err := c.w.Write(sanitize(l)); err != nil {
			return false, err
		}
	}
}

// leafBody reads a leaf's body up to the next boundary of bounds (left
// unread) or the end. The line ending before a boundary belongs to the
// boundary (RFC 2046 §5.1.1): it is part of the returned body, and
// writeConverted keeps it out of the encoding.
func (c *converter) leafBody(bounds []string) ([]byte, bool, error) {
	var body []byte
	for {
		l, err := c.line()
		if err != nil {
			return nil, false, err
		}
		if l == nil {
			return body, true, nil
		}
		if is, _ := boundary(l, bounds); is {
			c.peeked = l
			return body, false, nil
		}
		body = append(body, l...)
	}
}

func (c *converter) write(hdr [][]byte, blank, body []byte) error {
	for _, l := range hdr {
		c.w.Write(l)
	}
	c.w.Write(blank)
	_, err := c.w.Write(body)
	return err
}

// writeConverted writes a leaf encoded anew: quoted-printable for text,
// base64 otherwise. Before a boundary, the body's last line ending belongs
// to the boundary (RFC 2046 §5.1.1) and is written after the encoding; at
// the end of the message everything is content, and the encoding's last
// line is ended without adding to it.
func (c *converter) writeConverted(hdr [][]byte, blank, body []byte, ctype string, beforeBoundary bool) error {
	enc := "base64"
	if strings.HasPrefix(ctype, "text/") {
		enc = "quoted-printable"
	}
	if blank == nil {
		blank = []byte("\r\n") // the part had no body; now it has one
	}
	c.write(setCTE(hdr, enc), blank, nil)
	content, eol := body, []byte(nil)
	if beforeBoundary {
		switch {
		case bytes.HasSuffix(content, []byte("\r\n")):
			content, eol = content[:len(content)-2], []byte("\r\n")
		case bytes.HasSuffix(content, []byte("\n")):
			content, eol = content[:len(content)-1], []byte("\r\n")
		}
	}
	if enc == "base64" {
		b := base64.StdEncoding.EncodeToString(content)
		for len(b) > 76 {
			c.w.WriteString(b[:76])
			c.w.WriteString("\r\n")
			b = b[76:]
		}
		c.w.WriteString(b)
		if !beforeBoundary && len(b) > 0 {
			eol = []byte("\r\n") // decoders skip it
		}
	} else {
		// Text: line breaks stay line breaks (quotedprintable turns each
		// into CRLF); long lines get soft breaks.
		qp := quotedprintable.NewWriter(c.w)
		if _, err := qp.Write(content); err != nil {
			return err
		}
		if err := qp.Close(); err != nil {
			return err
		}
		if !beforeBoundary && len(content) > 0 && content[len(content)-1] != '\n' {
			eol = []byte("=\r\n") // a soft break: ends the line, adds nothing
		}
	}
	_, err := c.w.Write(eol)
	return err
}

// fieldEnd reports whether hdr[i] starts a field named name and returns the
// index after it and its continuation lines.
func fieldEnd(hdr [][]byte, i int, name string) (int, bool) {
	l := hdr[i]
	colon := bytes.IndexByte(l, ':')
	if colon <= 0 || l[0] == ' ' || l[0] == '\t' ||
		!strings.EqualFold(string(bytes.TrimRight(l[:colon], " \t")), name) {
		return i + 1, false
	}
	i++
	for i < len(hdr) && (hdr[i][0] == ' ' || hdr[i][0] == '\t') {
		i++
	}
	return i, true
}

// field returns the unfolded value of the first header field named name.
func field(hdr [][]byte, name string) (string, bool) {
	for i := 0; i < len(hdr); {
		end, ok := fieldEnd(hdr, i, name)
		if !ok {
			i = end
			continue
		}
		l := hdr[i]
		v := string(bytes.TrimRight(l[bytes.IndexByte(l, ':')+1:], "\r\n"))
		for _, cont := range hdr[i+1 : end] {
			v += " " + strings.TrimSpace(string(cont))
		}
		return strings.TrimSpace(v), true
	}
	return "", false
}

// setCTE replaces the Content-Transfer-Encoding field (with its
// continuation lines), or adds one at the end.
func setCTE(hdr [][]byte, enc string) [][]byte {
	out := make([][]byte, 0, len(hdr)+1)
	for i := 0; i < len(hdr); {
		end, ok := fieldEnd(hdr, i, "Content-Transfer-Encoding")
		if !ok {
			out = append(out, hdr[i:end]...)
		}
		i = end
	}
	return append(out, []byte("Content-Transfer-Encoding: "+enc+"\r\n"))
}

// sanitize replaces 8-bit bytes (and NULs) with '?'.
func sanitize(l []byte) []byte {
	if !Needed(l) {
		return l
	}
	return fixEncoded(l, "")
}

// maxHeader bounds what Header reads looking for the end of the header.
const maxHeader = 1 << 20

// Header reads the header of the message in r (up to and including the
// empty line that ends it, or at most about 1 MiB) and returns it, with a
// reader of the whole message, header included.
func Header(r io.Reader) (hdr []byte, whole io.Reader, err error) {
	br := bufio.NewReader(r)
	for len(hdr) < maxHeader {
		l, err := br.ReadBytes('\n') // whole lines: a line longer than the buffer is not taken for two
		hdr = append(hdr, l...)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		if len(bytes.TrimRight(l, "\r\n")) == 0 {
			break
		}
	}
	return hdr, io.MultiReader(bytes.NewReader(hdr), br), nil
}
