// Package smtpd is the inbound SMTP door: it accepts mail for the configured
// customer domains only and hands each message to the durable queue.
//
// Invariants:
//   - No 250 before durable: the reply to DATA (or BDAT LAST) is 250 only after
//     store.Enqueue returned nil, i.e. after the message is fsynced/committed.
//   - Local faults are 4xx, never 5xx: a store error, a timeout or anything
//     else that is our problem answers 4xx so the sender keeps the mail. 5xx is
//     kept for what the sender must not retry: relaying (550 5.7.1), size
//     (552 5.3.4) and syntax.
//   - A message is never held whole in memory: the body streams from the
//     socket through store.Enqueue, after our Received header.
//   - Every refusal goes through Server.rejected: one log line with the
//     client, the rule and the reply, and one count for the rule in Stats.
//   - A client the blocklists reject never gets past MAIL; a recipient is
//     accepted only for a configured domain and, when the domain validates
//     recipients, only if the validator says so (a doubt is never a 5xx).
//
// The protocol engine is github.com/emersion/go-smtp. What it lacks lives in a
// net.Conn wrapper (conn.go) that every accepted connection goes through:
// idle deadlines per read (RFC 5321 §4.5.3.2) and the commands we answer
// ourselves (ETRN, source-routed RCPT, STARTTLS: the wrapper runs TLS itself
// so that every door rule sees clear text inside TLS too). The wrapper adds
// ETRN and STARTTLS to go-smtp's EHLO reply.
package smtpd

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"backupmx/internal/config"
	"backupmx/internal/dnsbl"
	"backupmx/internal/recipients"
	"backupmx/internal/store"
)

// Resolver is the DNS the door needs: reverse names for Received (forward
// confirmed), and the primaries' addresses to authorise ETRN. *net.Resolver
// implements it.
type Resolver interface {
	LookupAddr(ctx context.Context, addr string) ([]string, error)
	LookupHost(ctx context.Context, host string) ([]string, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
}

// lookupTimeout bounds the DNS work done for one connection or one ETRN.
const lookupTimeout = 10 * time.Second

// Server is the inbound SMTP service. Set the fields, then call Serve or
// ListenAndServe; the fields must not change afterwards.
type Server struct {
	Config   *config.Config
	Store    store.Store
	Log      *slog.Logger     // nil: discard
	Now      func() time.Time // nil: time.Now
	Resolver Resolver         // nil: net.DefaultResolver
	// Arrival is asked about a message's domains before the message is
	// stored: it may decide the first attempt of some (store.Envelope's
	// Deferred), and returns what to call once the message is durable (kicks
	// the scheduler). Optional. See queue.Scheduler.Arrival.
	Arrival func(domains []string) (deferred map[string]store.Deferral, queued func())
	// ETRN flushes a domain; called for an authorised ETRN (RFC 1985). Optional:
	// without it ETRN answers 458.
	ETRN func(domain string) error
	// DNSBL scores each client at connect; a listed client is refused at
	// MAIL. Optional: nil checks nothing.
	DNSBL *dnsbl.Checker
	// Recipients validates RCPT addresses of our domains. Optional: nil
	// accepts every address of a configured domain.
	Recipients *recipients.Validator
	// Stats counts rejections per rule; nil: the server keeps its own.
	Stats *Stats
	// TLS is the STARTTLS configuration (see tlsconf.Certs.ServerConfig);
	// nil: STARTTLS is neither offered nor accepted.
	TLS *tls.Config

	once      sync.Once
	smtp      *smtp.Server
	mu        sync.Mutex
	conns     map[*conn]struct{}
	listeners []net.Listener
	bound     []string // addresses ListenAndServe listens on
	closing   bool
	busy      int           // Data calls in progress
	drained   chan struct{} // closed when closing and nothing is left
	isDrained bool
	lim       limits // per-client connection state, under mu
	ownStats  Stats
	names     nameCache // verified reverse names of recent clients
}

func (s *Server) init() {
	s.once.Do(func() {
		srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
		srv.Domain = s.Config.Hostname
		srv.MaxMessageBytes = s.Config.SMTP.MaxMessageSize
		srv.MaxRecipients = s.Config.SMTP.MaxRecipients
		srv.EnableSMTPUTF8 = true
		srv.EnableDSN = true
		// go-smtp's ReadTimeout would be one deadline for a whole DATA body;
		// conn sets a fresh idle deadline on every read instead.
		srv.ReadTimeout = 0
		srv.WriteTimeout = s.Config.SMTP.CommandTimeout.D()
		srv.ErrorLog = errorLog{s.log()}
		s.smtp = srv
		s.conns = make(map[*conn]struct{})
	})
}

// Serve accepts connections on l until Shutdown or Close. It returns nil after
// a Shutdown or Close, or the listener's error.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
	err := s.smtp.Serve(&listener{Listener: l, s: s})
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil
	}
	return err
}

// ListenAndServe listens on every Config.SMTP.Listen address and serves them
// all. A bind failure is returned before anything is served. It returns when
// the listeners are closed: by Shutdown (graceful: call it first), by Close,
// or by ctx being cancelled, which closes everything at once.
func (s *Server) ListenAndServe(ctx context.Context) error {
	s.init()
	var ls []net.Listener
	for _, addr := range s.Config.SMTP.Listen {
		l, err := Listen(ctx, addr)
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return fmt.Errorf("smtpd: listen %s: %w", addr, err)
		}
		s.log().Info("listening", "addr", l.Addr().String())
		ls = append(ls, l)
	}
	s.mu.Lock()
	for _, l := range ls {
		s.bound = append(s.bound, l.Addr().String())
	}
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	errc := make(chan error, len(ls))
	for _, l := range ls {
		go func() { errc <- s.Serve(l) }()
	}
	var first error
	for range ls {
		if err := <-errc; err != nil && first == nil {
			first = err
			s.Close() // one listener failed: stop the others too
		}
	}
	return first
}

