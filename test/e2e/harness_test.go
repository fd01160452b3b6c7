// Package e2e runs the real backupmx binary over loopback against SMTP peers
// we control: a primary that can be stopped and started on a fixed port, a
// sender's MX for notices, DNS from an in-process server.
//
// Invariant: everything these tests touch is on 127.0.0.0/8. Every server
// they start is configured with a dns.resolver on loopback (dnstest), never
// the system resolver, and every domain is under .test, so no test can send
// mail to a real domain.
//
// The helpers in this file (Server, Primary, SMTPConn, SendMail, FreePort,
// SplitReceived, Eventually) are meant for every test in the package.
package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"backupmx/internal/dnsres/dnstest"
)

// Hostname is the hostname every test server is configured with: it appears
// in our banner, our Received header and our HELO to primaries.
const Hostname = "mx-backup.e2e.test"

// binPath is the backupmx binary built once by TestMain.
var binPath string

// TestMain builds the binary from this checkout, or takes the one named by
// $E2E_BACKUPMX_BIN.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "backupmx-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "backupmx")
	if bin := os.Getenv("E2E_BACKUPMX_BIN"); bin != "" {
		binPath = bin // a binary built elsewhere (a release, another checkout)
	} else {
		build := exec.Command("go", "build", "-o", binPath, "backupmx/cmd/backupmx")
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: go build ./cmd/backupmx failed: %v\n%s", err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Bin returns the path of the backupmx binary under test.
func Bin() string { return binPath }

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that no other caller in this process got. Ports come from below the
// kernel's ephemeral range, so that neither a listener on port 0 nor the
// source port of an outgoing connection takes a port that a test holds in
// reserve (a stopped primary): once, a server started after a stopped
// primary got the primary's port and relayed its mail to itself.
func FreePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	low := ephemeralLow()
	for range 1000 {
		port := 10000 + rand.IntN(low-10000)
		if portsGiven[port] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // in use, by another test process or anything else
		}
		l.Close()
		portsGiven[port] = true
		return port
	}
	t.Fatal("FreePort: no free port found below the ephemeral range")
	return 0
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{} // under portsMu
)

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's
// default, 32768, if it can't be read or leaves too little room below).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n < 20000 {
		return 32768
	}
	return n
}

// FreeAddr returns "127.0.0.1:port" for a port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
}

// Eventually polls cond every 50 ms until it returns true or timeout passes,
// then fails the test with msg.
func Eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// The backupmx server

// Domain is one [[domain]] of the configuration.
type Domain struct {
	Name    string
	Primary []string // host:port list
}

// Options shape a server's configuration. Zero values take small defaults
// fit for tests (see NewServer).
type Options struct {
	Domains       []Domain
	Retention     string   // queue.retention; default "1h"
	Retry         []string // queue.retry; default ["1h"]
	ProbeInterval string   // queue.probe_interval; default "1h"
	Resolver      string   // dns.resolver; default an empty dnstest server
	Smarthost     string   // notices.smarthost
	NoticesPort   int      // notices.port
	Extra         string   // raw TOML appended at the end (after the domains: use [[domain]] or a table)
	Store         string   // raw TOML for the [store] table; default the embedded engine in Dir/var
	Queue         string   // raw TOML lines added to the [queue] table (lease, batch, sessions…)
	Node          string   // node name (top-level "node"); default the hostname
	SMTPAddr      string   // smtp.listen; default FreeAddr
}

// Server is a backupmx binary running on loopback with its own directory.
type Server struct {
	t          testing.TB
	Dir        string // working directory; the store is Dir/var
	ConfigPath string
	SMTPAddr   string // 127.0.0.1:port
	AdminAddr  string
	LogPath    string // the server's stderr, over every run

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	err  error         // cmd.Wait's result, valid after done
}

