package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"backupmx/internal/downgrade"
	"backupmx/internal/store"
)

// session is one connection that carries many messages. It is not safe for
// concurrent use.
type session struct {
	c      *Client
	sc     *smtpConn
	host   string
	to     Timeouts
	xfwd   bool // XFORWARD allowed for this destination
	broken bool // an error ended the dialogue: only Close is left
	closed bool
}

func (s *session) Host() string { return s.host }
func (s *session) TLS() string  { return s.sc.tls }

// Close says QUIT (unless the dialogue is broken) and closes the connection.
func (s *session) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	if !s.broken {
		s.sc.cmd(context.Background(), min(s.to.Command, quitTimeout), "QUIT")
	}
	return s.sc.raw.Close()
}

// errUnusable is returned by Send on a session that already failed.
var errUnusable = errors.New("session already failed or closed")

// Send runs one transaction: XFORWARD (when the host offers it and the
// domain allows it), MAIL, one RCPT per recipient, DATA. With PIPELINING
// (RFC 2920) all of these go out in one write and the replies are read in
// order; without it, one command at a time. Replies map to outcomes per
// recipient: 2xx accepted (after the final reply), 5xx rejected, anything
// else deferred. A failed transaction is followed by RSET so that the session
// can carry the next message. An I/O error, a timeout or a 421 (RFC 5321
// §3.8) ends the session: Send then returns an error, and the recipients with
// no outcome yet are listed as deferred.
func (s *session) Send(ctx context.Context, d *store.Delivery, body io.Reader) (Result, error) {
	res, err := s.send(ctx, d, body)
	res.NoDSN = !s.sc.has("DSN")
	return res, err
}

