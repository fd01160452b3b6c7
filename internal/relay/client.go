package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"backupmx/internal/config"
	"backupmx/internal/dnsres"
)

// Timeouts bound every wait of a dialogue. A zero field takes its default:
// RFC 5321 §4.5.3.2 for the SMTP steps, config queue.connect_timeout (else 30 s)
// for Connect.
type Timeouts struct {
	Connect   time.Duration // TCP connect, per address
	Greeting  time.Duration // 220 banner: 5 min
	Command   time.Duration // EHLO/HELO, STARTTLS and its handshake, RSET, QUIT: 5 min
	Mail      time.Duration // MAIL FROM: 5 min
	Rcpt      time.Duration // RCPT TO: 5 min
	DataInit  time.Duration // DATA until 354: 2 min
	DataBlock time.Duration // each block of the message written: 3 min
	DataEnd   time.Duration // final "." until the reply: 10 min
}

func (t Timeouts) withDefaults(connect time.Duration) Timeouts {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if connect <= 0 {
		connect = 30 * time.Second
	}
	def(&t.Connect, connect)
	def(&t.Greeting, 5*time.Minute)
	def(&t.Command, 5*time.Minute)
	def(&t.Mail, 5*time.Minute)
	def(&t.Rcpt, 5*time.Minute)
	def(&t.DataInit, 2*time.Minute)
	def(&t.DataBlock, 3*time.Minute)
	def(&t.DataEnd, 10*time.Minute)
	return t
}

// quitTimeout caps the wait for QUIT's reply: nothing depends on it.
const quitTimeout = 10 * time.Second

// Client is the Dialer: it routes a domain to its hosts and opens sessions.
//
// It speaks SMTP itself (conn.go) rather than through go-smtp's client, so
// that each step has its own RFC 5321 §4.5.3.2 timeout, the context can end a
// stuck dialogue, STARTTLS is opportunistic on an open connection and HELO
// follows any 5xx to EHLO, and so that it can pipeline (RFC 2920) and send
// XFORWARD. TLS follows the domain's policy (config.Domain.TLS): "may" tries
// STARTTLS without checking the certificate and falls back to plain text,
// "encrypt" never sends in plain text, "verify" also checks the certificate
// for the host name against tls_ca or the system roots. An 8-bit body for a
// primary without 8BITMIME is converted to 7 bit (internal/downgrade). Not
// done: downgrading SMTPUTF8 (mail that needs it, with a non-ASCII address or
// header, is refused 5.6.7 by a primary without it), ORCPT values that are not
// printable ASCII (left out).
// The zero value of every field but Config is usable; Config may be nil (then
// every domain is routed as a notice destination).
type Client struct {
	Hostname string         // our EHLO name; "" = Config.Hostname
	Config   *config.Config // customer domains (Primary) and Notices
	// Resolver answers MX and address lookups; nil = dnsres.New(Config.DNS.Resolver).
	Resolver dnsres.Resolver
	// DialContext opens TCP connections; nil = a net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	Timeouts    Timeouts
	// TLSConfig is the base for STARTTLS; the domain's policy sets
	// InsecureSkipVerify, RootCAs (tls_ca) and ServerName.
	TLSConfig *tls.Config
	Log       *slog.Logger // nil: discard
	// MXPort is the port of MX hosts of customer domains; 0 = 25. (Notice
	// destinations use Config.Notices.Port.)
	MXPort int
}

var _ Dialer = (*Client)(nil)

// ErrNoPrimary: a customer domain has no Primary list and no MX more
// preferred than ours.
var ErrNoPrimary = errors.New("no primary for domain")

// ErrLoopsBack: the host we reached answers EHLO with our own name, so the
// route leads back to this server (or to a node sharing its hostname).
var ErrLoopsBack = errors.New("mail loops back to myself")

// Error is why Dial or Probe failed, about the last host tried.
type Error struct {
	Host  string // host:port; "" when routing failed before any host
	Reply Reply  // what the host answered, if it answered (else Code 0)
	Err   error  // the cause when there was no reply: DNS, connect, I/O, timeout
	// Permanent: the destination can't take mail at all (null MX, RFC 7505;
	// no such domain). Never set for customer domains: for them every failure
	// is worth retrying.
	Permanent bool
}

