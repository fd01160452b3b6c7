package e2e

import (
	"bufio"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// lineRecorder is a primary that records every command line as received,
// and which of them arrived with more bytes behind them (pipelined).
type lineRecorder struct {
	ln    net.Listener
	mu    sync.Mutex
	lines []string
	piped []string
}

func startRecorder(t *testing.T, ext ...string) *lineRecorder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &lineRecorder{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.serve(c, ext)
		}
	}()
	return r
}

func (r *lineRecorder) serve(c net.Conn, ext []string) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	c.Write([]byte("220 recorder.test ESMTP\r\n"))
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return
		}
		l = strings.TrimRight(l, "\r\n")
		r.mu.Lock()
		r.lines = append(r.lines, l)
		if br.Buffered() > 0 {
			r.piped = append(r.piped, l)
		}
		r.mu.Unlock()
		verb := strings.ToUpper(strings.Fields(l + " x")[0])
		switch {
		case verb == "EHLO":
			out := "250-recorder.test\r\n"
			for _, e := range ext {
				out += "250-" + e + "\r\n"
			}
			c.Write([]byte(out + "250 ENHANCEDSTATUSCODES\r\n"))
		case verb == "DATA":
			c.Write([]byte("354 go on\r\n"))
			for {
				b, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if b == ".\r\n" {
					break
				}
			}
			c.Write([]byte("250 2.0.0 taken\r\n"))
		case verb == "QUIT":
			c.Write([]byte("221 2.0.0 bye\r\n"))
			return
		default:
			c.Write([]byte("250 2.0.0 ok\r\n"))
		}
	}
}

func (r *lineRecorder) snapshot() (lines, piped []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.lines), slices.Clone(r.piped)
}

// TestParametersReachThePrimary: what the sender said in MAIL and RCPT
// (RFC 3461 DSN parameters, BODY, SMTPUTF8) goes through our queue to the
// primary unchanged, after XFORWARD naming the sender's client, all in one
// pipelined write.
func TestParametersReachThePrimary(t *testing.T) {
	rec := startRecorder(t, "PIPELINING", "SIZE 10000000", "8BITMIME", "SMTPUTF8", "DSN", "XFORWARD NAME ADDR PROTO HELO SOURCE")
	srv := NewServer(t, Options{Domains: []Domain{{Name: "example.test", Primary: []string{rec.ln.Addr().String()}}}})
	c, err := DialSMTP(srv.SMTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	steps := []struct{ cmd, want string }{
		{"EHLO client.e2e.test", "250"},
		{"MAIL FROM:<s@sender.test> BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc+2Bdef", "250"},
		{"RCPT TO:<u@example.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;U+2Bx@example.test", "250"},
		{"RCPT TO:<v@example.test> NOTIFY=NEVER", "250"},
	}
	for _, s := range steps {
		if r, err := c.Cmd("%s", s.cmd); err != nil || !strings.HasPrefix(r.String(), s.want) {
			t.Fatalf("%s: %v %v", s.cmd, r, err)
		}
	}
	if r, err := c.Data([]byte("Subject: Grüße\r\n\r\n8-bit body é\r\n")); err != nil || r.Code != 250 {
		t.Fatalf("DATA: %v %v", r, err)
	}
	srv.QueueCmd("flush")
	srv.WaitQueueLen(0, 20*time.Second)

	lines, piped := rec.snapshot()
	i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "MAIL") })
	if i < 1 {
		t.Fatalf("no MAIL: %q", lines)
	}
	want := []string{
		"XFORWARD NAME=localhost ADDR=127.0.0.1 PROTO=ESMTP HELO=client.e2e.test SOURCE=REMOTE",
		"MAIL FROM:<s@sender.test> SIZE=",
		" BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc+2Bdef",
		"RCPT TO:<u@example.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;U+2Bx@example.test",
		"RCPT TO:<v@example.test> NOTIFY=NEVER",
		"DATA",
	}
	got := lines[i-1 : i+4]
	if !strings.HasPrefix(got[0], "XFORWARD ") || !strings.Contains(got[0], "ADDR=127.0.0.1") || !strings.Contains(got[0], "HELO=client.e2e.test SOURCE=REMOTE") ||
		!strings.HasPrefix(got[1], want[1]) || !strings.HasSuffix(got[1], want[2]) ||
		got[2] != want[3] || got[3] != want[4] || got[4] != want[5] {
		t.Fatalf("the primary got:\n%s\nwant like:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !slices.Equal(piped, got[:4]) {
		t.Errorf("not one pipelined write: lines read with more behind them %q", piped)
	}
}
