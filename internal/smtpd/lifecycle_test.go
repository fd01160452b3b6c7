package smtpd

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"backupmx/internal/config"
)

// A client that hangs up inside a BDAT chunk must not get a truncated message
// queued (go-smtp alone would take the EOF for the chunk's end).
func TestTruncatedChunkNotQueued(t *testing.T) {
	ts := newTestServer(t)
	c := dial(t, ts.addr)
	c.run(transaction("s@x.test", "u@example.test")...)
	io.WriteString(c.conn, "BDAT 100 LAST\r\nSubject: cut short\r\n")
	c.conn.(*net.TCPConn).CloseWrite()
	c.closed()
	time.Sleep(50 * time.Millisecond)
	if m := ts.store.all(); len(m) != 0 {
		t.Errorf("queued %d, want none: %q", len(m), m[0].body)
	}
}

func TestOverlongLine(t *testing.T) {
	ts := newTestServer(t)
	c := dial(t, ts.addr)
	c.run(cmd("EHLO client.test", "250"), cmd("NOOP "+strings.Repeat("x", 10000), "500 5.4.0"))
	if !c.closed() {
		t.Error("connection still open")
	}
}

// Without a forward-confirmed reverse name, Received shows the address only.
func TestUnverifiedReverseName(t *testing.T) {
	ts := newTestServer(t)
	ts.Resolver = fakeResolver{addr: map[string][]string{"127.0.0.1": {"liar.test."}},
		host: map[string][]string{"liar.test": {"192.0.2.9"}}}
	c := dial(t, ts.addr)
	c.run(transaction("s@x.test", "u@example.test")...)
	c.run(cmd("DATA", "354"), step{send: "hi\r\n.\r\n", want: []string{"250"}})
	m := ts.store.all()
	if len(m) != 1 {
		t.Fatalf("queued %d", len(m))
	}
	if m[0].env.Client.Name != "" || !strings.HasPrefix(string(m[0].body), "Received: from client.test ([127.0.0.1])\r\n") {
		t.Errorf("name %q, body %q", m[0].env.Client.Name, m[0].body)
	}
}

func TestListenAndServeShutdown(t *testing.T) {
	cfg, err := config.Parse(baseConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.SMTP.Listen = []string{"127.0.0.1:0", "127.0.0.1:0"}
	s := &Server{Config: cfg, Store: &fakeStore{}, Resolver: fakeResolver{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.ListenAndServe(ctx) }()
	// Wait until a connection is open, then shut down: Shutdown waits for it.
	var c net.Conn
	for i := 0; c == nil; i++ {
		if i > 100 {
			t.Fatal("server did not start")
		}
		time.Sleep(10 * time.Millisecond)
		c = dialAny(s)
	}
	if got := len(s.addrs()); got != 2 {
		t.Errorf("listening on %d addresses, want 2", got)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 100)); err != nil { // the greeting: the session is open
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer scancel()
	if err := s.Shutdown(sctx); err != context.DeadlineExceeded {
		t.Errorf("Shutdown with an idle session open: %v, want deadline exceeded", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ListenAndServe: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ListenAndServe did not return")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Errorf("connection not closed after Shutdown expired: %v", err)
	}
}

// dialAny connects to one of the server's listeners, once they exist.
func dialAny(s *Server) net.Conn {
	for _, a := range s.addrs() {
		if c, err := net.Dial("tcp", a); err == nil {
			return c
		}
	}
	return nil
}