func (s *session) send(ctx context.Context, d *store.Delivery, body io.Reader) (res Result, err error) {
	if s.broken || s.closed {
		return deferRest(Result{}, d, localReply(421, "4.4.2", errUnusable.Error())), errUnusable
	}
	stop := context.AfterFunc(ctx, func() { s.sc.raw.Close() })
	defer stop()
	var last Reply // the reply that ended the session, if one did
	defer func() {
		if err == nil {
			return
		}
		s.broken = true
		if last.Code == 0 {
			last = localReply(451, "4.4.2", "connection to "+s.host+" failed: "+err.Error())
		}
		res = deferRest(res, d, last)
		err = asError(ctx, s.host, err)
	}()
	env := &d.Envelope
	sc := s.sc

	// Checks of our own before a word is sent.
	utf8 := env.UTF8
	if utf8 && !sc.has("SMTPUTF8") {
		// The sender's SMTPUTF8 says the message may need it; it does if
		// an address or a header is not ASCII (RFC 6531 §3.4). Then we
		// can't downgrade, so the message can't go this way; otherwise it
		// goes without the parameter, as Postfix sends it.
		hdr, whole, err := downgrade.Header(body)
		if err != nil {
			return allOf(d, localReply(451, "4.3.0", "reading message from the queue: "+err.Error())), nil
		}
		body = whole
		if !asciiAddrs(env.Sender, d.Recipients) || downgrade.Needed(hdr) {
			return allOf(d, localReply(554, "5.6.7", s.host+" does not support SMTPUTF8")), nil
		}
		utf8 = false
	}
	size := d.Size
	if strings.EqualFold(env.Body, "8BITMIME") && !sc.has("8BITMIME") {
		// RFC 6152 §3: converted to 7 bit (internal/downgrade), in memory:
		// rare (a primary without 8BITMIME), and it must succeed before
		// the transaction starts. A header with 8-bit bytes (or a structure
		// nested too deep) cannot be converted: the mail waits for a
		// primary that takes 8-bit data.
		var conv bytes.Buffer
		if err := downgrade.Convert(&conv, body); err != nil {
			if errors.Is(err, downgrade.ErrHeader) || errors.Is(err, downgrade.ErrNesting) {
				return allOf(d, localReply(450, "4.6.3", s.host+" does not support 8BITMIME, and the message cannot be converted: "+err.Error())), nil
			}
			return allOf(d, localReply(451, "4.3.0", "reading message from the queue: "+err.Error())), nil
		}
		s.c.log().Info("converted to 7 bit", "id", d.ID, "host", s.host, "size", conv.Len())
		body, size = &conv, int64(conv.Len())
	}
	if !validPath(env.Sender) {
		return allOf(d, localReply(553, "5.1.7", "bad sender address")), nil
	}

	// The commands of the transaction, each with its reply timeout.
	type command struct {
		line    string
		timeout time.Duration
		rcpt    string // for RCPT: the recipient
	}
	var cmds []command
	for _, l := range s.xforward(env) {
		cmds = append(cmds, command{line: l, timeout: s.to.Command})
	}
	nx := len(cmds)
	cmds = append(cmds, command{line: "MAIL FROM:<" + env.Sender + ">" + s.mailParams(d, size, utf8), timeout: s.to.Mail})
	for _, rc := range d.Recipients {
		if !validPath(rc.Addr) {
			res.Rejected = append(res.Rejected, RcptStatus{rc.Addr, localReply(553, "5.1.3", "bad recipient address")})
			continue
		}
		cmds = append(cmds, command{line: "RCPT TO:<" + rc.Addr + ">" + s.rcptParams(rc), timeout: s.to.Rcpt, rcpt: rc.Addr})
	}
	if len(cmds) == nx+1 { // no recipient left to send
		return res, nil
	}
	cmds = append(cmds, command{line: "DATA", timeout: s.to.DataInit})

	pipe := sc.has("PIPELINING")
	if pipe {
		lines := make([]string, len(cmds))
		for i, c := range cmds {
			lines[i] = c.line
		}
		if err := sc.write(ctx, s.to.Mail, lines...); err != nil {
			return res, err
		}
	}
	next := 0 // the command whose reply comes next
	reply := func() (Reply, error) {
		c := cmds[next]
		next++
		if pipe {
			return sc.readReply(ctx, c.timeout, "reply to "+verb(c.line))
		}
		return sc.cmd(ctx, c.timeout, c.line)
	}
	// abandon ends a failed transaction: under PIPELINING the replies to
	// what was sent are read first (a 354 to DATA gets an empty message:
	// just the final dot, RFC 2920 §3.1), then RSET.
	abandon := func(res Result) (Result, error) {
		for pipe && next < len(cmds) {
			r, err := reply()
			if err != nil {
				return res, err
			}
			if r.Code == 354 {
				if err := sc.write(ctx, s.to.DataBlock, "."); err != nil {
					return res, err
				}
				if _, err := sc.readReply(ctx, s.to.DataEnd, "reply to end of data"); err != nil {
					return res, err
				}
			}
		}
		return s.reset(ctx, res)
	}

	for next < nx {
		c := cmds[next]
		r, err := reply()
		if err != nil {
			return res, err
		}
		if r.Code == 421 {
			last = r
			return res, &replyError{"XFORWARD", r}
		}
		if r.Code/100 != 2 {
			// Only the primary's view of the client is lost, not the mail.
			s.c.log().Info("XFORWARD refused", "id", d.ID, "host", s.host, "line", c.line, "reply", r.String())
		}
	}

	r, err := reply()
	if err != nil {
		return res, err
	}
	if r.Code == 421 {
		last = r
		return res, &replyError{"MAIL", r}
	}
	if r.Code/100 != 2 {
		var addrs []string
		for _, c := range cmds[next : len(cmds)-1] {
			addrs = append(addrs, c.rcpt)
		}
		return abandon(addAll(res, addrs, r))
	}

	var accepted []string
	for next < len(cmds)-1 {
		rcpt := cmds[next].rcpt
		r, err := reply()
		if err != nil {
			return res, err
		}
		switch {
		case r.Code == 421:
			last = r
			return res, &replyError{"RCPT", r}
		case r.Code/100 == 2:
			accepted = append(accepted, rcpt)
		case r.Code/100 == 5:
			res.Rejected = append(res.Rejected, RcptStatus{rcpt, r})
		default:
			res.Deferred = append(res.Deferred, RcptStatus{rcpt, r})
		}
	}
	if len(accepted) == 0 {
		return abandon(res)
	}

	r, err = reply()
	if err != nil {
		return res, err
	}
	if r.Code == 421 {
		last = r
		return res, &replyError{"DATA", r}
	}
	if r.Code != 354 {
		return s.reset(ctx, addAll(res, accepted, r))
	}
	if err := s.writeBody(ctx, body); err != nil {
		return res, err
	}
	r, err = sc.readReply(ctx, s.to.DataEnd, "reply to end of data")
	if err != nil {
		return res, err
	}
	switch {
	case r.Code == 421:
		last = r
		return res, &replyError{"end of data", r}
	case r.Code/100 == 2:
		res.Accepted = accepted
		return res, nil
	default:
		return s.reset(ctx, addAll(res, accepted, r))
	}
}

