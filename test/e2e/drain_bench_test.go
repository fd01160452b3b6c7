package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"backupmx/internal/tlsconf/tlstest"
)

// BenchmarkDrain measures how fast the real binary hands a backlog to a
// primary that comes back: BENCH_DRAIN messages of 10 KB (default 2,000;
// the figure is 20,000) are queued while the primary is down, then
// the primary starts and `queue flush` is sent; the clock runs until the
// primary has them all. The primary is go-smtp (PIPELINING offered); "tls"
// has it offer STARTTLS and the domain require it (tls = "encrypt");
// "tls-nopipelining" also hides PIPELINING, so commands go one at a time.
// Run with -benchtime 1x; the metric is msg/s.
func BenchmarkDrain(b *testing.B) {
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("BENCH_DRAIN")); err == nil && v > 0 {
		n = v
	}
	for _, v := range []struct {
		name      string
		tls, pipe bool
	}{{"plain", false, true}, {"tls", true, true}, {"tls-nopipelining", true, false}} {
		b.Run(v.name, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				drainOnce(b, n, v.tls, v.pipe)
			}
		})
	}
}

// noPipelining hides go-smtp's PIPELINING line from the EHLO reply (go-smtp
// writes each reply line with one Write).
type noPipelining struct{ net.Listener }

func (l noPipelining) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	return hideConn{c}, err
}

type hideConn struct{ net.Conn }

func (c hideConn) Write(p []byte) (int, error) {
	if string(p) == "250-PIPELINING\r\n" {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

type countingBackend struct{ n atomic.Int64 }

func (c *countingBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &countingSession{c}, nil
}

type countingSession struct{ c *countingBackend }

func (s *countingSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *countingSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *countingSession) Data(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	if err == nil {
		s.c.n.Add(1)
	}
	return err
}
func (s *countingSession) Reset()        {}
func (s *countingSession) Logout() error { return nil }

func drainOnce(b *testing.B, n int, useTLS, pipe bool) {
	primaryAddr := FreeAddr(b)
	policy := "may"
	if useTLS {
		policy = "encrypt"
	}
	srv := NewServer(b, Options{Extra: fmt.Sprintf("[[domain]]\nname = \"example.test\"\nprimary = [%q]\ntls = %q\n", primaryAddr, policy)})

	// Fill: 10 sessions, many messages each.
	body := []byte("Subject: drain\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 100))
	var wg sync.WaitGroup
	per := (n + 9) / 10
	var failed atomic.Int64
	for w := range 10 {
		wg.Go(func() {
			c, err := DialSMTP(srv.SMTPAddr)
			if err != nil {
				failed.Add(1)
				return
			}
			defer c.Close()
			c.Cmd("EHLO bench.e2e.test")
			for i := w * per; i < min(n, (w+1)*per); i++ {
				if r, err := c.Send(Mail{From: "s@sender.test", To: []string{"u@example.test"}, Data: body}); err != nil || r.Code != 250 {
					failed.Add(1)
					return
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		b.Fatalf("%d sessions failed while filling", failed.Load())
	}

	// Let the attempts made while the primary was down finish first: a
	// flush that lands in the middle of a work cycle can be overwritten by
	// that cycle's deferrals.
	Eventually(b, time.Minute, "not every message was tried once", func() bool {
		return strings.Count(srv.Log(), "msg=deferred") >= n
	})
	time.Sleep(200 * time.Millisecond)

	be := &countingBackend{}
	ps := smtp.NewServer(be)
	ps.Domain = "primary.bench.test"
	ps.MaxMessageBytes = 1 << 20
	if useTLS {
		ca := tlstest.NewCA(b)
		ps.TLSConfig = &tls.Config{Certificates: []tls.Certificate{ca.Certificate(b, "127.0.0.1")}}
	}
	l, err := net.Listen("tcp", primaryAddr)
	if err != nil {
		b.Fatal(err)
	}
	if !pipe {
		l = noPipelining{l}
	}
	go ps.Serve(l)
	defer ps.Close()

	b.StartTimer()
	start := time.Now()
	srv.QueueCmd("flush")
	for be.n.Load() < int64(n) {
		time.Sleep(5 * time.Millisecond)
		if time.Since(start) > 2*time.Minute {
			b.Fatalf("drain stuck at %d of %d", be.n.Load(), n)
		}
	}
	d := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(n)/d.Seconds(), "msg/s")
	b.ReportMetric(d.Seconds(), "s")
	if useTLS && !strings.Contains(srv.Log(), `tls="TLS1.3`) {
		b.Fatal("the drain did not use TLS")
	}
	srv.Stop()
}