// NewServer writes a configuration in a temporary directory and starts the
// binary on it; the server is killed when the test ends, and its log is
// printed if the test failed.
func NewServer(t testing.TB, o Options) *Server {
	t.Helper()
	dir := t.TempDir()
	s := &Server{
		t:          t,
		Dir:        dir,
		ConfigPath: filepath.Join(dir, "backupmx.toml"),
		SMTPAddr:   FreeAddr(t),
		AdminAddr:  FreeAddr(t),
		LogPath:    filepath.Join(dir, "stderr.log"),
	}
	if o.SMTPAddr != "" {
		s.SMTPAddr = o.SMTPAddr
	}
	if o.Retention == "" {
		o.Retention = "1h"
	}
	if len(o.Retry) == 0 {
		o.Retry = []string{"1h"}
	}
	if o.ProbeInterval == "" {
		o.ProbeInterval = "1h"
	}
	if o.Resolver == "" {
		o.Resolver = dnstest.Start(t).Addr // never the system resolver
	}
	var b strings.Builder
	fmt.Fprintf(&b, "hostname = %q\n", Hostname)
	if o.Node != "" {
		fmt.Fprintf(&b, "node = %q\n", o.Node)
	}
	fmt.Fprintf(&b, "[smtp]\nlisten = [%q]\ncommand_timeout = \"30s\"\ndata_timeout = \"30s\"\n", s.SMTPAddr)
	if o.Store != "" {
		fmt.Fprintf(&b, "[store]\n%s\n", o.Store)
	} else {
		fmt.Fprintf(&b, "[store]\nengine = \"embedded\"\ndir = %q\n", filepath.Join(dir, "var"))
	}
	fmt.Fprintf(&b, "[queue]\nretention = %q\nretry = [%s]\nprobe_interval = %q\nconnect_timeout = \"2s\"\n%s\n",
		o.Retention, quoteList(o.Retry), o.ProbeInterval, o.Queue)
	fmt.Fprintf(&b, "[admin]\nlisten = %q\n", s.AdminAddr)
	fmt.Fprintf(&b, "[dns]\nresolver = %q\n", o.Resolver)
	fmt.Fprintf(&b, "[notices]\nsmarthost = %q\n", o.Smarthost)
	if o.NoticesPort != 0 {
		fmt.Fprintf(&b, "port = %d\n", o.NoticesPort)
	}
	fmt.Fprintf(&b, "[log]\nlevel = \"debug\"\n")
	for _, d := range o.Domains {
		fmt.Fprintf(&b, "[[domain]]\nname = %q\nprimary = [%s]\n", d.Name, quoteList(d.Primary))
	}
	b.WriteString(o.Extra)
	if err := os.WriteFile(s.ConfigPath, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.mu.Lock()
		running := s.cmd != nil && !s.exited()
		s.mu.Unlock()
		if running {
			s.Kill9()
		}
		if t.Failed() {
			s.DumpLog()
		}
	})
	s.Start()
	return s
}

func quoteList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

// Start runs the binary on the server's configuration and waits until its
// SMTP port answers with a 220 banner.
func (s *Server) Start() {
	t := s.t
	t.Helper()
	done := s.startProcess()
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-done:
			s.DumpLog()
			t.Fatalf("backupmx exited during start-up: %v", s.err)
		default:
		}
		if c, err := net.DialTimeout("tcp", s.SMTPAddr, time.Second); err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "220") {
				return
			}
		}
		if time.Now().After(deadline) {
			s.DumpLog()
			t.Fatalf("backupmx did not answer on %s within 15s", s.SMTPAddr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startProcess runs the binary on the server's configuration without
// waiting for it to serve; the returned channel is closed when it exits.
func (s *Server) startProcess() chan struct{} {
	t := s.t
	t.Helper()
	logf, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(logf, "=== e2e: starting %s serve -config %s\n", binPath, s.ConfigPath)
	cmd := exec.Command(binPath, "serve", "-config", s.ConfigPath)
	cmd.Dir = s.Dir
	cmd.Stderr = logf
	cmd.Stdout = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	s.mu.Lock()
	s.cmd, s.done, s.err = cmd, done, nil
	s.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		close(done)
	}()
	return done
}

func (s *Server) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Kill9 kills the server with SIGKILL and waits for it to be gone.
func (s *Server) Kill9() {
	s.t.Helper()
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		s.t.Fatal("Kill9: server not started")
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Stop sends SIGTERM and waits (up to 40 s) for a clean exit with status 0.
func (s *Server) Stop() {
	s.t.Helper()
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		s.t.Fatal("Stop: server not started")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		s.t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		s.Kill9()
		s.t.Fatal("backupmx did not exit within 40s of SIGTERM")
	}
	s.mu.Lock()
	err := s.err
	s.mu.Unlock()
	if err != nil {
		s.t.Fatalf("backupmx exited after SIGTERM with %v, want status 0", err)
	}
}

// Restart starts the binary again on the same directory and configuration
// (after Kill9 or Stop).
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	running := s.cmd != nil && !s.exited()
	s.mu.Unlock()
	if running {
		s.t.Fatal("Restart: the server is still running")
	}
	s.Start()
}