// Shutdown stops accepting and waits for open sessions to end. If ctx expires
// first, the remaining connections are closed and ctx's error returned.
//
// (go-smtp's own Shutdown is not used: its WaitGroup races an Add in Serve
// against the Wait; conn tracking here does the same job.)
func (s *Server) Shutdown(ctx context.Context) error {
	drained := s.stopListening()
	select {
	case <-drained:
		return nil
	case <-ctx.Done():
		s.closeConns()
		return ctx.Err()
	}
}

// Close stops accepting, closes every connection now and waits for the
// Enqueue calls in progress to return (their bodies are cut, so they fail
// fast). Those messages are not acknowledged; their senders retry.
func (s *Server) Close() error {
	drained := s.stopListening()
	s.closeConns()
	<-drained
	return nil
}

// stopListening closes the listeners; the channel is closed once no
// connection and no Data call is left.
func (s *Server) stopListening() <-chan struct{} {
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	for _, l := range s.listeners {
		l.Close()
	}
	s.listeners = nil
	if s.drained == nil {
		s.drained = make(chan struct{})
	}
	s.checkDrained()
	return s.drained
}

// checkDrained closes drained when closing and nothing is left; s.mu held.
func (s *Server) checkDrained() {
	if s.drained != nil && !s.isDrained && len(s.conns) == 0 && s.busy == 0 {
		close(s.drained)
		s.isDrained = true
	}
}

// enter and leave bracket a Data call, which go-smtp runs on a goroutine of
// its own for BDAT: it may outlive its connection.
func (s *Server) enter() {
	s.mu.Lock()
	s.busy++
	s.mu.Unlock()
}

func (s *Server) leave() {
	s.mu.Lock()
	s.busy--
	s.checkDrained()
	s.mu.Unlock()
}

// addrs returns the addresses ListenAndServe is listening on.
func (s *Server) addrs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.bound...)
}

func (s *Server) closeConns() {
	s.mu.Lock()
	cs := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

// track registers a new connection, or returns the rule and reply that
// refuse it (the connection limits, see limits.go).
func (s *Server) track(nc net.Conn) (c *conn, rule, reply string) {
	ip := remoteIP(nc.RemoteAddr())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil, "shutdown", fmt.Sprintf("421 4.3.2 %s Shutting down, try again later", s.Config.Hostname)
	}
	if rule, reply := s.admit(ip, s.now()); rule != "" {
		return nil, rule, reply
	}
	c = newConn(nc, s)
	s.conns[c] = struct{}{}
	return c, "", ""
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	s.release(c.ip)
	s.checkDrained()
}

// listener wraps every accepted connection in a conn, enforces the
// connection limits and starts the client's DNSBL lookup.
type listener struct {
	net.Listener
	s *Server
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		c, rule, reply := l.s.track(nc)
		if c == nil {
			go l.s.refuse(nc, rule, reply)
			continue
		}
		l.s.info("connection", slog.String("client", c.ip.String()))
		c.startDNSBL()
		return c, nil
	}
}

// Listen opens an SMTP listening socket. Accepted connections get no TCP
// keepalive: every read has its own idle deadline (RFC 5321 §4.5.3.2), which
// ends a dead client's session sooner, and three setsockopt calls per
// connection are saved.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	return (&net.ListenConfig{KeepAlive: -1}).Listen(ctx, "tcp", addr)
}

// refuse answers a connection over a limit with 421 (RFC 5321 §3.8) and closes it.
func (s *Server) refuse(nc net.Conn, rule, reply string) {
	defer nc.Close()
	s.rejected(remoteIP(nc.RemoteAddr()), rule, reply)
	nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(nc, "%s\r\n", reply)
}

func (s *Server) stats() *Stats {
	if s.Stats == nil {
		return &s.ownStats
	}
	return s.Stats
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// info logs at Info without looking up the caller's program counter, as
// slog.Logger.Info does for every line (for AddSource, which we never set):
// for the lines written once per connection or message.
func (s *Server) info(msg string, attrs ...slog.Attr) {
	l := s.log()
	ctx := context.Background()
	if !l.Enabled(ctx, slog.LevelInfo) {
		return
	}
	r := slog.NewRecord(s.now(), slog.LevelInfo, msg, 0)
	r.AddAttrs(attrs...)
	_ = l.Handler().Handle(ctx, r)
}

func (s *Server) now() time.Time {
	if s.Now == nil {
		return time.Now()
	}
	return s.Now()
}

func (s *Server) resolver() Resolver {
	if s.Resolver == nil {
		return net.DefaultResolver
	}
	return s.Resolver
}

// errorLog routes go-smtp's internal messages (mostly connection errors) to
// the operator's log: panics as errors, the rest at debug level.
type errorLog struct{ l *slog.Logger }

func (e errorLog) Printf(format string, v ...any) { e.print(fmt.Sprintf(format, v...)) }
func (e errorLog) Println(v ...any)               { e.print(fmt.Sprint(v...)) }

func (e errorLog) print(msg string) {
	if strings.HasPrefix(msg, "panic") {
		e.l.Error("smtp internal error", "error", msg)
		return
	}
	e.l.Debug("smtp connection error", "error", msg)
}