func (e *Error) Error() string {
	var s string
	switch {
	case e.Err != nil:
		s = e.Err.Error()
	case e.Reply.Code != 0:
		s = e.Reply.String()
	default:
		s = "failed"
	}
	if e.Host != "" {
		s = e.Host + ": " + s
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// IsPermanent reports whether err is an *Error marked Permanent.
func IsPermanent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Permanent
}

// target is one host to try, in preference order.
type target struct {
	host     string // name or IP literal, no trailing dot
	port     string
	implicit bool           // the domain itself, for lack of MX (RFC 5321 §5.1)
	policy   string         // config.TLSMay (default ""), TLSEncrypt, TLSVerify
	roots    *x509.CertPool // for TLSVerify; nil = system roots
	xforward bool
}

func (t target) String() string { return net.JoinHostPort(t.host, t.port) }

// Dial opens a session to the first of domain's hosts (and of each host's
// addresses) that greets with 2xx and accepts EHLO or HELO.
func (c *Client) Dial(ctx context.Context, domain string) (Session, error) {
	s, err := c.dial(ctx, domain)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Probe dials domain like Dial and says QUIT: nil means a primary is up.
func (c *Client) Probe(ctx context.Context, domain string) error {
	s, err := c.dial(ctx, domain)
	if err != nil {
		return err
	}
	s.Close()
	return nil
}

func (c *Client) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

func (c *Client) resolver() dnsres.Resolver {
	if c.Resolver != nil {
		return c.Resolver
	}
	addr := ""
	if c.Config != nil {
		addr = c.Config.DNS.Resolver
	}
	return dnsres.New(addr)
}

func (c *Client) hostname() string {
	if c.Hostname != "" {
		return c.Hostname
	}
	if c.Config != nil && c.Config.Hostname != "" {
		return c.Config.Hostname
	}
	return "localhost"
}

func (c *Client) timeouts() Timeouts {
	var connect time.Duration
	if c.Config != nil {
		connect = c.Config.Queue.ConnectTimeout.D()
	}
	return c.Timeouts.withDefaults(connect)
}

func (c *Client) dial(ctx context.Context, domain string) (*session, error) {
	targets, err := c.route(ctx, domain)
	if err != nil {
		return nil, err
	}
	var last error
	for _, t := range targets {
		ips, err := c.addresses(ctx, t.host)
		if err != nil {
			last = &Error{Host: t.String(), Err: err}
			if t.implicit && isNotFound(err) {
				// RFC 5321 §5.1: no MX and no address: not a mail domain.
				return nil, &Error{Host: t.String(), Permanent: true,
					Reply: Reply{Code: 550, Enhanced: "5.1.2", Text: "no MX and no address for " + t.host}}
			}
			continue
		}
		for _, ip := range ips {
			if err := ctx.Err(); err != nil {
				return nil, &Error{Host: t.String(), Err: err}
			}
			s, err := c.open(ctx, t, ip)
			if err == nil {
				return s, nil
			}
			last = err
		}
	}
	if last == nil {
		last = &Error{Err: fmt.Errorf("no host for %s", domain)}
	}
	return nil, last
}

// route lists the hosts for domain in the order to try them.
func (c *Client) route(ctx context.Context, domain string) ([]target, error) {
	domain = normalize(domain)
	var cfg *config.Config
	if c.Config != nil {
		cfg = c.Config
	}
	if cfg != nil && cfg.Domain(domain) != nil {
		d := cfg.Domain(domain)
		ts, err := c.routePrimary(ctx, domain, d)
		for i := range ts {
			ts[i].policy, ts[i].roots, ts[i].xforward = d.TLS, d.TLSRoots, d.SendXForward()
		}
		return ts, err
	}
	return c.routeNotice(ctx, domain)
}

// routePrimary: the configured list, else the MX records strictly more
// preferred than our own (all of them if we are not listed).
func (c *Client) routePrimary(ctx context.Context, domain string, d *config.Domain) ([]target, error) {
	if len(d.Primary) > 0 {
		var ts []target
		for _, p := range d.Primary {
			h, port, err := net.SplitHostPort(p)
			if err != nil {
				return nil, &Error{Err: fmt.Errorf("primary %q: %w", p, err)}
			}
			ts = append(ts, target{host: strings.TrimSuffix(h, "."), port: port})
		}
		return ts, nil
	}
	mx, err := c.resolver().LookupMX(ctx, domain)
	if err != nil && !isNotFound(err) {
		return nil, &Error{Err: fmt.Errorf("MX lookup for %s: %w", domain, err)}
	}
	me := normalize(c.hostname())
	ours := -1
	for _, m := range mx {
		if normalize(m.Host) == me && (ours < 0 || int(m.Pref) < ours) {
			ours = int(m.Pref)
		}
	}
	port := "25"
	if c.MXPort != 0 {
		port = strconv.Itoa(c.MXPort)
	}
	var ts []target
	for _, m := range mx { // already in preference order
		h := normalize(m.Host)
		if h == "" || (ours >= 0 && int(m.Pref) >= ours) {
			continue
		}
		ts = append(ts, target{host: h, port: port})
	}
	if len(ts) == 0 {
		return nil, &Error{Err: fmt.Errorf("%w %s", ErrNoPrimary, domain)}
	}
	return ts, nil
}

// routeNotice: the smarthost, else the MX records, else the domain itself.
func (c *Client) routeNotice(ctx context.Context, domain string) ([]target, error) {
	port := "25"
	if c.Config != nil {
		if sh := c.Config.Notices.Smarthost; sh != "" {
			h, p, err := net.SplitHostPort(sh)
			if err != nil {
				return nil, &Error{Err: fmt.Errorf("notices.smarthost %q: %w", sh, err)}
			}
			return []target{{host: strings.TrimSuffix(h, "."), port: p}}, nil
		}
		if c.Config.Notices.Port != 0 {
			port = strconv.Itoa(c.Config.Notices.Port)
		}
	}
	mx, err := c.resolver().LookupMX(ctx, domain)
	if err != nil && !isNotFound(err) {
		return nil, &Error{Err: fmt.Errorf("MX lookup for %s: %w", domain, err)}
	}
	if len(mx) == 0 {
		// RFC 5321 §5.1: no MX, the domain's own address is the implicit MX.
		return []target{{host: domain, port: port, implicit: true}}, nil
	}
	var ts []target
	null := false
	for _, m := range mx {
		h := normalize(m.Host)
		if h == "" {
			null = true
			continue
		}
		ts = append(ts, target{host: h, port: port})
	}
	if len(ts) == 0 && null {
		// RFC 7505 §3: the domain accepts no mail.
		return nil, &Error{Permanent: true,
			Reply: Reply{Code: 556, Enhanced: "5.1.10", Text: domain + " accepts no mail (null MX)"}}
	}
	return ts, nil
}

// addresses resolves a host to the IP addresses to try, in the resolver's order.
func (c *Client) addresses(ctx context.Context, host string) ([]string, error) {
	if ip := net.ParseIP(host); ip != nil {
		return []string{host}, nil
	}
	ips, err := c.resolver().LookupIPAddr(ctx, host)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		out = append(out, ip.String())
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no address for %s", host)
	}
	return out, nil
}

func isNotFound(err error) bool {
	var d *net.DNSError
	return errors.As(err, &d) && d.IsNotFound
}

// normalize lower-cases a host name and drops one trailing dot.
func normalize(s string) string { return strings.ToLower(strings.TrimSuffix(s, ".")) }

// tlsFailed marks a connection lost to STARTTLS, to be retried in plain text.
type tlsFailed struct{ err error }

func (e *tlsFailed) Error() string { return e.err.Error() }
func (e *tlsFailed) Unwrap() error { return e.err }

// open connects to one address of t; if STARTTLS broke the connection it
// tries once more without it.
func (c *Client) open(ctx context.Context, t target, ip string) (*session, error) {
	s, err := c.connect(ctx, t, ip, true)
	var tf *tlsFailed
	if errors.As(err, &tf) {
		s, err = c.connect(ctx, t, ip, false)
	}
	return s, err
}

func (c *Client) connect(ctx context.Context, t target, ip string, useTLS bool) (*session, error) {
	to := c.timeouts()
	dial := c.DialContext
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	host := t.String()
	dctx, cancel := context.WithTimeout(ctx, to.Connect)
	raw, err := dial(dctx, "tcp", net.JoinHostPort(ip, t.port))
	cancel()
	if err != nil {
		return nil, &Error{Host: host, Err: err}
	}
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	sc := newSMTPConn(raw)
	fail := func(err error) (*session, error) {
		raw.Close()
		return nil, asError(ctx, host, err)
	}

	r, err := sc.readReply(ctx, to.Greeting, "greeting")
	if err != nil {
		return fail(err)
	}
	if r.Code/100 != 2 {
		// RFC 5321 §3.1: a 554 banner still expects our QUIT.
		sc.cmd(ctx, min(to.Command, quitTimeout), "QUIT")
		return fail(&replyError{"greeting", r})
	}
	name := c.hostname()
	if err := sc.hello(ctx, to.Command, name); err != nil {
		return fail(err)
	}
	if normalize(sc.peer) == normalize(name) {
		// The host answers with our own name: a route (a primary, an MX)
		// that leads back to us. Postfix's check, but a temporary fault
		// here: the configuration is ours to fix, the mail waits.
		sc.cmd(ctx, min(to.Command, quitTimeout), "QUIT")
		raw.Close()
		return nil, &Error{Host: host, Reply: localReply(451, "4.4.6", "mail for "+t.host+" loops back to myself ("+name+")"),
			Err: fmt.Errorf("%w: the host greets as %s", ErrLoopsBack, sc.peer)}
	}
	required := t.policy == config.TLSEncrypt || t.policy == config.TLSVerify
	refuse := func(why string) (*session, error) {
		sc.cmd(ctx, min(to.Command, quitTimeout), "QUIT")
		return fail(fmt.Errorf("tls = %q: %s; not sending in plain text", t.policy, why))
	}
	switch {
	case useTLS && sc.has("STARTTLS"):
		r, err := sc.cmd(ctx, to.Command, "STARTTLS")
		if err != nil {
			return fail(err)
		}
		if r.Code != 220 {
			// RFC 3207 §4: carry on in plain text, unless the policy forbids it.
			if required {
				return refuse("STARTTLS refused: " + r.String())
			}
			break
		}
		if err := sc.startTLS(ctx, to.Command, c.tlsConfig(t), name); err != nil {
			raw.Close()
			if ctx.Err() != nil {
				return nil, asError(ctx, host, err)
			}
			if required {
				return nil, asError(ctx, host, fmt.Errorf("tls = %q: %w", t.policy, err))
			}
			return nil, &tlsFailed{asError(ctx, host, err)}
		}
	case required:
		return refuse("the host does not offer STARTTLS")
	}
	raw.SetDeadline(time.Time{})
	return &session{c: c, sc: sc, host: host, to: to, xfwd: t.xforward}, nil
}

// tlsConfig is the client TLS configuration for t's policy: "verify" checks
// the chain (tls_ca or system roots) and the host name as configured or
// found in MX (an IP literal is checked against IP SANs); the other policies
// take any certificate, since any encryption beats plain text.
func (c *Client) tlsConfig(t target) *tls.Config {
	cfg := &tls.Config{}
	if c.TLSConfig != nil {
		cfg = c.TLSConfig.Clone()
	}
	if t.policy == config.TLSVerify {
		cfg.InsecureSkipVerify = false
		cfg.RootCAs = t.roots
		cfg.ServerName = t.host
		return cfg
	}
	cfg.InsecureSkipVerify = true
	if cfg.ServerName == "" && net.ParseIP(t.host) == nil {
		cfg.ServerName = t.host
	}
	return cfg
}

// asError makes err an *Error about host, preferring ctx's error when the
// context ended (that is what closed the connection).
func asError(ctx context.Context, host string, err error) *Error {
	ce := ctx.Err()
	if dl, ok := ctx.Deadline(); ok && ce == nil && !time.Now().Before(dl) {
		ce = context.DeadlineExceeded // our conn deadline fired just before ctx's timer
	}
	if ce != nil {
		return &Error{Host: host, Err: fmt.Errorf("%w (%v)", ce, err)}
	}
	var re *replyError
	if errors.As(err, &re) {
		return &Error{Host: host, Reply: re.reply, Err: err}
	}
	return &Error{Host: host, Err: err}
}