// Log returns the server's stderr so far (every run).
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.LogPath)
	return string(b)
}

// DumpLog prints the server's stderr into the test log.
func (s *Server) DumpLog() {
	s.t.Logf("backupmx log (%s):\n%s", s.LogPath, s.Log())
}

// Item is one line of `backupmx queue list -json`.
type Item struct {
	ID          string    `json:"id"`
	Domain      string    `json:"domain"`
	Sender      string    `json:"sender"`
	Recipients  []string  `json:"recipients"`
	Size        int64     `json:"size"`
	Received    time.Time `json:"received"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	LastError   string    `json:"last_error"`
	State       string    `json:"state"`
}

// QueueCmd runs `backupmx queue ARGS… -config FILE` and returns its stdout,
// failing the test if it exits non-zero.
func (s *Server) QueueCmd(args ...string) string {
	s.t.Helper()
	out, errOut, err := s.queueCmd(args...)
	if err != nil {
		s.t.Fatalf("backupmx queue %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func (s *Server) queueCmd(args ...string) (stdout, stderr string, err error) {
	full := append([]string{"queue"}, args...)
	full = append(full, "-config", s.ConfigPath)
	cmd := exec.Command(binPath, full...)
	cmd.Dir = s.Dir
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// Queue returns the queue as `backupmx queue list -json` prints it.
func (s *Server) Queue() []Item {
	s.t.Helper()
	out := s.QueueCmd("list", "-json")
	var items []Item
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var it Item
		if err := json.Unmarshal([]byte(line), &it); err != nil {
			s.t.Fatalf("queue list -json: bad line %q: %v", line, err)
		}
		items = append(items, it)
	}
	return items
}

// WaitQueueLen waits until `queue list` shows exactly n deliveries.
func (s *Server) WaitQueueLen(n int, timeout time.Duration) []Item {
	s.t.Helper()
	var items []Item
	Eventually(s.t, timeout, fmt.Sprintf("queue list does not show %d deliveries", n), func() bool {
		items = s.Queue()
		return len(items) == n
	})
	return items
}

// ---------------------------------------------------------------------------
// A primary (or any SMTP destination) we control

// Message is one message a Primary accepted.
type Message struct {
	From       string   // reverse path, "" for <>
	To         []string // forward paths
	Data       []byte   // exactly the bytes after DATA, dot-unstuffed, CRLF kept
	HELO       string
	RemoteAddr string
	Body       string // MAIL FROM's BODY= (RFC 6152), "" if not given
}

// Primary is a recording SMTP server on a fixed loopback address: it can be
// stopped and started again on the same port, so that a backupmx
// configuration can point at it while it is down.
type Primary struct {
	t    testing.TB
	Addr string // 127.0.0.1:port, fixed for the Primary's life

	mu       sync.Mutex
	msgs     []Message
	delay    time.Duration
	dataHook func(*Message) error
	srv      *smtp.Server
	arrived  chan struct{} // closed and replaced on every accepted message
}

// NewPrimary reserves a loopback port for a primary but does not start it.
func NewPrimary(t testing.TB) *Primary {
	p := &Primary{t: t, Addr: FreeAddr(t), arrived: make(chan struct{})}
	t.Cleanup(p.Stop)
	return p
}

// Port returns the primary's port.
func (p *Primary) Port() int {
	_, port, _ := net.SplitHostPort(p.Addr)
	n, _ := strconv.Atoi(port)
	return n
}

// StartPrimary returns a running primary.
func StartPrimary(t testing.TB) *Primary {
	p := NewPrimary(t)
	p.Start()
	return p
}

// SetDelay makes the primary wait d before answering each message's data.
func (p *Primary) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// SetDataHook installs a function called with each message before it is
// recorded; a non-nil error (e.g. an *smtp.SMTPError) is the reply and the
// message is not recorded.
func (p *Primary) SetDataHook(f func(*Message) error) {
	p.mu.Lock()
	p.dataHook = f
	p.mu.Unlock()
}

// Start listens on p.Addr (retrying a little if the port is briefly busy).
func (p *Primary) Start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.srv != nil {
		p.t.Fatal("Primary.Start: already running")
	}
	var (
		l   net.Listener
		err error
	)
	for range 50 {
		if l, err = net.Listen("tcp", p.Addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		p.t.Fatalf("primary: listen on %s: %v", p.Addr, err)
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &primarySession{p: p, helo: c.Hostname(), remote: c.Conn().RemoteAddr().String()}, nil
	}))
	srv.Domain = "primary.e2e.test"
	srv.ReadTimeout = 30 * time.Second
	srv.WriteTimeout = 30 * time.Second
	srv.MaxMessageBytes = 64 << 20
	srv.MaxRecipients = 1000
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.AllowInsecureAuth = true
	p.srv = srv
	go srv.Serve(l)
}

// Stop closes the listener and every connection; the port stays reserved in
// the sense that Start binds it again.
func (p *Primary) Stop() {
	p.mu.Lock()
	srv := p.srv
	p.srv = nil
	p.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// Messages returns a copy of the messages accepted so far, in order.
func (p *Primary) Messages() []Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Message(nil), p.msgs...)
}

// WaitMessages waits until at least n messages have arrived and returns them
// all.
func (p *Primary) WaitMessages(n int, timeout time.Duration) []Message {
	p.t.Helper()
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		got, ch := len(p.msgs), p.arrived
		p.mu.Unlock()
		if got >= n {
			return p.Messages()
		}
		select {
		case <-ch:
		case <-deadline:
			p.t.Fatalf("primary %s: %d of %d messages after %v", p.Addr, got, n, timeout)
		}
	}
}

type primarySession struct {
	p      *Primary
	helo   string
	remote string
	from   string
	body   string
	to     []string
}

func (s *primarySession) Reset()        { s.from, s.body, s.to = "", "", nil }
func (s *primarySession) Logout() error { return nil }
func (s *primarySession) Mail(from string, opts *smtp.MailOptions) error {
	s.from, s.body, s.to = from, "", nil
	if opts != nil {
		s.body = string(opts.Body)
	}
	return nil
}
func (s *primarySession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.to = append(s.to, to)
	return nil
}
func (s *primarySession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m := Message{From: s.from, To: append([]string(nil), s.to...), Data: b, HELO: s.helo, RemoteAddr: s.remote, Body: s.body}
	s.p.mu.Lock()
	delay, hook := s.p.delay, s.p.dataHook
	s.p.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay)
	}
	if hook != nil {
		if err := hook(&m); err != nil {
			return err
		}
	}
	s.p.mu.Lock()
	s.p.msgs = append(s.p.msgs, m)
	close(s.p.arrived)
	s.p.arrived = make(chan struct{})
	s.p.mu.Unlock()
	return nil
}

// ---------------------------------------------------------------------------
// An SMTP client that shows every reply

// Reply is one SMTP reply; multi-line texts are joined with "\n".
type Reply struct {
	Code int
	Text string
}

func (r Reply) String() string { return fmt.Sprintf("%d %s", r.Code, r.Text) }

// SMTPConn is a plain SMTP client connection for scripted dialogues.
type SMTPConn struct {
	c  net.Conn
	tp *textproto.Conn
}

// DialSMTP connects to addr and reads the banner, which must be 220.
func DialSMTP(addr string) (*SMTPConn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	s := &SMTPConn{c: c, tp: textproto.NewConn(c)}
	r, err := s.Read()
	if err != nil {
		c.Close()
		return nil, err
	}
	if r.Code != 220 {
		c.Close()
		return nil, fmt.Errorf("banner: %v", r)
	}
	return s, nil
}

// Read reads one reply (30 s deadline).
func (s *SMTPConn) Read() (Reply, error) {
	s.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	code, msg, err := s.tp.ReadResponse(0)
	var te *textproto.Error
	if errors.As(err, &te) {
		err = nil
	}
	return Reply{code, msg}, err
}

// Cmd sends one command line and reads the reply.
func (s *SMTPConn) Cmd(format string, args ...any) (Reply, error) {
	s.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if err := s.tp.PrintfLine(format, args...); err != nil {
		return Reply{}, err
	}
	return s.Read()
}

// Data sends DATA, then data dot-stuffed (data must use CRLF line endings),
// and returns the reply to the final dot (or to DATA if it was not 354).
func (s *SMTPConn) Data(data []byte) (Reply, error) {
	r, err := s.Cmd("DATA")
	if err != nil || r.Code != 354 {
		return r, err
	}
	s.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	w := s.tp.DotWriter()
	if _, err := w.Write(data); err != nil {
		return Reply{}, err
	}
	if err := w.Close(); err != nil {
		return Reply{}, err
	}
	return s.Read()
}

// Close sends QUIT (best effort) and closes the connection.
func (s *SMTPConn) Close() error {
	s.c.SetDeadline(time.Now().Add(2 * time.Second))
	s.tp.PrintfLine("QUIT")
	s.tp.ReadResponse(0)
	return s.c.Close()
}

// Mail is one message to send with SendMail.
type Mail struct {
	HELO     string   // default "client.e2e.test"
	From     string   // "" sends MAIL FROM:<>
	MailArgs string   // appended to MAIL FROM, e.g. "BODY=8BITMIME"
	To       []string // RCPT TO, in order
	Data     []byte   // CRLF line endings; not dot-stuffed
}

// Send runs one transaction on an open connection (EHLO already done) and
// returns the first reply that ends it: a refusal of MAIL, of every RCPT, of
// DATA, or the reply to the final dot.
func (s *SMTPConn) Send(m Mail) (Reply, error) {
	r, err := s.Cmd("MAIL FROM:<%s>%s", m.From, prefixSpace(m.MailArgs))
	if err != nil || r.Code != 250 {
		return r, err
	}
	var last Reply
	ok := 0
	for _, to := range m.To {
		last, err = s.Cmd("RCPT TO:<%s>", to)
		if err != nil {
			return last, err
		}
		if last.Code == 250 || last.Code == 251 {
			ok++
		}
	}
	if ok == 0 {
		s.Cmd("RSET")
		return last, nil
	}
	return s.Data(m.Data)
}

func prefixSpace(s string) string {
	if s == "" {
		return ""
	}
	return " " + s
}

// SendMail connects to addr, says EHLO, sends m and quits; it returns the
// final reply (see SMTPConn.Send).
func SendMail(addr string, m Mail) (Reply, error) {
	c, err := DialSMTP(addr)
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	helo := m.HELO
	if helo == "" {
		helo = "client.e2e.test"
	}
	if r, err := c.Cmd("EHLO %s", helo); err != nil || r.Code != 250 {
		return r, fmt.Errorf("EHLO: %v %v", r, err)
	}
	return c.Send(m)
}

// QueueID extracts the queue id from "2.0.0 Ok: queued as ID" (the text of a
// 250 reply to the final dot), or "".
func QueueID(r Reply) string {
	const marker = "queued as "
	i := strings.LastIndex(r.Text, marker)
	if r.Code != 250 || i < 0 {
		return ""
	}
	return strings.TrimSpace(r.Text[i+len(marker):])
}

// SplitReceived checks that got is sent with exactly one header prepended,
// a Received header (folded lines allowed), and returns that header.
func SplitReceived(got, sent []byte) (string, error) {
	if !bytes.HasSuffix(got, sent) {
		return "", fmt.Errorf("delivered message does not end with the sent message (got %d bytes, sent %d)", len(got), len(sent))
	}
	h := string(got[:len(got)-len(sent)])
	if !strings.HasPrefix(h, "Received: ") || !strings.HasSuffix(h, "\r\n") {
		return h, fmt.Errorf("prepended text is not one Received header: %q", h)
	}
	lines := strings.Split(strings.TrimSuffix(h, "\r\n"), "\r\n")
	for _, l := range lines[1:] {
		if l == "" || (l[0] != ' ' && l[0] != '\t') {
			return h, fmt.Errorf("prepended text is more than one header: %q", h)
		}
	}
	return h, nil
}
