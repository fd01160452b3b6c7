package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Limits on what a server may send us in one reply, so that a broken or
// hostile peer can't make us hold unbounded memory.
const (
	maxReplyLine  = 4096 // bytes, RFC 5321 §4.5.3.1.5 says 512; we are lenient
	maxReplyLines = 100
)

// smtpConn is the client side of one SMTP connection: commands out, replies
// in, every wait bounded by a deadline. It knows nothing of messages.
type smtpConn struct {
	raw  net.Conn // the TCP connection: deadlines and Close go here
	conn net.Conn // raw, or the TLS client on top of it after STARTTLS
	br   *bufio.Reader
	bw   *bufio.Writer
	ext  map[string]string // EHLO keywords (upper-case) → parameters; nil after HELO
	peer string            // the name the server gave in its EHLO/HELO reply
	tls  string            // "" or e.g. "TLS1.3 TLS_AES_128_GCM_SHA256"
}

func newSMTPConn(raw net.Conn) *smtpConn {
	c := &smtpConn{raw: raw}
	c.setConn(raw)
	return c
}

func (c *smtpConn) setConn(conn net.Conn) {
	c.conn = conn
	c.br = bufio.NewReaderSize(conn, maxReplyLine)
	c.bw = bufio.NewWriter(conn)
}

// has reports whether the server announced an EHLO keyword.
func (c *smtpConn) has(keyword string) bool {
	_, ok := c.ext[keyword]
	return ok
}

// deadline is now+d, or ctx's deadline when that comes first.
func deadline(ctx context.Context, d time.Duration) time.Time {
	t := time.Now().Add(d)
	if cd, ok := ctx.Deadline(); ok && cd.Before(t) {
		return cd
	}
	return t
}

// cmd sends one command line and reads its reply, all within timeout.
func (c *smtpConn) cmd(ctx context.Context, timeout time.Duration, line string) (Reply, error) {
	c.raw.SetDeadline(deadline(ctx, timeout))
	if _, err := c.bw.WriteString(line + "\r\n"); err != nil {
		return Reply{}, fmt.Errorf("sending %s: %w", verb(line), err)
	}
	if err := c.bw.Flush(); err != nil {
		return Reply{}, fmt.Errorf("sending %s: %w", verb(line), err)
	}
	r, err := c.read()
	if err != nil {
		return Reply{}, fmt.Errorf("reading reply to %s: %w", verb(line), err)
	}
	return r, nil
}

// write sends command lines in one write (a PIPELINING group, RFC 2920),
// within timeout; the replies are read afterwards with readReply.
func (c *smtpConn) write(ctx context.Context, timeout time.Duration, lines ...string) error {
	c.raw.SetDeadline(deadline(ctx, timeout))
	for _, l := range lines {
		c.bw.WriteString(l + "\r\n")
	}
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("sending %s: %w", verb(lines[0]), err)
	}
	return nil
}

// readReply reads one reply within timeout (the greeting, the end of DATA).
func (c *smtpConn) readReply(ctx context.Context, timeout time.Duration, what string) (Reply, error) {
	c.raw.SetDeadline(deadline(ctx, timeout))
	r, err := c.read()
	if err != nil {
		return Reply{}, fmt.Errorf("reading %s: %w", what, err)
	}
	return r, nil
}

func verb(line string) string {
	v, _, _ := strings.Cut(line, " ")
	if v == "MAIL" || v == "RCPT" {
		v, _, _ = strings.Cut(line, ":")
	}
	return v
}

