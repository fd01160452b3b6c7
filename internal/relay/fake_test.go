package relay

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// script maps a command to the fake server's reply. A key is either a whole
// command line ("RCPT TO:<b@example.test>", matched as a prefix) or a verb
// ("RCPT"); the longest matching key wins. Special keys: "greeting", "body"
// (while the message is being received) and "." (the final dot). Special
// replies: "hang" never answers, "drop" closes the connection, "tls-garbage"
// (for STARTTLS) answers 220 and then sends noise instead of a handshake.
type script map[string]string

var defaultReplies = script{
	"greeting": "220 fake.test ESMTP",
	"HELO":     "250 fake.test",
	"MAIL":     "250 2.1.0 ok",
	"RCPT":     "250 2.1.5 ok",
	"DATA":     "354 go ahead",
	".":        "250 2.0.0 queued",
	"RSET":     "250 2.0.0 ok",
	"NOOP":     "250 2.0.0 ok",
	"QUIT":     "221 2.0.0 bye",
	"STARTTLS": "220 2.0.0 ready",
}

// transaction is what the fake received for one message.
type transaction struct {
	mail  string   // the MAIL line with its parameters
	rcpts []string // RCPT lines that got 2xx
	body  string   // as received, dot-stuffing undone, CRLF kept
	reply string   // the final reply we gave
}

// fake is a scriptable SMTP server on a loopback address that records what it
// was told.
type fake struct {
	t      *testing.T
	ln     net.Listener
	script script
	ext    []string    // EHLO keywords; nil = a default set without STARTTLS
	cert   *tls.Config // used when STARTTLS is accepted

	mu    sync.Mutex
	conns []net.Conn
	lines []string // every command line, all connections
	piped []string // command lines that arrived with more bytes behind them (pipelined)
	txs   []transaction
	tls   int // handshakes completed
}

// startFake listens on ip:0 (ip in 127.0.0.0/8).
func startFake(t *testing.T, ip string, sc script, ext ...string) *fake {
	t.Helper()
	return startFakeTLS(t, ip, testTLSConfig(t), sc, ext...)
}

// startFakeTLS is startFake with the given STARTTLS server configuration.
func startFakeTLS(t *testing.T, ip string, cert *tls.Config, sc script, ext ...string) *fake {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	if ext == nil {
		ext = []string{"PIPELINING", "SIZE 10000000", "8BITMIME", "DSN", "SMTPUTF8", "ENHANCEDSTATUSCODES"}
	}
	f := &fake{t: t, ln: ln, script: sc, ext: ext, cert: cert}
	go f.serve()
	t.Cleanup(f.close)
	return f
}

func (f *fake) addr() string { return f.ln.Addr().String() }

func (f *fake) port() int {
	_, p, _ := net.SplitHostPort(f.addr())
	n, _ := strconv.Atoi(p)
	return n
}

func (f *fake) close() {
	f.ln.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
}

func (f *fake) connections() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

func (f *fake) received() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lines...)
}

func (f *fake) pipelined() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.piped...)
}

func (f *fake) transactions() []transaction {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]transaction(nil), f.txs...)
}

func (f *fake) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns = append(f.conns, c)
		f.mu.Unlock()
		go f.handle(c)
	}
}

// reply finds the scripted reply for a command line or special key.
func (f *fake) reply(line string) string {
	best, bestLen := "", -1
	for _, sc := range []script{defaultReplies, f.script} {
		for k, v := range sc {
			verb, _, _ := strings.Cut(line, " ")
			if strings.EqualFold(k, verb) || strings.HasPrefix(line, k) {
				if len(k) >= bestLen {
					best, bestLen = v, len(k)
				}
			}
		}
	}
	if best == "" {
		return "500 5.5.1 unrecognized command"
	}
	return best
}

func (f *fake) handle(c net.Conn) {
	defer c.Close()
	var conn net.Conn = c
	br := bufio.NewReader(conn)
	// send answers r; false means the dialogue is over.
	send := func(r string) bool {
		switch r {
		case "hang":
			io.Copy(io.Discard, conn) // until the client gives up
			return false
		case "drop":
			return false
		}
		_, err := io.WriteString(conn, r+"\r\n")
		return err == nil
	}
	if !send(f.reply("greeting")) {
		return
	}
	var tx *transaction
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		f.mu.Lock()
		f.lines = append(f.lines, line)
		if br.Buffered() > 0 {
			f.piped = append(f.piped, line)
		}
		f.mu.Unlock()
		verb, _, _ := strings.Cut(strings.ToUpper(line), " ")
		if strings.HasPrefix(verb, "MAIL") || strings.HasPrefix(verb, "RCPT") {
			verb, _, _ = strings.Cut(verb, ":")
			verb = strings.TrimSpace(strings.Fields(verb)[0])
		}
		r := f.reply(line)
		switch verb {
		case "EHLO":
			if _, ok := f.script["EHLO"]; ok {
				r = f.script["EHLO"]
				break
			}
			lines := append([]string{"fake.test greets you"}, f.ext...)
			var b strings.Builder
			for i, l := range lines {
				sep := "-"
				if i == len(lines)-1 {
					sep = " "
				}
				b.WriteString("250" + sep + l)
				if i < len(lines)-1 {
					b.WriteString("\r\n")
				}
			}
			r = b.String()
		case "MAIL":
			if strings.HasPrefix(r, "2") {
				tx = &transaction{mail: line}
			}
		case "RCPT":
			if strings.HasPrefix(r, "2") && tx != nil {
				tx.rcpts = append(tx.rcpts, line)
			}
		case "RSET":
			tx = nil
		case "STARTTLS":
			if r == "tls-garbage" {
				send("220 2.0.0 ready")
				io.WriteString(conn, "this is not a TLS record\r\n")
				return
			}
			if strings.HasPrefix(r, "220") {
				if !send(r) {
					return
				}
				tc := tls.Server(conn, f.cert)
				if err := tc.Handshake(); err != nil {
					return
				}
				f.mu.Lock()
				f.tls++
				f.mu.Unlock()
				conn, br, tx = tc, bufio.NewReader(tc), nil
				continue
			}
		case "DATA":
			if strings.HasPrefix(r, "354") && (tx == nil || len(tx.rcpts) == 0) {
				r = "554 5.5.1 Error: no valid recipients" // as Postfix, RFC 2920 §3.1
			}
			if !strings.HasPrefix(r, "354") {
				break
			}
			if !send(r) {
				return
			}
			body, ok := f.readBody(br)
			if !ok {
				return
			}
			r = f.reply(".")
			if tx != nil {
				tx.body, tx.reply = body, r
				f.mu.Lock()
				f.txs = append(f.txs, *tx)
				f.mu.Unlock()
			}
			tx = nil
		case "QUIT":
			send(r)
			return
		}
		if !send(r) {
			return
		}
	}
}

// readBody reads the message up to the final dot, undoing dot-stuffing.
// With "body": "drop" scripted it gives up after the first line.
func (f *fake) readBody(br *bufio.Reader) (string, bool) {
	var b strings.Builder
	for n := 0; ; n++ {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", false
		}
		if n == 0 && f.script["body"] == "drop" {
			return "", false
		}
		if line == ".\r\n" {
			return b.String(), true
		}
		b.WriteString(strings.TrimPrefix(line, "."))
	}
}

// testTLSConfig is a server config with a fresh self-signed certificate.
func testTLSConfig(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "fake.test"},
		DNSNames:     []string{"fake.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}
