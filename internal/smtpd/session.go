package smtpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/emersion/go-smtp"

	"backupmx/internal/config"
	"backupmx/internal/recipients"
	"backupmx/internal/store"
)

func reply(code int, enh smtp.EnhancedCode, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

func replyText(e *smtp.SMTPError) string {
	return fmt.Sprintf("%d %d.%d.%d %s", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], e.Message)
}

// session is one client's dialogue as go-smtp reports it.
type session struct {
	s  *Server
	sc *smtp.Conn
	c  *conn

	// Data runs on go-smtp's BDAT goroutine while Reset may run on the
	// connection's goroutine.
	mu  sync.Mutex
	env *store.Envelope // the open transaction, nil outside one
}

func (s *Server) newSession(sc *smtp.Conn) (smtp.Session, error) {
	c, ok := sc.Conn().(*conn)
	if !ok {
		return nil, reply(421, smtp.EnhancedCode{4, 3, 0}, "Internal error")
	}
	c.startLookup() // ready by the time DATA needs it for Received
	return &session{s: s, sc: sc, c: c}, nil
}

// Mail opens a transaction and picks its queue id, unless the client is on
// the blocklists (looked up since it connected): then 554 5.7.1 naming the
// zones, so a listed client never gets to RCPT or DATA.
func (x *session) Mail(from string, opts *smtp.MailOptions) error {
	if v := x.c.blocklist(); v.Reject {
		e := reply(554, smtp.EnhancedCode{5, 7, 1}, fmt.Sprintf("Service unavailable; client %s blocked using %s",
			addrLiteral(x.c.ip), strings.Join(v.Listed, ", ")))
		x.s.rejected(x.c.ip, "dnsbl", replyText(e), "sender", from, "score", v.Score)
		return e
	}
	proto := "SMTP"
	if x.c.esmtp.Load() {
		proto = "ESMTP"
	}
	if x.c.tlsState() != nil {
		proto = "ESMTPS" // RFC 3848
	}
	env := &store.Envelope{
		ID:     store.NewID(x.s.now()),
		Sender: from,
		Client: store.Client{
			Addr:  x.c.ip.String(),
			HELO:  x.sc.Hostname(),
			Proto: proto,
		},
		Domains: make(map[string][]store.Recipient),
	}
	if opts != nil {
		env.Body = string(opts.Body)
		env.UTF8 = opts.UTF8
		env.Ret = string(opts.Return)
		env.EnvID = opts.EnvelopeID
	}
	x.mu.Lock()
	x.env = env
	x.mu.Unlock()
	x.c.inTx.Store(true) // STARTTLS is refused from here to Reset
	return nil
}

