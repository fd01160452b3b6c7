package smtpd

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"backupmx/internal/dnsbl"
)

// Read modes: what the next client bytes are.
const (
	modeCommand = iota // command lines
	modeData           // a DATA body, up to and including CRLF.CRLF
	modeChunk          // a BDAT chunk: a byte count
	modeRaw            // after an over-long line: passed untouched
)

// States of the end-of-data scanner; the same machine as go-smtp's dataReader,
// so both agree on where a body ends.
const (
	dataBeginLine = iota
	dataDot
	dataDotCR
	dataCR
	dataText
)

// maxCommandLine is how much of an unfinished command line conn holds back
// looking for its end; beyond it the bytes go to go-smtp, whose own limit
// (2000) is lower, so it refuses the line and hangs up.
const maxCommandLine = 4096

// conn sits between go-smtp and the client socket. It reads ahead of go-smtp
// and hands it client bytes in measured batches, which gives it two jobs:
//
//   - Timeouts (RFC 5321 §4.5.3.2): every socket read gets a fresh deadline,
//     CommandTimeout while waiting for a command, DataTimeout (an idle timeout)
//     inside a DATA body or BDAT chunk.
//   - Commands go-smtp has no hook for (ETRN, source-routed RCPT, XCLIENT,
//     XFORWARD, MAIL before HELO/EHLO): conn answers them itself and never
//     passes them on.
//   - STARTTLS (RFC 3207): conn answers 220, runs the handshake on the
//     socket and from then on reads and writes through TLS, so go-smtp and
//     every rule above keep seeing clear text. go-smtp never learns of TLS;
//     the session asks conn (tlsState) for the Received header.
//   - The door's session-wide rules: the pregreet test (the greeting is held
//     back Config.SMTP.PregreetWait; a client that talks first is refused),
//     and the bad-command limit (after MaxBadCommands error replies, 421).
//
// Reply order under PIPELINING (RFC 2920) rests on one fact: conn hands
// go-smtp whole command lines only, and go-smtp answers each command before it
// reads the next line. So when go-smtp calls Read for more bytes, every command
// handed over before has been answered, and a command conn answers itself
// may be answered then, in order. That is why a batch stops before such a
// command, and why it stops after DATA: the next bytes are a body
// only if go-smtp's reply (354), seen through Write, says so. STARTTLS is
// conn's own command, answered when it reaches the head of the buffer.
type conn struct {
	net.Conn
	s  *Server
	ip netip.Addr

	// Read side: used only from go-smtp's goroutine for this connection.
	base    []byte // backing array for buf
	buf     []byte // client bytes not yet handed to go-smtp
	fwd     int    // bytes at the head of buf cleared for go-smtp
	mode    int
	chunk   int64  // modeChunk: bytes left
	data    int    // modeData: scanner state
	await   string // "DATA" handed over; its reply decides the mode
	rerr    error  // sticky socket read error
	aborted bool   // a body or chunk was cut short (see midMessage)

	helo    bool                     // a HELO or EHLO was handed to go-smtp
	esmtp   atomic.Bool              // the last greeting was EHLO
	tls     atomic.Pointer[tls.Conn] // set once STARTTLS succeeded; under wmu for writers
	inTx    atomic.Bool              // go-smtp has an open transaction (set by session)
	dead    atomic.Bool              // refused: every read is io.EOF
	errs    atomic.Int32
	greeted bool // the 220 went out (or was replaced); under wmu

	wmu      sync.Mutex
	wline    []byte // an unfinished reply line (in wlineBuf at first)
	wlineBuf [128]byte
	lastCode int // code of the last final reply line written

	blDone chan struct{} // closed when bl is set; nil: no DNSBL check
	bl     dnsbl.Verdict

	nameOnce sync.Once
	nameDone chan struct{}
	name     string // forward-confirmed reverse DNS name, or ""

	closeOnce sync.Once
	rmu       sync.Mutex // held by Read; Close gives base back only under it

	dmu      sync.Mutex
	rdl, wdl time.Time // the socket's read and write deadlines; under dmu
}

// deadlineSlack: a deadline is not moved later by less than this, nor by
// less than a sixteenth of the time it gives (the timeouts are minutes; a
// timeout is never cut by more than that). Each move updates a poller timer, and there was one
// per reply and one per read: ~1.5% of the CPU at one connection per
// message.
const deadlineSlack = time.Second

