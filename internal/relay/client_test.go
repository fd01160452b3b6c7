package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"backupmx/internal/config"
	"backupmx/internal/dnsres"
	"backupmx/internal/dnsres/dnstest"
	"backupmx/internal/store"
)

// tiny are the timeouts of every test: nothing here should take long.
var tiny = Timeouts{
	Connect: 2 * time.Second, Greeting: 300 * time.Millisecond, Command: time.Second,
	Mail: time.Second, Rcpt: time.Second, DataInit: time.Second,
	DataBlock: time.Second, DataEnd: 300 * time.Millisecond,
}

// newTestConfig is a validated config whose customer domain
// example.test has the given primaries.
func newTestConfig(t *testing.T, primaries ...string) *config.Config {
	t.Helper()
	c := &config.Config{
		Hostname: "backup.ours.test",
		Domains:  []*config.Domain{{Name: "example.test", Primary: primaries}, {Name: "mxonly.test"}},
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// newTestClient points example.test at the fake server. The resolver is
// unreachable on purpose: these tests must not need DNS.
func newTestClient(t *testing.T, primaries ...string) *Client {
	return &Client{
		Config:   newTestConfig(t, primaries...),
		Resolver: dnsres.New("127.0.0.1:1"),
		Timeouts: tiny,
	}
}

func delivery(rcpts ...string) *store.Delivery {
	d := &store.Delivery{
		ID: "Q1", Domain: "example.test", Size: 42,
		Envelope: store.Envelope{ID: "Q1", Sender: "s@sender.test", Body: "8BITMIME", Ret: "HDRS", EnvID: "env+1"},
	}
	for _, r := range rcpts {
		d.Recipients = append(d.Recipients, store.Recipient{Addr: r})
	}
	return d
}

const body = "Subject: hi\n\n.leading dot\nbye\n"

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func addrs(l []RcptStatus) []string {
	var out []string
	for _, s := range l {
		out = append(out, s.Addr)
	}
	return out
}

func TestSendCarriesParameters(t *testing.T) {
	f := startFake(t, "127.0.0.1", nil)
	c := newTestClient(t, f.addr())
	s, err := c.Dial(ctxT(t), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Host() != f.addr() {
		t.Errorf("Host() = %q, want %q", s.Host(), f.addr())
	}
	d := delivery("a@example.test", "b@example.test")
	d.Recipients[0].Notify = "FAILURE,DELAY"
	d.Recipients[0].ORcpt = "rfc822;A+x@example.test"
	res, err := s.Send(ctxT(t), d, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Accepted, []string{"a@example.test", "b@example.test"}) || res.Rejected != nil || res.Deferred != nil {
		t.Fatalf("result = %+v", res)
	}
	txs := f.transactions()
	if len(txs) != 1 {
		t.Fatalf("%d transactions, want 1", len(txs))
	}
	tx := txs[0]
	if want := "MAIL FROM:<s@sender.test> SIZE=42 BODY=8BITMIME RET=HDRS ENVID=env+2B1"; tx.mail != want {
		t.Errorf("MAIL = %q\nwant   %q", tx.mail, want)
	}
	wantRcpts := []string{
		"RCPT TO:<a@example.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;A+2Bx@example.test",
		"RCPT TO:<b@example.test>",
	}
	if !slices.Equal(tx.rcpts, wantRcpts) {
		t.Errorf("RCPT = %q\nwant  %q", tx.rcpts, wantRcpts)
	}
	if want := "Subject: hi\r\n\r\n.leading dot\r\nbye\r\n"; tx.body != want {
		t.Errorf("body = %q, want %q", tx.body, want)
	}
	if s.TLS() != "" {
		t.Errorf("TLS() = %q without STARTTLS", s.TLS())
	}
}

func TestSendWithoutDSNOmitsDSNParameters(t *testing.T) {
	f := startFake(t, "127.0.0.1", nil, "8BITMIME")
	s, err := newTestClient(t, f.addr()).Dial(ctxT(t), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d := delivery("a@example.test")
	d.Recipients[0].Notify = "NEVER"
	if _, err := s.Send(ctxT(t), d, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	tx := f.transactions()[0]
	if tx.mail != "MAIL FROM:<s@sender.test> BODY=8BITMIME" || !slices.Equal(tx.rcpts, []string{"RCPT TO:<a@example.test>"}) {
		t.Errorf("MAIL %q RCPT %q", tx.mail, tx.rcpts)
	}
}

// A primary without 8BITMIME gets an 8-bit message converted to 7 bit
// (RFC 6152 §3), without BODY=, with the SIZE of what it is sent.
func TestEightBitConvertedForSevenBitPrimary(t *testing.T) {
	f := startFake(t, "127.0.0.1", nil, "SIZE 10000000", "PIPELINING")
	s, err := newTestClient(t, f.addr()).Dial(ctxT(t), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d := delivery("a@example.test")
	msg := "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n.d\xc3\xa9j\xc3\xa0 vu\r\n"
	res, err := s.Send(ctxT(t), d, strings.NewReader(msg))
	if err != nil || !slices.Equal(res.Accepted, []string{"a@example.test"}) {
		t.Fatalf("Send = %+v, %v", res, err)
	}
	tx := f.transactions()[0]
	want := "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n.d=C3=A9j=C3=A0 vu\r\n"
	if tx.body != want {
		t.Errorf("body = %q, want %q", tx.body, want)
	}
	if wantMail := "MAIL FROM:<s@sender.test> SIZE=" + strconv.Itoa(len(want)); tx.mail != wantMail {
		t.Errorf("MAIL %q, want %q", tx.mail, wantMail)
	}
}

// A message sent with SMTPUTF8 whose addresses and header are ASCII goes
// to a primary without SMTPUTF8 without the parameter (as Postfix sends
// it), body unchanged; RFC 6531 §3.4 refuses only mail that needs it.
func TestSMTPUTF8NotNeeded(t *testing.T) {
	f := startFake(t, "127.0.0.1", nil, "8BITMIME", "PIPELINING")
	s, err := newTestClient(t, f.addr()).Dial(ctxT(t), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d := delivery("a@example.test")
	d.Envelope.UTF8 = true
	msg := "Subject: ascii\r\n\r\nbody \xc3\xa9 in UTF-8\r\n"
	res, err := s.Send(ctxT(t), d, strings.NewReader(msg))
	if err != nil || !slices.Equal(res.Accepted, []string{"a@example.test"}) {
		t.Fatalf("Send = %+v, %v", res, err)
	}
	tx := f.transactions()[0]
	if tx.mail != "MAIL FROM:<s@sender.test> BODY=8BITMIME" {
		t.Errorf("MAIL %q, want no SMTPUTF8", tx.mail)
	}
	if tx.body != msg {
		t.Errorf("body = %q, want %q", tx.body, msg)
	}
}

// Each failure mode of a transaction is one entry.
func TestSendFailureModes(t *testing.T) {
	tests := []struct {
		name     string
		script   script
		ext      []string // nil = the default set
		envelope func(*store.Envelope)
		body     string // "" = body
		accepted []string
		rejected []string
		deferred []string
		code     int  // reply code of the first non-accepted recipient
		wantErr  bool // session unusable
		wantRSET bool
		noMAIL   bool
	}{
		{name: "4xx on RCPT", script: script{"RCPT": "450 4.2.1 try later"},
			deferred: []string{"a@example.test", "b@example.test"}, code: 450, wantRSET: true},
		{name: "5xx on RCPT for one of two", script: script{"RCPT TO:<b@example.test>": "550 5.1.1 no such user"},
			accepted: []string{"a@example.test"}, rejected: []string{"b@example.test"}, code: 550},
		{name: "5xx on RCPT for both", script: script{"RCPT": "550 5.1.1 no such user"},
			rejected: []string{"a@example.test", "b@example.test"}, code: 550, wantRSET: true},
		{name: "5xx on MAIL", script: script{"MAIL": "553 5.1.8 bad sender"},
			rejected: []string{"a@example.test", "b@example.test"}, code: 553, wantRSET: true},
		{name: "4xx on MAIL", script: script{"MAIL": "452 4.3.1 disk full"},
			deferred: []string{"a@example.test", "b@example.test"}, code: 452, wantRSET: true},
		{name: "5xx to DATA", script: script{"DATA": "554 5.5.1 no valid recipients"},
			rejected: []string{"a@example.test", "b@example.test"}, code: 554, wantRSET: true},
		{name: "5xx after DATA", script: script{".": "554 5.7.1 spam"},
			rejected: []string{"a@example.test", "b@example.test"}, code: 554, wantRSET: true},
		{name: "4xx after DATA", script: script{".": "451 4.3.0 local error"},
			deferred: []string{"a@example.test", "b@example.test"}, code: 451, wantRSET: true},
		{name: "5xx after DATA, one rcpt already rejected",
			script:   script{"RCPT TO:<a@example.test>": "550 5.1.1 no", ".": "552 5.3.4 too big"},
			rejected: []string{"a@example.test", "b@example.test"}, code: 550, wantRSET: true},
		{name: "421 on RCPT", script: script{"RCPT": "421 4.3.2 shutting down"},
			deferred: []string{"a@example.test", "b@example.test"}, code: 421, wantErr: true},
		{name: "421 after DATA", script: script{".": "421 4.3.2 bye"},
			deferred: []string{"a@example.test", "b@example.test"}, code: 421, wantErr: true},
		{name: "hangs after the final dot", script: script{".": "hang"},
			deferred: []string{"a@example.test", "b@example.test"}, code: 451, wantErr: true},
		{name: "hangs on RCPT", script: script{"RCPT TO:<b@example.test>": "hang"},
			deferred: []string{"a@example.test", "b@example.test"}, code: 451, wantErr: true},
		{name: "drops connection mid-DATA", script: script{"body": "drop"},
			deferred: []string{"a@example.test", "b@example.test"}, code: 451, wantErr: true},
		{name: "drops connection on MAIL", script: script{"MAIL": "drop"},
			deferred: []string{"a@example.test", "b@example.test"}, code: 451, wantErr: true},
		{name: "SMTPUTF8 needed (header), not offered", ext: []string{"8BITMIME", "DSN"},
			envelope: func(e *store.Envelope) { e.UTF8 = true }, body: "Subject: caf\xc3\xa9\n\nbody\n",
			rejected: []string{"a@example.test", "b@example.test"}, code: 554, noMAIL: true},
		{name: "SMTPUTF8 needed (sender), not offered", ext: []string{"8BITMIME", "DSN"},
			envelope: func(e *store.Envelope) { e.UTF8, e.Sender = true, "d\xc3\xa9@sender.test" },
			rejected: []string{"a@example.test", "b@example.test"}, code: 554, noMAIL: true},
		{name: "8BITMIME needed, not offered, 8-bit header", ext: []string{"DSN"}, body: "Subject: caf\xc3\xa9\n\nbody\n",
			deferred: []string{"a@example.test", "b@example.test"}, code: 450, noMAIL: true},
	}
	for _, tt := range tests {
		for _, pipe := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/pipelining=%v", tt.name, pipe), func(t *testing.T) {
				ext := tt.ext
				if ext == nil {
					ext = []string{"PIPELINING", "SIZE 10000000", "8BITMIME", "DSN", "SMTPUTF8", "ENHANCEDSTATUSCODES"}
				}
				if !pipe {
					ext = slices.DeleteFunc(slices.Clone(ext), func(e string) bool { return e == "PIPELINING" })
				}
				f := startFake(t, "127.0.0.1", tt.script, ext...)
				s, err := newTestClient(t, f.addr()).Dial(ctxT(t), "example.test")
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				d := delivery("a@example.test", "b@example.test")
				if tt.envelope != nil {
					tt.envelope(&d.Envelope)
				}
				msg := body
				if tt.body != "" {
					msg = tt.body
				}
				res, err := s.Send(ctxT(t), d, strings.NewReader(msg))
				if (err != nil) != tt.wantErr {
					t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
				}
				if !slices.Equal(res.Accepted, tt.accepted) || !slices.Equal(addrs(res.Rejected), tt.rejected) || !slices.Equal(addrs(res.Deferred), tt.deferred) {
					t.Fatalf("result = %+v\nwant accepted %v rejected %v deferred %v", res, tt.accepted, tt.rejected, tt.deferred)
				}
				first := append(append([]RcptStatus(nil), res.Rejected...), res.Deferred...)
				if first[0].Reply.Code != tt.code {
					t.Errorf("reply = %v, want code %d", first[0].Reply, tt.code)
				}
				lines := f.received()
				if got := slices.Contains(lines, "RSET"); got != tt.wantRSET {
					t.Errorf("RSET sent = %v, want %v (dialogue %q)", got, tt.wantRSET, lines)
				}
				if tt.noMAIL && slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, "MAIL") }) {
					t.Errorf("MAIL sent although the message can't go: %q", lines)
				}
				if tt.wantErr {
					if _, err := s.Send(ctxT(t), delivery("c@example.test"), strings.NewReader(body)); err == nil {
						t.Error("a failed session sent again")
					}
				} else if tt.script["."] == "" {
					// The session is still in step: the next message goes through.
					res, err := s.Send(ctxT(t), delivery("c@example.test"), strings.NewReader(body))
					if tt.script["MAIL"] == "" && tt.script["RCPT"] == "" && tt.script["DATA"] == "" && !tt.noMAIL &&
						(err != nil || !slices.Equal(res.Accepted, []string{"c@example.test"})) {
						t.Errorf("next message on the same session: %+v, %v", res, err)
					}
				}
			})
		}
	}
}

func TestSessionCarriesThreeMessages(t *testing.T) {
	f := startFake(t, "127.0.0.1", script{"RCPT TO:<bad@example.test>": "550 5.1.1 no such user"})
	s, err := newTestClient(t, f.addr()).Dial(ctxT(t), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	for i, rcpt := range []string{"one@example.test", "bad@example.test", "three@example.test"} {
		d := delivery(rcpt)
		d.Envelope.Sender = "s" + strconv.Itoa(i) + "@sender.test"
		res, err := s.Send(ctxT(t), d, strings.NewReader("Subject: "+strconv.Itoa(i)+"\n\nbody\n"))
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if rcpt == "bad@example.test" {
			if len(res.Rejected) != 1 {
				t.Errorf("message %d: %+v, want rejected", i, res)
			}
		} else if !slices.Equal(res.Accepted, []string{rcpt}) {
			t.Errorf("message %d: %+v, want accepted", i, res)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := f.connections(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
	txs := f.transactions()
	if len(txs) != 2 || !strings.Contains(txs[0].body, "Subject: 0") || !strings.Contains(txs[1].body, "Subject: 2") ||
		txs[1].mail != "MAIL FROM:<s2@sender.test> SIZE=42 BODY=8BITMIME RET=HDRS ENVID=env+2B1" {
		t.Errorf("transactions = %+v", txs)
	}
	lines := f.received()
	if lines[len(lines)-1] != "QUIT" || !slices.Contains(lines, "RSET") {
		t.Errorf("dialogue = %q, want RSET after the rejected message and QUIT at the end", lines)
	}
}

// Each way a host can fail to open a session is one entry.
func TestDialFailureModes(t *testing.T) {
	tests := []struct {
		name   string
		script script
		code   int // Reply.Code in the *Error, 0 = no reply
	}{
		{name: "421 greeting", script: script{"greeting": "421 4.3.2 busy"}, code: 421},
		{name: "554 greeting", script: script{"greeting": "554 5.7.1 go away"}, code: 554},
		{name: "hangs before greeting", script: script{"greeting": "hang"}},
		{name: "drops before greeting", script: script{"greeting": "drop"}},
		{name: "EHLO 4xx", script: script{"EHLO": "451 4.3.0 try later"}, code: 451},
		{name: "EHLO and HELO 5xx", script: script{"EHLO": "502 5.5.1 no", "HELO": "550 5.7.1 no"}, code: 550},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, "127.0.0.1", tt.script)
			c := newTestClient(t, f.addr())
			_, err := c.Dial(ctxT(t), "example.test")
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err = %v, want *Error", err)
			}
			if e.Host != f.addr() || e.Reply.Code != tt.code || e.Permanent {
				t.Errorf("err = %+v (%v), want host %s code %d, temporary", e, e, f.addr(), tt.code)
			}
			if err := c.Probe(ctxT(t), "example.test"); err == nil {
				t.Error("Probe = nil for a host that fails")
			}
		})
	}
}

func TestDialRefusedTriesNextHost(t *testing.T) {
	// An address of its own, so that no listener of this test (all on
	// 127.0.0.1) can be given the closed port again.
	ln, err := net.Listen("tcp", "127.0.0.77:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := ln.Addr().String()
	ln.Close()
	f := startFake(t, "127.0.0.1", nil)

	_, err = newTestClient(t, refused).Dial(ctxT(t), "example.test")
	var e *Error
	if !errors.As(err, &e) || e.Host != refused || e.Reply.Code != 0 {
		t.Errorf("refused: err = %v", err)
	}

	s, err := newTestClient(t, refused, f.addr()).Dial(ctxT(t), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Host() != f.addr() {
		t.Errorf("Host() = %s, want the second primary %s", s.Host(), f.addr())
	}
}

// TestLoopsBackToMyself: a host that answers EHLO (or HELO) with our own
// name is us, or a node sharing our name: handing it the mail would queue it
// here again. The dial fails, temporarily, after a QUIT and before any MAIL,
// and the next host is tried.
func TestLoopsBackToMyself(t *testing.T) {
	for _, sc := range []script{
		{"EHLO": "250 Backup.Ours.Test. greets you"},
		{"EHLO": "502 5.5.1 no EHLO", "HELO": "250 backup.ours.test"},
	} {
		loop := startFake(t, "127.0.0.1", sc)
		c := newTestClient(t, loop.addr())
		_, err := c.Dial(ctxT(t), "example.test")
		var e *Error
		if !errors.As(err, &e) || !errors.Is(err, ErrLoopsBack) || e.Permanent || e.Reply.Code != 451 ||
			e.Reply.Enhanced != "4.4.6" || e.Host != loop.addr() {
			t.Fatalf("%q: err = %#v (%v), want a temporary 451 4.4.6 ErrLoopsBack from %s", sc, e, err, loop.addr())
		}
		if err := c.Probe(ctxT(t), "example.test"); !errors.Is(err, ErrLoopsBack) {
			t.Errorf("%q: Probe = %v, want ErrLoopsBack: the domain must not look up", sc, err)
		}
		lines := loop.received()
		if last := lines[len(lines)-1]; last != "QUIT" || slices.ContainsFunc(lines, func(l string) bool {
			return strings.HasPrefix(l, "MAIL")
		}) {
			t.Errorf("%q: dialogue = %q, want no MAIL and a QUIT", sc, lines)
		}

		other := startFake(t, "127.0.0.1", nil)
		s, err := newTestClient(t, loop.addr(), other.addr()).Dial(ctxT(t), "example.test")
		if err != nil {
			t.Fatal(err)
		}
		if s.Host() != other.addr() {
			t.Errorf("%q: Host() = %s, want the second primary %s", sc, s.Host(), other.addr())
		}
		s.Close()
	}
}

func TestHELOFallback(t *testing.T) {
	f := startFake(t, "127.0.0.1", script{"EHLO": "550 5.5.1 what is EHLO"})
	c := newTestClient(t, f.addr())
	c.Hostname = "me.ours.test"
	s, err := c.Dial(ctxT(t), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d := delivery("a@example.test")
	d.Envelope.Body = "7BIT"
	res, err := s.Send(ctxT(t), d, strings.NewReader(body))
	if err != nil || len(res.Accepted) != 1 {
		t.Fatalf("Send = %+v, %v", res, err)
	}
	lines := f.received()
	if lines[0] != "EHLO me.ours.test" || lines[1] != "HELO me.ours.test" {
		t.Errorf("dialogue = %q", lines)
	}
	// Without EHLO there are no extensions: no parameters may be sent.
	if slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, "=") }) {
		t.Errorf("extension parameters sent after HELO: %q", lines)
	}
}

func TestProbe(t *testing.T) {
	f := startFake(t, "127.0.0.1", nil)
	if err := newTestClient(t, f.addr()).Probe(ctxT(t), "example.test"); err != nil {
		t.Fatal(err)
	}
	lines := f.received()
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "EHLO ") || lines[1] != "QUIT" {
		t.Errorf("dialogue = %q, want EHLO, QUIT", lines)
	}
}

