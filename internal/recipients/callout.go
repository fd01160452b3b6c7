package recipients

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"backupmx/internal/config"
)

// MXResolver finds a domain's MX hosts (*net.Resolver implements it).
type MXResolver interface {
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
}

// SMTPCallout verifies an address by asking the domain's primary:
// EHLO, MAIL FROM:<> (so that nothing can bounce back), RCPT TO, QUIT
// (RFC 5321 §3.5.3: RCPT is the reliable check, VRFY is often disabled).
// The primaries are the domain's `primary` hosts, or else its MX hosts more
// preferred than Config.Hostname (port 25).
type SMTPCallout struct {
	Config   *config.Config
	Resolver MXResolver
	// DialContext opens TCP connections; nil: a net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	Timeout     time.Duration // the whole dialogue with one host; 0: 30s
}

// Verify returns the first definite answer (2xx or 5xx to RCPT) of the
// domain's primaries, trying them in order; an error when none gave one.
func (c *SMTPCallout) Verify(ctx context.Context, domain, addr string) (Answer, error) {
	hosts, err := c.hosts(ctx, domain)
	if err != nil {
		return Answer{}, err
	}
	last := errors.New("no primary")
	for _, h := range hosts {
		ans, err := c.ask(ctx, h, addr)
		if err == nil {
			return ans, nil
		}
		last = fmt.Errorf("%s: %w", h, err)
	}
	return Answer{}, last
}

func (c *SMTPCallout) ask(ctx context.Context, host, addr string) (Answer, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dial := c.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	nc, err := dial(ctx, "tcp", host)
	if err != nil {
		return Answer{}, err
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	cl := smtp.NewClient(nc)
	defer cl.Close()
	if err := cl.Hello(c.Config.Hostname); err != nil {
		return Answer{}, err
	}
	if err := cl.Mail("", nil); err != nil {
		return Answer{}, err // even a 5xx here says nothing about addr
	}
	err = cl.Rcpt(addr, nil)
	cl.Quit()
	var se *smtp.SMTPError
	switch {
	case err == nil:
		return Answer{Exists: true, Reply: "250"}, nil
	case errors.As(err, &se) && se.Code >= 500:
		return Answer{Exists: false, Reply: strconv.Itoa(se.Code) + " " + se.Message}, nil
	}
	return Answer{}, err
}

func (c *SMTPCallout) hosts(ctx context.Context, domain string) ([]string, error) {
	if d := c.Config.Domain(domain); d != nil && len(d.Primary) > 0 {
		return d.Primary, nil
	}
	if c.Resolver == nil {
		return nil, errors.New("no resolver for MX lookup")
	}
	mxs, err := c.Resolver.LookupMX(ctx, domain)
	if err != nil {
		return nil, err
	}
	same := func(h string) bool {
		return strings.EqualFold(strings.TrimSuffix(h, "."), strings.TrimSuffix(c.Config.Hostname, "."))
	}
	ours := -1
	for _, mx := range mxs {
		if same(mx.Host) && (ours < 0 || int(mx.Pref) < ours) {
			ours = int(mx.Pref)
		}
	}
	var hosts []string
	for _, mx := range mxs {
		if !same(mx.Host) && (ours < 0 || int(mx.Pref) < ours) {
			hosts = append(hosts, net.JoinHostPort(strings.TrimSuffix(mx.Host, "."), "25"))
		}
	}
	if len(hosts) == 0 {
		return nil, errors.New("no primary for " + domain)
	}
	return hosts, nil
}