// keep reports whether moving deadline *cur to t can be skipped, and
// records t if not.
func (c *conn) keep(cur *time.Time, t time.Time) bool {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if !t.IsZero() && !cur.IsZero() && !t.Before(*cur) && t.Sub(*cur) < min(deadlineSlack, time.Until(t)/16) {
		return true
	}
	*cur = t
	return false
}

// SetWriteDeadline is go-smtp's, before every reply (see deadlineSlack).
func (c *conn) SetWriteDeadline(t time.Time) error {
	if c.keep(&c.wdl, t) {
		return nil
	}
	return c.Conn.SetWriteDeadline(t)
}

// SetReadDeadline: as SetWriteDeadline.
func (c *conn) SetReadDeadline(t time.Time) error {
	if c.keep(&c.rdl, t) {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

// SetDeadline sets both.
func (c *conn) SetDeadline(t time.Time) error {
	c.dmu.Lock()
	c.rdl, c.wdl = t, t
	c.dmu.Unlock()
	return c.Conn.SetDeadline(t)
}

// readBufSize is a connection's read buffer: twice the longest command
// line at least, and a whole message of ~10 KB in one read(2) (with 8 KiB,
// such a body took two).
const readBufSize = 16 << 10

// readBufs recycles connections' read buffers: with one connection per
// message they were most of the bytes the server allocated.
var readBufs = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}

func newConn(nc net.Conn, s *Server) *conn {
	base := *readBufs.Get().(*[]byte)
	c := &conn{Conn: nc, s: s, ip: remoteIP(nc.RemoteAddr()), base: base, buf: base[:0]}
	c.wline = c.wlineBuf[:0]
	return c
}

// Read hands go-smtp the next measured batch of client bytes. It holds rmu
// throughout: Close gives the buffer back only when no Read uses it.
func (c *conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.dead.Load() || c.base == nil {
		return 0, io.EOF
	}
	for c.fwd == 0 {
		if err := c.plan(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.buf[:c.fwd])
	c.buf = c.buf[n:]
	c.fwd -= n
	return n, nil
}

// plan reads from the socket as needed and clears the next batch (sets fwd),
// or changes mode; the caller loops until fwd > 0.
func (c *conn) plan() error {
	switch c.mode {
	case modeRaw:
		if len(c.buf) == 0 {
			if err := c.fill(c.s.Config.SMTP.CommandTimeout.D()); err != nil {
				return err
			}
		}
		c.fwd = len(c.buf)
	case modeChunk:
		if c.chunk == 0 {
			c.mode = modeCommand
			return nil
		}
		if len(c.buf) == 0 {
			if err := c.fill(c.s.Config.SMTP.DataTimeout.D()); err != nil {
				return c.midMessage(err)
			}
		}
		n := min(int64(len(c.buf)), c.chunk)
		c.fwd, c.chunk = int(n), c.chunk-n
	case modeData:
		if len(c.buf) == 0 {
			if err := c.fill(c.s.Config.SMTP.DataTimeout.D()); err != nil {
				return c.midMessage(err)
			}
		}
		n, end := c.scanData()
		c.fwd = n
		if end {
			c.mode = modeCommand
		}
	default:
		return c.planCommands()
	}
	return nil
}

func (c *conn) planCommands() error {
	if c.await != "" {
		c.wmu.Lock()
		code := c.lastCode
		c.wmu.Unlock()
		if code == 354 {
			c.mode, c.data = modeData, dataBeginLine
		}
		c.await = ""
		return nil
	}
	// Everything handed over has been answered (see the type doc): answer
	// our own commands at the head of the buffer now.
	for {
		if c.tooManyErrors() {
			return io.EOF
		}
		i := bytes.IndexByte(c.buf, '\n')
		if i < 0 {
			if len(c.buf) > maxCommandLine {
				c.mode = modeRaw
				return nil
			}
			return c.fill(c.s.Config.SMTP.CommandTimeout.D())
		}
		cmd, arg := parseCmd(c.buf[:i+1])
		if !c.ours(cmd, arg) {
			break
		}
		c.buf = c.buf[i+1:]
		if cmd == "STARTTLS" {
			if err := c.startTLS(); err != nil {
				return err
			}
			continue
		}
		c.reply(c.answer(cmd, arg))
	}
	// Hand over this line and the ones after it, up to one of ours or a
	// command after which the client may stop sending commands.
	off := 0
	for {
		i := bytes.IndexByte(c.buf[off:], '\n')
		if i < 0 {
			break
		}
		cmd, arg := parseCmd(c.buf[off : off+i+1])
		if off > 0 && c.ours(cmd, arg) {
			break
		}
		off += i + 1
		switch cmd {
		case "EHLO":
			c.esmtp.Store(true)
			c.helo = true
		case "HELO":
			c.esmtp.Store(false)
			c.helo = true
		case "DATA":
			c.await = cmd
			c.fwd = off
			return nil
		case "BDAT":
			if n, ok := chunkSize(arg); ok {
				c.mode, c.chunk = modeChunk, n
				c.fwd = off
				return nil
			}
		}
	}
	c.fwd = off
	return nil
}

// ours reports the commands conn answers instead of go-smtp.
func (c *conn) ours(cmd, arg string) bool {
	switch cmd {
	case "ETRN", "XCLIENT", "XFORWARD", "STARTTLS":
		return true
	case "MAIL":
		return !c.helo
	case "RCPT":
		return sourceRouted(arg)
	}
	return false
}

// answer produces the reply to one of our commands (see ours).
func (c *conn) answer(cmd, arg string) string {
	switch cmd {
	case "ETRN":
		return c.s.etrn(c.ip, arg)
	case "XCLIENT", "XFORWARD":
		// Postfix's reply. Not implemented even for trusted_networks: a
		// trusted client gets 502, which it treats as "not offered".
		if c.s.trusted(c.ip) {
			return "502 5.5.1 " + cmd + " not implemented"
		}
		reply := "550 5.7.0 Error: insufficient authorization"
		c.s.rejected(c.ip, strings.ToLower(cmd), reply)
		return reply
	case "MAIL":
		reply := "503 5.5.1 Error: send HELO/EHLO first"
		c.s.rejected(c.ip, "helo_required", reply)
		return reply
	}
	reply := "550 5.7.1 Source routes are not accepted: relaying denied"
	c.s.rejected(c.ip, "source_route", reply, "rcpt", arg)
	return reply
}

// startTLS answers STARTTLS (RFC 3207 §4) and runs the server handshake on
// the socket. Refused: without a certificate (502), inside TLS (554), inside
// a mail transaction (503). Client bytes that followed the command in the
// same read are dropped, never read as commands after the handshake: they
// were sent in clear text (the STARTTLS injection attack, CVE-2011-0411).
// After the handshake the client must say EHLO again (§4.2: the server
// forgets what it knew), which MAIL before HELO/EHLO already enforces.
// A failed handshake ends the session.
func (c *conn) startTLS() error {
	var refusal string
	switch {
	case c.s.TLS == nil:
		refusal = "502 5.5.1 Error: STARTTLS not available"
	case c.tls.Load() != nil:
		refusal = "554 5.5.1 Error: TLS already active"
	case c.inTx.Load():
		refusal = "503 5.5.1 Error: MAIL transaction in progress"
	}
	if refusal != "" {
		c.reply(refusal)
		return nil
	}
	if len(c.buf) > 0 {
		c.s.log().Warn("clear text after STARTTLS dropped", "client", c.ip.String(), "bytes", len(c.buf))
		c.buf = c.buf[:0]
	}
	c.reply("220 2.0.0 Ready to start TLS")
	c.wmu.Lock()
	defer c.wmu.Unlock()
	tc := tls.Server(c.Conn, c.s.TLS)
	c.SetDeadline(time.Now().Add(c.s.Config.SMTP.CommandTimeout.D()))
	err := tc.Handshake()
	c.SetDeadline(time.Time{})
	if err != nil {
		c.s.log().Info("TLS handshake failed", "client", c.ip.String(), "err", err)
		c.dead.Store(true)
		return io.EOF
	}
	c.tls.Store(tc)
	c.helo = false
	c.esmtp.Store(false)
	st := tc.ConnectionState()
	c.s.log().Info("TLS established", "client", c.ip.String(), "tls", tls.VersionName(st.Version)+" "+tls.CipherSuiteName(st.CipherSuite), "sni", st.ServerName)
	return nil
}

// tlsState is the TLS channel's state, or nil before STARTTLS.
func (c *conn) tlsState() *tls.ConnectionState {
	tc := c.tls.Load()
	if tc == nil {
		return nil
	}
	st := tc.ConnectionState()
	return &st
}

// transport is where client bytes come from and replies go: the socket, or
// TLS on top of it after STARTTLS.
func (c *conn) transport() net.Conn {
	if tc := c.tls.Load(); tc != nil {
		return tc
	}
	return c.Conn
}

// tooManyErrors ends a session that collected Config.SMTP.MaxBadCommands
// error replies: 421 (RFC 5321 §3.8), then every read is EOF.
func (c *conn) tooManyErrors() bool {
	if int(c.errs.Load()) < c.s.Config.SMTP.MaxBadCommands {
		return false
	}
	reply := fmt.Sprintf("421 4.7.0 %s Too many errors, closing connection", c.s.Config.Hostname)
	c.s.rejected(c.ip, "max_bad_commands", reply)
	c.reply(reply)
	c.dead.Store(true)
	return true
}

// scanData finds the end of a DATA body in buf: the bytes up to and including
// the terminating ".CRLF", or all of buf if the end is not there yet.
func (c *conn) scanData() (n int, end bool) {
	buf := c.buf
	for i := 0; i < len(buf); i++ {
		b := buf[i]
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
				// Still maybe the CR of the line's CRLF: "\r\r\n.\r\n" ends
				// the body too (a bare CR is illegal, RFC 5321 §2.3.8, but
				// must not make us miss the end and wait for the timeout).
			default:
				c.data = dataText
			}
		case dataText:
			// Jump to the next CR: nothing else matters mid-line. A CRLF
			// followed by a line that starts with neither "." nor CR is
			// passed over at once (most lines), without the byte-by-byte
			// states.
			for {
				j := bytes.IndexByte(buf[i:], '\r')
				if j < 0 {
					return len(buf), false
				}
				i += j
				if i+2 < len(buf) && buf[i+1] == '\n' && buf[i+2] != '.' && buf[i+2] != '\r' {
					i += 3 // mid-line again, after the next line's first byte
					continue
				}
				c.data = dataCR
				break
			}
		}
	}
	return len(buf), false
}