// xforward returns the XFORWARD commands that tell the primary who the real
// client was (Postfix's XFORWARD_README): only when the host offers XFORWARD,
// the domain allows it, and the message came from outside (not a notice of
// ours); only the attributes the host listed; values xtext-encoded, unknown
// ones "[UNAVAILABLE]"; split so that no line exceeds 512 octets.
func (s *session) xforward(env *store.Envelope) []string {
	offered, ok := s.sc.ext["XFORWARD"]
	if !ok || !s.xfwd || env.Notice {
		return nil
	}
	want := make(map[string]bool)
	for _, a := range strings.Fields(strings.ToUpper(offered)) {
		want[a] = true
	}
	val := func(v string) string {
		if v == "" {
			return "[UNAVAILABLE]"
		}
		return xtext(v)
	}
	addr := env.Client.Addr
	if ip, err := netip.ParseAddr(addr); err == nil && ip.Is6() && !ip.Is4In6() {
		addr = "IPV6:" + ip.String()
	}
	attrs := []struct{ k, v string }{
		{"NAME", val(env.Client.Name)},
		{"ADDR", val(addr)},
		{"PROTO", val(env.Client.Proto)},
		{"HELO", val(env.Client.HELO)},
		{"SOURCE", "REMOTE"},
	}
	var lines []string
	line := ""
	for _, a := range attrs {
		if !want[a.k] {
			continue
		}
		kv := a.k + "=" + a.v
		if line != "" && len(line)+1+len(kv) > 510 {
			lines = append(lines, line)
			line = ""
		}
		if line == "" {
			line = "XFORWARD " + kv
		} else {
			line += " " + kv
		}
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}

// writeBody copies the message block by block, each write under its own
// DataBlock deadline, then the final dot.
func (s *session) writeBody(ctx context.Context, body io.Reader) error {
	dw := s.sc.dotWriter()
	buf := make([]byte, 32<<10)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			s.sc.raw.SetDeadline(deadline(ctx, s.to.DataBlock))
			if _, err := dw.Write(buf[:n]); err != nil {
				return fmt.Errorf("sending message: %w", err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// Our side failed (the store): the message is cut short, so the
			// server must not take it. Closing the connection before the
			// final dot aborts the transaction (RFC 5321 §3.8).
			return fmt.Errorf("reading message from the queue: %w", rerr)
		}
	}
	s.sc.raw.SetDeadline(deadline(ctx, s.to.DataBlock))
	if err := dw.Close(); err != nil {
		return fmt.Errorf("sending message: %w", err)
	}
	return nil
}

// reset ends a failed transaction with RSET so the session can go on.
func (s *session) reset(ctx context.Context, res Result) (Result, error) {
	r, err := s.sc.cmd(ctx, s.to.Command, "RSET")
	if err != nil {
		return res, err
	}
	if r.Code/100 != 2 {
		return res, &replyError{"RSET", r}
	}
	return res, nil
}

func (s *session) mailParams(d *store.Delivery, size int64, utf8 bool) string {
	var b strings.Builder
	env := &d.Envelope
	sc := s.sc
	if sc.has("SIZE") && size > 0 {
		b.WriteString(" SIZE=" + strconv.FormatInt(size, 10)) // RFC 1870
	}
	if sc.has("8BITMIME") {
		switch strings.ToUpper(env.Body) {
		case "8BITMIME", "7BIT":
			b.WriteString(" BODY=" + strings.ToUpper(env.Body)) // RFC 6152
		}
	}
	if utf8 {
		b.WriteString(" SMTPUTF8") // RFC 6531 §3.4
	}
	if sc.has("DSN") { // RFC 3461 §4.3, §4.4
		switch ret := strings.ToUpper(env.Ret); ret {
		case "FULL", "HDRS":
			b.WriteString(" RET=" + ret)
		}
		if env.EnvID != "" && printable(env.EnvID) {
			b.WriteString(" ENVID=" + xtext(env.EnvID))
		}
	}
	return b.String()
}

// asciiAddrs reports whether the sender and every recipient address are
// ASCII (ORCPT is sent only as xtext of printable ASCII, see rcptParams).
func asciiAddrs(sender string, rcpts []store.Recipient) bool {
	if downgrade.Needed([]byte(sender)) {
		return false
	}
	for _, r := range rcpts {
		if downgrade.Needed([]byte(r.Addr)) {
			return false
		}
	}
	return true
}

func (s *session) rcptParams(r store.Recipient) string {
	if !s.sc.has("DSN") {
		return ""
	}
	var b strings.Builder
	if n := notifyParam(r.Notify); n != "" {
		b.WriteString(" NOTIFY=" + n) // RFC 3461 §4.1
	}
	// RFC 3461 §4.2: ORCPT=addr-type;xtext. Ours is stored decoded.
	if typ, addr, ok := strings.Cut(r.ORcpt, ";"); ok {
		typ, addr = strings.TrimSpace(typ), strings.TrimSpace(addr)
		if typ != "" && addr != "" && printable(typ) && printable(addr) && !strings.ContainsAny(typ, "+=") {
			b.WriteString(" ORCPT=" + typ + ";" + xtext(addr))
		}
	}
	return b.String()
}

// notifyParam returns a well-formed NOTIFY value or "".
func notifyParam(n string) string {
	n = strings.ToUpper(strings.ReplaceAll(n, " ", ""))
	if n == "" || n == "NEVER" {
		return n
	}
	for _, v := range strings.Split(n, ",") {
		switch v {
		case "SUCCESS", "FAILURE", "DELAY":
		default:
			return ""
		}
	}
	return n
}

// xtext encodes s as RFC 3461 §4 xtext.
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= '!' && c <= '~' && c != '+' && c != '=' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "+%02X", c)
		}
	}
	return b.String()
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// validPath refuses what would break the command line: controls, angle
// brackets and spaces.
func validPath(s string) bool {
	for _, c := range s {
		if c < ' ' || c == 0x7f || c == '<' || c == '>' || c == ' ' {
			return false
		}
	}
	return true
}