func TestSTARTTLS(t *testing.T) {
	f := startFake(t, "127.0.0.1", nil, "8BITMIME", "STARTTLS")
	s, err := newTestClient(t, f.addr()).Dial(ctxT(t), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !strings.HasPrefix(s.TLS(), "TLS1.") {
		t.Errorf("TLS() = %q", s.TLS())
	}
	if _, err := s.Send(ctxT(t), delivery("a@example.test"), strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	lines := f.received()
	if lines[1] != "STARTTLS" || !strings.HasPrefix(lines[2], "EHLO ") || f.tls != 1 || len(f.transactions()) != 1 {
		t.Errorf("dialogue = %q, handshakes %d", lines, f.tls)
	}
}

func TestSTARTTLSBrokenFallsBackToPlainText(t *testing.T) {
	f := startFake(t, "127.0.0.1", script{"STARTTLS": "tls-garbage"}, "8BITMIME", "STARTTLS")
	s, err := newTestClient(t, f.addr()).Dial(ctxT(t), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.TLS() != "" {
		t.Errorf("TLS() = %q, want plain text", s.TLS())
	}
	if _, err := s.Send(ctxT(t), delivery("a@example.test"), strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if n := f.connections(); n != 2 {
		t.Errorf("%d connections, want 2 (TLS, then plain)", n)
	}
	if n := strings.Count(strings.Join(f.received(), "\n"), "STARTTLS"); n != 1 {
		t.Errorf("STARTTLS sent %d times, want 1", n)
	}
}

func TestSTARTTLSRefusedContinuesInPlainText(t *testing.T) {
	f := startFake(t, "127.0.0.1", script{"STARTTLS": "454 4.7.0 TLS not available"}, "8BITMIME", "STARTTLS")
	s, err := newTestClient(t, f.addr()).Dial(ctxT(t), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Send(ctxT(t), delivery("a@example.test"), strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if n := f.connections(); n != 1 || s.TLS() != "" {
		t.Errorf("%d connections, TLS %q; want 1, plain", n, s.TLS())
	}
}

func TestContextCancelEndsSend(t *testing.T) {
	f := startFake(t, "127.0.0.1", script{".": "hang"})
	c := newTestClient(t, f.addr())
	c.Timeouts.DataEnd = time.Minute
	s, err := c.Dial(ctxT(t), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := s.Send(ctx, delivery("a@example.test"), strings.NewReader(body))
	if !errors.Is(err, context.DeadlineExceeded) || len(res.Deferred) != 1 {
		t.Errorf("Send = %+v, %v; want deadline exceeded, deferred", res, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Send took %v after the context ended", d)
	}
}

// --- routing through DNS (a loopback test server; nothing else is asked) ---

func dnsClient(t *testing.T, cfg *config.Config, records ...string) *Client {
	srv := dnstest.Start(t, records...)
	return &Client{Config: cfg, Resolver: dnsres.New(srv.Addr), Timeouts: tiny}
}

func hosts(ts []target) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.String())
	}
	return out
}

func TestRoutePrimaryFromMX(t *testing.T) {
	cfg := newTestConfig(t)
	c := dnsClient(t, cfg,
		"mxonly.test. 60 IN MX 30 BACKUP.ours.test.",
		"mxonly.test. 60 IN MX 20 mx2.mxonly.test.",
		"mxonly.test. 60 IN MX 10 mx1.mxonly.test.",
		"mxonly.test. 60 IN MX 30 peer.ours.test.",
		"mxonly.test. 60 IN MX 40 last.mxonly.test.",
	)
	ts, err := c.route(ctxT(t), "MXONLY.test.")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"mx1.mxonly.test:25", "mx2.mxonly.test:25"}; !slices.Equal(hosts(ts), want) {
		t.Errorf("route = %v, want %v (strictly more preferred than us)", hosts(ts), want)
	}

	c.Hostname = "not-listed.ours.test"
	c.MXPort = 2525
	ts, err = c.route(ctxT(t), "mxonly.test")
	if err != nil || len(ts) != 5 || ts[0].port != "2525" {
		t.Errorf("not listed: route = %v, %v; want all 5 MX on port 2525", hosts(ts), err)
	}
}

func TestRoutePrimaryNone(t *testing.T) {
	for name, records := range map[string][]string{
		"we are the best MX": {"mxonly.test. 60 IN MX 10 backup.ours.test.", "mxonly.test. 60 IN MX 20 other.test."},
		"no MX at all":       {"mxonly.test. 60 IN A 127.0.0.5"},
		"no such domain":     nil,
	} {
		t.Run(name, func(t *testing.T) {
			c := dnsClient(t, newTestConfig(t), records...)
			_, err := c.Dial(ctxT(t), "mxonly.test")
			if !errors.Is(err, ErrNoPrimary) || IsPermanent(err) || !strings.Contains(err.Error(), "no primary for domain") {
				t.Errorf("err = %v, want temporary ErrNoPrimary", err)
			}
		})
	}
}

func TestDialPrimaryMXOnLoopback(t *testing.T) {
	up := startFake(t, "127.0.0.3", nil)
	c := dnsClient(t, newTestConfig(t),
		"mxonly.test. 60 IN MX 10 down.mxonly.test.",
		"mxonly.test. 60 IN MX 20 up.mxonly.test.",
		"mxonly.test. 60 IN MX 30 backup.ours.test.",
		"down.mxonly.test. 60 IN A 127.0.0.2",
		"up.mxonly.test. 60 IN A 127.0.0.3",
	)
	c.MXPort = up.port() // nothing listens on 127.0.0.2 at that port
	s, err := c.Dial(ctxT(t), "mxonly.test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if want := net.JoinHostPort("up.mxonly.test", strconv.Itoa(up.port())); s.Host() != want {
		t.Errorf("Host() = %s, want %s", s.Host(), want)
	}
}

func TestRouteNotices(t *testing.T) {
	records := []string{
		"sender.test. 60 IN MX 20 mx2.sender.test.",
		"sender.test. 60 IN MX 10 mx1.sender.test.",
		"mx1.sender.test. 60 IN A 127.0.0.6",
		"mx2.sender.test. 60 IN A 127.0.0.7",
		"implicit.test. 60 IN A 127.0.0.8",
		"nullmx.test. 60 IN MX 0 .",
	}
	cfg := newTestConfig(t)
	cfg.Notices.Port = 2526
	c := dnsClient(t, cfg, records...)

	ts, err := c.route(ctxT(t), "sender.test")
	if want := []string{"mx1.sender.test:2526", "mx2.sender.test:2526"}; err != nil || !slices.Equal(hosts(ts), want) {
		t.Errorf("MX: route = %v, %v; want %v", hosts(ts), err, want)
	}
	ts, err = c.route(ctxT(t), "implicit.test")
	if err != nil || len(ts) != 1 || ts[0].String() != "implicit.test:2526" || !ts[0].implicit {
		t.Errorf("implicit MX: route = %v, %v", hosts(ts), err)
	}

	_, err = c.Dial(ctxT(t), "nullmx.test")
	var e *Error
	if !errors.As(err, &e) || !e.Permanent || e.Reply.Enhanced != "5.1.10" {
		t.Errorf("null MX: err = %v, want permanent 5.1.10", err)
	}
	_, err = c.Dial(ctxT(t), "nowhere.test")
	if !errors.As(err, &e) || !e.Permanent || e.Reply.Enhanced != "5.1.2" {
		t.Errorf("no such domain: err = %v, want permanent 5.1.2", err)
	}

	cfg.Notices.Smarthost = "127.0.0.9:2527"
	ts, err = c.route(ctxT(t), "sender.test")
	if err != nil || !slices.Equal(hosts(ts), []string{"127.0.0.9:2527"}) {
		t.Errorf("smarthost: route = %v, %v", hosts(ts), err)
	}
}

func TestDialNoticesOnLoopback(t *testing.T) {
	mx := startFake(t, "127.0.0.6", nil)
	cfg := newTestConfig(t)
	cfg.Notices.Port = mx.port()
	c := dnsClient(t, cfg,
		"sender.test. 60 IN MX 10 mx1.sender.test.",
		"mx1.sender.test. 60 IN A 127.0.0.6",
	)
	if err := c.Probe(ctxT(t), "sender.test"); err != nil {
		t.Fatal(err)
	}

	// Implicit MX: the domain's own address.
	implicit := startFake(t, "127.0.0.8", nil)
	cfg.Notices.Port = implicit.port()
	c = dnsClient(t, cfg, "implicit.test. 60 IN A 127.0.0.8")
	if err := c.Probe(ctxT(t), "implicit.test"); err != nil {
		t.Fatal(err)
	}

	// Smarthost: no DNS at all.
	sh := startFake(t, "127.0.0.1", nil)
	cfg.Notices.Smarthost = sh.addr()
	c = &Client{Config: cfg, Resolver: dnsres.New("127.0.0.1:1"), Timeouts: tiny}
	s, err := c.Dial(ctxT(t), "sender.test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d := delivery("s@sender.test")
	d.Domain, d.Envelope.Sender, d.Envelope.Notice = "sender.test", "", true
	res, err := s.Send(ctxT(t), d, strings.NewReader(body))
	if err != nil || len(res.Accepted) != 1 {
		t.Fatalf("Send = %+v, %v", res, err)
	}
	if tx := sh.transactions()[0]; !strings.HasPrefix(tx.mail, "MAIL FROM:<> ") {
		t.Errorf("MAIL = %q, want the null sender", tx.mail)
	}
}