// midMessage turns a socket error inside a body or chunk into what go-smtp
// must see. The first one aborts the message: a timeout becomes the 421 reply
// (go-smtp would answer a bare net.Error in BDAT with 554: 5xx for our side's
// timeout), and end of stream becomes io.ErrUnexpectedEOF (go-smtp would take
// a bare EOF inside a BDAT chunk as the end of the chunk and could queue a
// truncated message). Every read after that gets io.EOF, so go-smtp, having
// written its reply, hangs up quietly.
func (c *conn) midMessage(err error) error {
	if c.aborted {
		return io.EOF
	}
	c.aborted = true
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return reply(421, smtp.EnhancedCode{4, 4, 2}, "Timeout waiting for data, closing connection")
	case err == io.EOF:
		return io.ErrUnexpectedEOF
	}
	return err
}

// fill reads once from the socket, with a fresh deadline of d.
func (c *conn) fill(d time.Duration) error {
	if c.rerr != nil {
		return c.rerr
	}
	if len(c.buf) == 0 {
		c.buf = c.base[:0]
	} else if cap(c.buf)-len(c.buf) < maxCommandLine {
		c.buf = c.base[:copy(c.base, c.buf)]
	}
	if d > 0 {
		c.SetReadDeadline(time.Now().Add(d))
	}
	n, err := c.transport().Read(c.buf[len(c.buf):cap(c.buf)])
	c.buf = c.buf[:len(c.buf)+n]
	if err != nil {
		c.rerr = err
		if n == 0 {
			return err
		}
	}
	return nil
}

