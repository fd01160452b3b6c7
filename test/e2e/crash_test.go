package e2e

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestKill9MidLoad is the durability promise under fire: 8 clients send as
// fast as they can (small messages go inline in the SQLite group commit,
// every 5th one is large enough to take the body-file path), the server is
// killed with SIGKILL in the middle of it, restarted, and the primary comes
// up. Every message that got a 250 must arrive, intact; messages cut off by
// the kill (no 250) may or may not arrive — the sender still has them.
func TestKill9MidLoad(t *testing.T) {
	t.Parallel()
	primary := NewPrimary(t) // down while the load runs
	srv := NewServer(t, Options{
		Domains:       []Domain{{Name: "example.test", Primary: []string{primary.Addr}}},
		ProbeInterval: "1s",
		Retry:         []string{"1h"},
	})

	var (
		mu    sync.Mutex
		acked = map[string][]byte{} // queue id → message sent
		total atomic.Int64
		stop  atomic.Bool
		wg    sync.WaitGroup
	)
	for g := range 8 {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				c, err := DialSMTP(srv.SMTPAddr)
				if err != nil {
					return // the server is gone
				}
				if r, err := c.Cmd("EHLO crash%d.client.test", g); err != nil || r.Code != 250 {
					c.Close()
					return
				}
				for j := 0; j < 20 && !stop.Load(); j++ {
					n := int(total.Add(1))
					size := 300
					if n%5 == 0 {
						size = 80 << 10 // over the 64 KiB inline threshold: a body file
					}
					data := crashBody(g, i, j, size)
					r, err := c.Send(Mail{From: "s@client.test", To: []string{fmt.Sprintf("u%d@example.test", g)}, Data: data})
					if err != nil {
						break // killed mid-transaction: not acknowledged
					}
					if id := QueueID(r); id != "" {
						mu.Lock()
						acked[id] = data
						mu.Unlock()
					}
				}
				c.Close()
			}
		})
	}

	// Let the load run, then pull the plug in the middle of it.
	Eventually(t, 20*time.Second, "200 acknowledged messages", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 200
	})
	srv.Kill9()
	stop.Store(true)
	wg.Wait()
	mu.Lock()
	n := len(acked)
	mu.Unlock()
	t.Logf("%d messages attempted, %d acknowledged before kill -9", total.Load(), n)

	srv.Restart()
	primary.Start()
	// Everything the queue holds goes out; only then count what arrived
	// (messages committed but cut off before their 250 may arrive too).
	Eventually(t, 60*time.Second, "queue empty", func() bool { return len(srv.Queue()) == 0 })
	got := primary.WaitMessages(n, 10*time.Second)
	byID := map[string][]byte{}
	for _, m := range got {
		for id, sent := range acked {
			if bytes.HasSuffix(m.Data, sent) && bytes.Contains(m.Data, []byte("id "+id)) {
				byID[id] = m.Data
			}
		}
	}
	lost := 0
	for id, sent := range acked {
		m, ok := byID[id]
		if !ok {
			lost++
			t.Errorf("acknowledged message %s never arrived", id)
			continue
		}
		if _, err := SplitReceived(m, sent); err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}
	t.Logf("after restart: %d delivered, %d of %d acknowledged lost", len(got), lost, n)
}

// crashBody is a distinct message of about size bytes.
func crashBody(g, i, j, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <s@client.test>\r\nSubject: crash %d.%d.%d\r\nMessage-ID: <crash-%d-%d-%d@client.test>\r\n\r\n", g, i, j, g, i, j)
	line := fmt.Sprintf("line of message %d.%d.%d, padding padding padding padding\r\n", g, i, j)
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.Bytes()
}