// Rcpt accepts a recipient of a domain we serve and nothing else.
func (x *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	x.mu.Lock()
	env := x.env
	x.mu.Unlock()
	if env == nil {
		return reply(503, smtp.EnhancedCode{5, 5, 1}, "MAIL first")
	}
	addr, domain, rule, err := x.s.recipient(to)
	if err == nil {
		rule, err = x.s.validate(addr, domain)
	}
	if err != nil {
		x.s.rejected(x.c.ip, rule, replyText(err), "id", env.ID, "sender", env.Sender, "rcpt", to)
		return err
	}
	r := store.Recipient{Addr: addr}
	if opts != nil {
		notify := make([]string, len(opts.Notify))
		for i, n := range opts.Notify {
			notify[i] = string(n)
		}
		r.Notify = strings.Join(notify, ",")
		if opts.OriginalRecipient != "" {
			r.ORcpt = strings.ToLower(string(opts.OriginalRecipientType)) + ";" + opts.OriginalRecipient
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if !slices.ContainsFunc(env.Domains[domain], func(o store.Recipient) bool { return o.Addr == addr }) {
		env.Domains[domain] = append(env.Domains[domain], r)
	}
	return nil
}

// recipient applies the relay rules to a RCPT address: it returns the
// normalised address and its domain, or the refusal and the rule's name.
func (s *Server) recipient(to string) (addr, domain, rule string, err *smtp.SMTPError) {
	local, domain, rule := parseRecipient(to)
	switch {
	case rule == "syntax":
		return "", "", rule, reply(501, smtp.EnhancedCode{5, 1, 3}, "Bad recipient address syntax")
	case rule != "":
		return "", "", rule, reply(550, smtp.EnhancedCode{5, 7, 1}, "<"+to+">: relaying denied")
	case s.Config.Domain(domain) == nil:
		return "", "", "relay", reply(550, smtp.EnhancedCode{5, 7, 1}, "<"+to+">: relaying denied")
	}
	return local + "@" + domain, domain, "", nil
}

// validate asks the recipient validator about an address of one of our
// domains: 550 5.1.1 for an unknown user, 450 4.1.1 when it cannot tell and
// the domain says tempfail.
func (s *Server) validate(addr, domain string) (rule string, err *smtp.SMTPError) {
	if s.Recipients == nil {
		return "", nil
	}
	local := addr[:len(addr)-len(domain)-1]
	v, how := s.Recipients.CheckWithin(lookupTimeout+s.Config.SMTP.CommandTimeout.D()/2, local, domain)
	switch v {
	case recipients.Unknown:
		return "unknown_recipient", reply(550, smtp.EnhancedCode{5, 1, 1}, "<"+addr+">: Recipient address rejected: User unknown")
	case recipients.TempFail:
		return "unverified_recipient", reply(450, smtp.EnhancedCode{4, 1, 1}, "<"+addr+">: Recipient address rejected: unverified address, try again later")
	}
	if how == "unknown-policy" {
		s.log().Info("recipient accepted unverified", "rcpt", addr)
	}
	return "", nil
}

// parseRecipient splits an address as go-smtp parsed it from RCPT TO (source
// route already dropped, quotes already removed) into a local part, quoted
// again where needed, and a normalised domain. It refuses the forms that ask a
// server to relay: "%" and "!" routing and "@" in the local part, and address
// literals. rule names the refusal ("" when accepted).
func parseRecipient(to string) (local, domain, rule string) {
	i := strings.LastIndexByte(to, '@')
	if i <= 0 || i == len(to)-1 {
		return "", "", "syntax"
	}
	local, domain = to[:i], to[i+1:]
	switch {
	case strings.ContainsAny(local, "%!@"):
		return "", "", "relay_local_part"
	case strings.HasPrefix(domain, "["):
		return "", "", "address_literal"
	}
	domain, err := config.NormalizeDomain(domain)
	if err != nil || domain == "" {
		return "", "", "bad_domain"
	}
	return quoteLocal(local), domain, ""
}

// quoteLocal writes a local part as a Dot-string if it is one, else as a
// Quoted-string (RFC 5321 §4.1.2).
func quoteLocal(s string) string {
	dotAtom := s != "" && !strings.HasPrefix(s, ".") && !strings.HasSuffix(s, ".") && !strings.Contains(s, "..")
	for _, r := range s {
		if r <= ' ' || r == 0x7f || strings.ContainsRune(`"(),:;<>@[\]`, r) {
			dotAtom = false
		}
	}
	if dotAtom {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(s) + `"`
}

// Data streams the body, after our Received header, into the store and
// answers 250 only once Enqueue has returned nil.
func (x *session) Data(r io.Reader) error {
	x.s.enter()
	defer x.s.leave()
	x.mu.Lock()
	env := x.env
	x.mu.Unlock()
	if env == nil {
		return reply(503, smtp.EnhancedCode{5, 5, 1}, "MAIL first")
	}
	env.Received = x.s.now()
	env.Client.Name = x.c.clientName()
	domains := make([]string, 0, len(env.Domains))
	n := 0
	for d, rs := range env.Domains {
		domains = append(domains, d)
		n += len(rs)
	}
	slices.Sort(domains)
	var queued func()
	if x.s.Arrival != nil {
		env.Deferred, queued = x.s.Arrival(domains)
	}
	hdr := x.s.receivedHeader(env, x.c.tlsState())
	// Our Received field is one of the header's: the client's may be one
	// fewer than smtp.max_received.
	body := &bodyReader{r: &hopReader{r: r, max: x.s.Config.SMTP.MaxReceived - 1}}
	size, err := x.s.Store.Enqueue(context.Background(), env, io.MultiReader(strings.NewReader(hdr), body))
	if body.err != nil {
		rule, e := bodyError(body.err, x.s.Config.SMTP.MaxMessageSize, x.s.Config.SMTP.MaxReceived)
		x.s.rejected(x.c.ip, rule, replyText(e), "id", env.ID, "sender", env.Sender, "error", body.err)
		return e
	}
	if err != nil {
		e := reply(451, smtp.EnhancedCode{4, 3, 0}, "Local error, message not queued; try again later")
		x.s.log().Error("store failed", "id", env.ID, "client", env.Client.Addr, "sender", env.Sender, "error", err, "reply", replyText(e))
		return e
	}
	x.s.info("queued", slog.String("id", env.ID), slog.String("client", env.Client.Addr), slog.String("sender", env.Sender),
		slog.Int("recipients", n), slog.Int64("size", size), slog.String("domains", strings.Join(domains, ",")), slog.Int("deferred", len(env.Deferred)))
	if queued != nil {
		queued()
	}
	// go-smtp writes an *SMTPError returned by Data as the reply, 250 included.
	return reply(250, smtp.EnhancedCode{2, 0, 0}, "Ok: queued as "+env.ID)
}

// bodyError maps a failure reading the client's body to the reply and the
// rule for the log. Only "too big" and a mail loop are the sender's fault
// (5xx).
func bodyError(err error, max int64, maxReceived int) (string, *smtp.SMTPError) {
	var se *smtp.SMTPError
	switch {
	case errors.Is(err, smtp.ErrDataTooLarge):
		return "size", reply(552, smtp.EnhancedCode{5, 3, 4}, fmt.Sprintf("Message too big: the limit is %d bytes", max))
	case errors.As(err, &se) && se.Code/100 == 4:
		return "timeout", se // from conn.midMessage
	case errors.Is(err, errTooManyHops):
		return "loop", reply(554, smtp.EnhancedCode{5, 4, 6}, "Too many hops: more than "+strconv.Itoa(maxReceived)+" Received header fields, mail loop?")
	case errors.Is(err, smtp.ErrDataReset):
		return "aborted", reply(451, smtp.EnhancedCode{4, 3, 0}, "Message transfer aborted")
	}
	return "connection", reply(451, smtp.EnhancedCode{4, 4, 2}, "Connection error while receiving data")
}

// bodyReader remembers the first error reading the client's body, so that a
// client's fault is told apart from the store's whatever the store returns.
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

func (x *session) Reset() {
	x.mu.Lock()
	x.env = nil
	x.mu.Unlock()
	x.c.inTx.Store(false)
}

func (x *session) Logout() error { return nil }