// reply writes a reply of our own.
func (c *conn) reply(line string) {
	c.SetWriteDeadline(time.Now().Add(c.s.Config.SMTP.CommandTimeout.D()))
	c.Write([]byte(line + "\r\n"))
}

// Write passes go-smtp's replies on, noting the code of each final reply
// line. The first is the greeting, held back for the pregreet test.
func (c *conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	out := c.transport()
	if !c.greeted {
		c.greeted = true
		if refusal := c.pregreet(); refusal != "" {
			c.dead.Store(true)
			c.Conn.Write([]byte(refusal + "\r\n"))
			return len(p), nil
		}
	}
	c.observe(p)
	if q, ok := c.greetingReply(p); ok {
		if _, err := out.Write(q); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return out.Write(p)
}

// helloPrefixes start go-smtp's replies to EHLO and to HELO.
var helloPrefixes = [][]byte{[]byte("250-Hello "), []byte("250 2.0.0 Hello ")}

// greetingReply puts our name first in go-smtp's reply to EHLO and HELO
// ("250-Hello client" and "250 2.0.0 Hello client"), as RFC 5321 §4.1.1.1
// requires: "250" SP Domain [ SP greeting ]. go-smtp writes each reply in one
// Write (our copy's patch; one line per Write upstream: both are handled),
// and no other reply starts this way. The EHLO reply also gets conn's own
// commands after its first line: ETRN (RFC 1985 §3) when the server can
// flush, and STARTTLS while there is a certificate and no TLS yet.
func (c *conn) greetingReply(p []byte) ([]byte, bool) {
	for _, prefix := range helloPrefixes {
		rest, ok := bytes.CutPrefix(p, prefix)
		if !ok {
			continue
		}
		first := len(rest) // the end of the greeting line
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			first = i + 1
		}
		q := fmt.Appendf(make([]byte, 0, len(p)+64), "%s%s Hello %s", prefix[:4], c.s.Config.Hostname, rest[:first])
		if prefix[3] == '-' && c.s.ETRN != nil {
			q = append(q, "250-ETRN\r\n"...)
		}
		if prefix[3] == '-' && c.s.TLS != nil && c.tls.Load() == nil {
			q = append(q, "250-STARTTLS\r\n"...)
		}
		return append(q, rest[first:]...), true
	}
	return nil, false
}