// read parses one possibly multi-line reply (RFC 5321 §4.2). The enhanced
// status code (RFC 3463), when the first line carries one, is moved to
// Reply.Enhanced and stripped from every line; lines are joined with "\n".
func (c *smtpConn) read() (Reply, error) {
	var r Reply
	var lines []string
	for n := 0; ; n++ {
		if n == maxReplyLines {
			return Reply{}, errors.New("reply has too many lines")
		}
		b, err := c.br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			return Reply{}, errors.New("reply line too long")
		}
		if err != nil {
			return Reply{}, err
		}
		line := strings.TrimRight(string(b), "\r\n")
		if len(line) < 3 || (len(line) > 3 && line[3] != ' ' && line[3] != '-') {
			return Reply{}, fmt.Errorf("malformed reply line %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil || code < 100 || code > 599 {
			return Reply{}, fmt.Errorf("malformed reply line %q", line)
		}
		if n == 0 {
			r.Code = code
		} else if code != r.Code {
			return Reply{}, fmt.Errorf("reply lines disagree: %d then %d", r.Code, code)
		}
		text := ""
		if len(line) > 4 {
			text = line[4:]
		}
		if n == 0 {
			r.Enhanced = enhancedCode(code, text)
		}
		if r.Enhanced != "" {
			text = strings.TrimPrefix(strings.TrimPrefix(text, r.Enhanced), " ")
		}
		lines = append(lines, text)
		if len(line) == 3 || line[3] == ' ' {
			break
		}
	}
	r.Text = strings.Join(lines, "\n")
	return r, nil
}

// enhancedCode returns the RFC 3463 code that starts text ("5.1.1 …") when its
// class agrees with the reply code, else "".
func enhancedCode(code int, text string) string {
	word, _, _ := strings.Cut(text, " ")
	parts := strings.Split(word, ".")
	if len(parts) != 3 || parts[0] != strconv.Itoa(code/100) {
		return ""
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || len(p) > 3 || (i == 0 && len(p) != 1) {
			return ""
		}
	}
	return word
}

// hello says EHLO, and HELO if the server refuses EHLO with a 5xx
// (RFC 5321 §3.2, §4.1.4). A non-2xx final answer comes back as a *replyError.
func (c *smtpConn) hello(ctx context.Context, timeout time.Duration, name string) error {
	r, err := c.cmd(ctx, timeout, "EHLO "+name)
	if err != nil {
		return err
	}
	if r.Code/100 == 2 {
		c.peer = firstWord(r.Text)
		c.ext = make(map[string]string)
		for _, l := range strings.Split(r.Text, "\n")[1:] {
			k, v, _ := strings.Cut(strings.TrimSpace(l), " ")
			c.ext[strings.ToUpper(k)] = v
		}
		return nil
	}
	if r.Code/100 != 5 {
		return &replyError{"EHLO", r}
	}
	r, err = c.cmd(ctx, timeout, "HELO "+name)
	if err != nil {
		return err
	}
	if r.Code/100 != 2 {
		return &replyError{"HELO", r}
	}
	c.peer = firstWord(r.Text)
	c.ext = nil
	return nil
}

// firstWord is the first space-separated word of a reply's first line: in a
// reply to EHLO or HELO, the server's name for itself (RFC 5321 §4.1.1.1).
func firstWord(text string) string {
	line, _, _ := strings.Cut(text, "\n")
	word, _, _ := strings.Cut(strings.TrimSpace(line), " ")
	return word
}

// startTLS runs the TLS handshake after a 220 to STARTTLS (RFC 3207 §4),
// then says EHLO again as §4.2 requires.
func (c *smtpConn) startTLS(ctx context.Context, timeout time.Duration, cfg *tls.Config, name string) error {
	tc := tls.Client(c.raw, cfg)
	c.raw.SetDeadline(deadline(ctx, timeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	st := tc.ConnectionState()
	c.setConn(tc)
	c.tls = strings.ReplaceAll(tls.VersionName(st.Version), " ", "") + " " + tls.CipherSuiteName(st.CipherSuite)
	c.ext = nil
	return c.hello(ctx, timeout, name)
}

// dotWriter returns the DATA writer: CRLF line ends, dot-stuffing, and the
// final "." on Close (RFC 5321 §4.5.2).
func (c *smtpConn) dotWriter() interface {
	Write([]byte) (int, error)
	Close() error
} {
	return newDotStuffer(c.bw)
}

// replyError is a reply that ended a step of the dialogue.
type replyError struct {
	step  string
	reply Reply
}

func (e *replyError) Error() string { return e.step + ": " + e.reply.String() }
