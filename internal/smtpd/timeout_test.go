package smtpd

import (
	"io"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"backupmx/internal/config"
)

func dataTimeout(d time.Duration) func(*config.Config) {
	return func(c *config.Config) { c.SMTP.DataTimeout = config.Duration(d) }
}

// A client that stops in the middle of DATA is dropped after DataTimeout of
// silence, and nothing is queued.
func TestDataIdleTimeoutDropsStalledClient(t *testing.T) {
	ts := newTestServer(t, dataTimeout(200*time.Millisecond))
	c := dial(t, ts.addr)
	c.run(transaction("s@x.test", "u@example.test")...)
	c.run(cmd("DATA", "354"), step{send: "Subject: stalled\r\n"})
	start := time.Now()
	c.expect("421 4.4.2")
	if !c.closed() {
		t.Error("connection still open after the idle timeout")
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("dropped after %v, want about 200ms", el)
	}
	if m := ts.store.all(); len(m) != 0 {
		t.Errorf("queued %d, want none", len(m))
	}
}

// Same inside a BDAT chunk.
func TestDataIdleTimeoutInChunk(t *testing.T) {
	ts := newTestServer(t, dataTimeout(200*time.Millisecond))
	c := dial(t, ts.addr)
	c.run(transaction("s@x.test", "u@example.test")...)
	c.run(step{send: "BDAT 100 LAST\r\nSubject: stalled\r\n"})
	c.expect("421 4.4.2")
	if !c.closed() {
		t.Error("connection still open after the idle timeout")
	}
	if m := ts.store.all(); len(m) != 0 {
		t.Errorf("queued %d, want none", len(m))
	}
}

// A slow but steady client takes longer than DataTimeout in total and succeeds:
// the timeout is per read, not for the whole body.
func TestDataTimeoutIsIdleNotTotal(t *testing.T) {
	ts := newTestServer(t, dataTimeout(300*time.Millisecond))
	c := dial(t, ts.addr)
	c.run(transaction("s@x.test", "u@example.test")...)
	c.run(cmd("DATA", "354"))
	start := time.Now()
	for i := range 10 {
		io.WriteString(c.conn, strings.Repeat("x", i+1)+"\r\n")
		time.Sleep(100 * time.Millisecond)
	}
	c.run(step{send: ".\r\n", want: []string{"250 2.0.0 Ok: queued as"}})
	if el := time.Since(start); el < 900*time.Millisecond {
		t.Fatalf("the test sent for only %v", el)
	}
	if m := ts.store.all(); len(m) != 1 {
		t.Errorf("queued %d, want 1", len(m))
	}
}

// An idle client between commands is dropped after CommandTimeout.
func TestCommandTimeout(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.SMTP.CommandTimeout = config.Duration(200 * time.Millisecond) })
	c := dial(t, ts.addr)
	c.run(cmd("EHLO client.test", "250"))
	c.expect("421 4.4.2")
	if !c.closed() {
		t.Error("connection still open after the command timeout")
	}
}

func TestMaxConnections(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.SMTP.MaxConnections = 1 })
	c := dial(t, ts.addr)
	c.run(cmd("NOOP", "250"))
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	over := &client{t: t, conn: nc, text: textproto.NewConn(nc)}
	over.expect("421 4.7.0")
	if !over.closed() {
		t.Error("connection over the limit still open")
	}
	c.run(cmd("QUIT", "221"))
	c.closed()
	// The slot is free again.
	for i := 0; ; i++ {
		nc, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		greeting, _ := textproto.NewConn(nc).ReadLine()
		nc.Close()
		if strings.HasPrefix(greeting, "220 ") {
			break
		}
		if i == 50 {
			t.Fatalf("still refused: %q", greeting)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