func (c *conn) observe(p []byte) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if len(c.wline) < 512 {
				c.wline = append(c.wline, p...)
			}
			return
		}
		line := append(c.wline, p[:i]...)
		p = p[i+1:]
		c.wline = c.wline[:0]
		// "250 text" or "250" ends a reply; "250-text" continues it.
		if len(line) >= 3 && (len(line) == 3 || line[3] == ' ' || line[3] == '\r') {
			if code, err := strconv.Atoi(string(line[:3])); err == nil {
				c.lastCode = code
				// Our own faults (4.3.x: store or system trouble) are not the
				// client's errors and must not end its session.
				if code >= 400 && code != 421 && !bytes.HasPrefix(line[3:], []byte(" 4.3.")) {
					c.errs.Add(1)
				}
				if bytes.HasPrefix(line, []byte("452 4.5.3")) { // go-smtp's RCPT limit
					c.s.rejected(c.ip, "max_recipients", strings.TrimRight(string(line), "\r"))
				}
			}
		}
	}
}

// pregreet holds the greeting back for Config.SMTP.PregreetWait (RFC 5321
// §4.3.1: the client waits for the greeting): a client that talks during the
// wait is refused with 554 5.5.1 (postscreen's pregreet test), its bytes
// never reach go-smtp. A client that passed is not tested again for a day.
// Runs on go-smtp's goroutine for this connection, before the first Read.
func (c *conn) pregreet() string {
	wait := c.s.Config.SMTP.PregreetWait.D()
	now := c.s.now()
	if wait <= 0 || c.s.pregreetDone(c.ip, now) {
		return ""
	}
	c.SetReadDeadline(time.Now().Add(wait))
	var early [512]byte // any byte is a refusal: what it says is never used
	n, err := c.Conn.Read(early[:])
	c.SetReadDeadline(time.Time{})
	var ne net.Error
	switch {
	case n > 0:
		reply := fmt.Sprintf("554 5.5.1 %s Protocol error: talking before the greeting", c.s.Config.Hostname)
		c.s.rejected(c.ip, "pregreet", reply, "bytes", n)
		return reply
	case errors.As(err, &ne) && ne.Timeout():
		c.s.pregreetPassed(c.ip, now)
	case err != nil:
		c.rerr = err // gone: go-smtp finds out at its first read
	}
	return ""
}

// startDNSBL looks the client up in the blocklists, in the background,
// from the moment it connects; blocklist waits for the verdict.
func (c *conn) startDNSBL() {
	if c.s.DNSBL == nil {
		return
	}
	c.blDone = make(chan struct{})
	go func() {
		defer close(c.blDone)
		c.bl = c.s.DNSBL.Check(context.Background(), c.ip)
		if len(c.bl.Failed) > 0 {
			c.s.stats().Add("dnsbl_error")
			c.s.log().Warn("dnsbl lookup failed, not counted", "client", c.ip.String(), "zones", c.bl.Failed)
		}
	}()
}

func (c *conn) blocklist() dnsbl.Verdict {
	if c.blDone == nil {
		return dnsbl.Verdict{}
	}
	<-c.blDone
	return c.bl
}