// localReply is a reply we made up, marked so in its text.
func localReply(code int, enhanced, text string) Reply {
	return Reply{Code: code, Enhanced: enhanced, Text: text + " (backupmx)"}
}

// allOf gives every recipient of d the same reply.
func allOf(d *store.Delivery, r Reply) Result {
	var addrs []string
	for _, rc := range d.Recipients {
		addrs = append(addrs, rc.Addr)
	}
	return addAll(Result{}, addrs, r)
}

// addAll files addrs as rejected (5xx) or deferred (anything else).
func addAll(res Result, addrs []string, r Reply) Result {
	for _, a := range addrs {
		if r.Permanent() {
			res.Rejected = append(res.Rejected, RcptStatus{a, r})
		} else {
			res.Deferred = append(res.Deferred, RcptStatus{a, r})
		}
	}
	return res
}

// deferRest files every recipient of d with no outcome yet as deferred.
func deferRest(res Result, d *store.Delivery, r Reply) Result {
	seen := make(map[string]bool)
	for _, a := range res.Accepted {
		seen[a] = true
	}
	for _, l := range [][]RcptStatus{res.Rejected, res.Deferred} {
		for _, st := range l {
			seen[st.Addr] = true
		}
	}
	for _, rc := range d.Recipients {
		if !seen[rc.Addr] {
			res.Deferred = append(res.Deferred, RcptStatus{rc.Addr, r})
		}
	}
	return res
}