// Close closes the socket once and forgets the connection.
func (c *conn) Close() error {
	err := net.ErrClosed
	c.closeOnce.Do(func() {
		err = c.Conn.Close()
		c.s.untrack(c)
		// Normally go-smtp closes from the connection's own goroutine, after
		// its last Read. Closed from elsewhere (shutdown) while a Read runs,
		// the buffer is left to that Read and the garbage collector.
		if c.rmu.TryLock() {
			b := c.base
			c.base, c.buf, c.fwd = nil, nil, 0
			c.rmu.Unlock()
			readBufs.Put(&b)
		}
	})
	return err
}

// clientName returns the client's forward-confirmed reverse DNS name, looked
// up once per connection (started by the first call, see startLookup).
func (c *conn) clientName() string {
	c.startLookup()
	<-c.nameDone
	return c.name
}

// doneChan is closed: what it waits for is there already.
var doneChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (c *conn) startLookup() {
	c.nameOnce.Do(func() {
		// A cached answer (the usual case: the same senders come back)
		// needs no goroutine; a look-up runs while the dialogue goes on.
		if name, ok := c.s.knownName(c.ip); ok {
			c.name, c.nameDone = name, doneChan
			return
		}
		c.nameDone = make(chan struct{})
		go func() {
			defer close(c.nameDone)
			c.name = c.s.verifiedName(c.ip)
		}()
	})
}

// parseCmd splits a command line the way go-smtp does (conn must agree with it
// on what each line is), plus the XCLIENT and XFORWARD lines conn answers.
// Only the argument is copied out of line (each line is parsed twice).
func parseCmd(line []byte) (cmd, arg string) {
	b := bytes.TrimRight(line, "\r\n")
	switch {
	case len(b) >= 8 && bytes.EqualFold(b[:8], []byte("STARTTLS")):
		return "STARTTLS", ""
	case len(b) >= 7 && bytes.EqualFold(b[:7], []byte("XCLIENT")), len(b) >= 8 && bytes.EqualFold(b[:8], []byte("XFORWARD")):
		// go-smtp has no such commands (it answers 501); conn refuses them.
		cmd, arg, _ := strings.Cut(string(b), " ")
		return strings.ToUpper(cmd), strings.TrimSpace(arg)
	case len(b) == 4:
		return verb(b), ""
	case len(b) > 5 && b[4] == ' ':
		return verb(b[:4]), string(bytes.TrimSpace(b[5:]))
	}
	return "", ""
}

// verb is a four-letter command in upper case; the usual ones without an
// allocation.
func verb(b []byte) string {
	var u [4]byte
	for i, c := range b[:4] {
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		u[i] = c
	}
	switch string(u[:]) {
	case "EHLO":
		return "EHLO"
	case "HELO":
		return "HELO"
	case "MAIL":
		return "MAIL"
	case "RCPT":
		return "RCPT"
	case "DATA":
		return "DATA"
	case "BDAT":
		return "BDAT"
	case "QUIT":
		return "QUIT"
	case "RSET":
		return "RSET"
	case "NOOP":
		return "NOOP"
	case "ETRN":
		return "ETRN"
	}
	return string(u[:])
}

// chunkSize parses BDAT's arguments as go-smtp does: ok means go-smtp will
// read n bytes of chunk after the line, whatever it answers.
func chunkSize(arg string) (n int64, ok bool) {
	f := strings.Fields(arg)
	if len(f) == 0 || len(f) > 2 || len(f) == 2 && !strings.EqualFold(f[1], "LAST") {
		return 0, false
	}
	u, err := strconv.ParseUint(f[0], 10, 32)
	if err != nil {
		return 0, false
	}
	return int64(u), true
}

// sourceRouted reports a RCPT argument "TO:<@relay:user@domain>" (RFC 5321
// §4.1.2 A-d-l). go-smtp drops the route silently, so conn refuses these.
func sourceRouted(arg string) bool {
	if len(arg) < 3 || !strings.EqualFold(arg[:3], "TO:") {
		return false
	}
	path := strings.TrimPrefix(strings.TrimSpace(arg[3:]), "<")
	return strings.HasPrefix(path, "@")
}

func remoteIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	if a != nil {
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			return ap.Addr().Unmap()
		}
	}
	return netip.Addr{}
}

// addrLiteral writes ip as an RFC 5321 §4.1.3 address literal.
func addrLiteral(ip netip.Addr) string {
	switch {
	case !ip.IsValid():
		return "[unknown]"
	case ip.Is4():
		return "[" + ip.String() + "]"
	}
	return fmt.Sprintf("[IPv6:%s]", ip.WithZone("").String())
}
