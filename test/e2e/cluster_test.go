package e2e

// Two backupmx nodes sharing one queue on PostgreSQL (issue 4), and one
// node facing a database that goes away. Each test starts its own
// throwaway PostgreSQL (pgtest.NewServer: initdb from the local
// installation, 127.0.0.1 only); without one they skip, under CI they fail.

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"backupmx/internal/store/postgres/pgtest"
)

// pgNode starts a backupmx node named name on the postgres engine at dsn,
// delivering the given domains to primary. queue is raw TOML for [queue]
// (lease, batch, sessions…).
func pgNode(t *testing.T, dsn, name, primary string, domains []string, queue string, o Options) *Server {
	t.Helper()
	for _, d := range domains {
		o.Domains = append(o.Domains, Domain{Name: d, Primary: []string{primary}})
	}
	o.Node = name
	o.Store = fmt.Sprintf("engine = \"postgres\"\ndsn = %q", dsn)
	o.Queue = queue
	o.Extra = "[dnsbl]\nzones = []\n" + o.Extra // no DNSBL lookups: the door is not under test here
	return NewServer(t, o)
}

// testMail is a message whose X-Test-Id header names it at the primary.
func testMail(id, domain string) Mail {
	return Mail{
		From: "sender@sender.test",
		To:   []string{"user@" + domain},
		Data: []byte("X-Test-Id: " + id + "\r\nSubject: " + id + "\r\n\r\nbody of " + id + "\r\n"),
	}
}

var testIDRe = regexp.MustCompile(`(?m)^X-Test-Id: (\S+)\r$`)

// arrivals counts the messages at the primary per X-Test-Id.
func arrivals(p *Primary) map[string]int {
	n := map[string]int{}
	for _, m := range p.Messages() {
		if sm := testIDRe.FindSubmatch(m.Data); sm != nil {
			n[string(sm[1])]++
		}
	}
	return n
}

// sendOn sends the messages named by ids to domain over one SMTP session
// to addr and returns each one's reply (a zero Reply when the session broke).
func sendOn(t *testing.T, addr, domain string, ids []string) map[string]Reply {
	t.Helper()
	out := make(map[string]Reply, len(ids))
	c, err := DialSMTP(addr)
	if err != nil {
		t.Errorf("dial %s: %v", addr, err)
		return out
	}
	defer c.Close()
	if r, err := c.Cmd("EHLO client.e2e.test"); err != nil || r.Code != 250 {
		t.Errorf("EHLO: %v %v", r, err)
		return out
	}
	for _, id := range ids {
		r, err := c.Send(testMail(id, domain))
		if err != nil {
			t.Errorf("%s: %v", id, err)
			return out
		}
		out[id] = r
	}
	return out
}

// dbQuery runs one query returning one string (or "" for no row).
func dbQuery(t *testing.T, dsn, q string, args ...any) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer c.Close(ctx)
	var s string
	if err := c.QueryRow(ctx, q, args...).Scan(&s); err != nil && err != pgx.ErrNoRows {
		t.Fatalf("%s: %v", q, err)
	}
	return s
}

// TestClusterKillNodeMidDelivery is the acceptance test of issue 4: two
// nodes on one database accept 500 messages (alternating) while the
// primary is down; the primary comes back slow (20 ms per message); the
// node holding the domain's lease is killed with SIGKILL mid-delivery; the
// other takes the domain over when the lease (3 s) expires and delivers the
// rest. Every accepted message arrives. Duplicates are the messages the
// killed node had delivered but not yet recorded: outcomes are recorded
// per batch (Complete), so at most queue.batch = 10 of them.
func TestClusterKillNodeMidDelivery(t *testing.T) {
	const (
		domain = "cluster.test"
		total  = 500
		conns  = 10
		batch  = 10
	)
	pg := pgtest.NewServer(t)
	dsn := pg.DSN(t)
	prim := NewPrimary(t) // down
	queue := fmt.Sprintf("lease = \"3s\"\nbatch = %d\nsessions = 2\n", batch)
	nodes := map[string]*Server{}
	for _, name := range []string{"node-a", "node-b"} {
		nodes[name] = pgNode(t, dsn, name, prim.Addr, []string{domain}, queue, Options{ProbeInterval: "1s"})
	}
	names := []string{"node-a", "node-b"}

	// 500 messages over 10 sessions, alternating between the nodes.
	var (
		mu       sync.Mutex
		accepted = map[string]string{} // test id → node
		wg       sync.WaitGroup
	)
	for g := range conns {
		node := names[g%2]
		var ids []string
		for i := range total / conns {
			ids = append(ids, fmt.Sprintf("m%03d", g*(total/conns)+i))
		}
		wg.Go(func() {
			for id, r := range sendOn(t, nodes[node].SMTPAddr, domain, ids) {
				if r.Code != 250 {
					t.Errorf("%s via %s: %v", id, node, r)
					continue
				}
				mu.Lock()
				accepted[id] = node
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(accepted) != total {
		t.Fatalf("%d of %d messages accepted", len(accepted), total)
	}
	// One queue: either node lists all of them.
	if n := len(nodes["node-b"].Queue()); n != total {
		t.Fatalf("node-b lists %d deliveries, want %d", n, total)
	}

	prim.SetDelay(20 * time.Millisecond)
	prim.Start() // found by the next probe (1 s)
	Eventually(t, 20*time.Second, "delivery did not start", func() bool { return len(prim.Messages()) >= 100 })
	owner := dbQuery(t, dsn, `SELECT owner FROM leases WHERE domain = $1 AND expires > 0`, domain)
	victim, ok := nodes[owner]
	if !ok {
		t.Fatalf("lease owner %q is not a node", owner)
	}
	victim.Kill9()
	atKill := len(prim.Messages())
	survivor := nodes["node-a"]
	if owner == "node-a" {
		survivor = nodes["node-b"]
	}
	t.Logf("killed %s (lease owner) after %d messages had arrived", owner, atKill)

	Eventually(t, 25*time.Second, "not every accepted message arrived", func() bool { return len(arrivals(prim)) == total })
	survivor.WaitQueueLen(0, 10*time.Second)
	got := arrivals(prim)
	dups := 0
	for id := range accepted {
		if got[id] == 0 {
			t.Errorf("%s (accepted by %s) never arrived", id, accepted[id])
		}
		dups += max(got[id]-1, 0)
	}
	t.Logf("duplicates: %d (bound: queue.batch = %d, the deliveries the killed node could have made but not recorded)", dups, batch)
	if dups > batch {
		t.Errorf("%d duplicates, more than the killed node's in-flight bound %d", dups, batch)
	}
	if !strings.Contains(survivor.Log(), "delivered") {
		t.Errorf("the survivor logged no delivery")
	}
}

// TestClusterQueueCommandsAnyNode: `queue list/hold/release/flush` through
// node B act on mail that node A accepted: there is one queue.
func TestClusterQueueCommandsAnyNode(t *testing.T) {
	pg := pgtest.NewServer(t)
	dsn := pg.DSN(t)
	prim := NewPrimary(t) // down: everything waits
	doms := []string{"one.test", "two.test"}
	a := pgNode(t, dsn, "node-a", prim.Addr, doms, "", Options{})
	b := pgNode(t, dsn, "node-b", prim.Addr, doms, "", Options{})

	ids := map[string]string{} // domain → queue id given by A
	for _, d := range doms {
		r, err := SendMail(a.SMTPAddr, testMail("to-"+d, d))
		if err != nil || r.Code != 250 {
			t.Fatalf("send to %s via A: %v %v", d, r, err)
		}
		ids[d] = QueueID(r)
	}
	// Both tried once (the primary is down) and deferred.
	Eventually(t, 10*time.Second, "not both deferred", func() bool {
		items := b.Queue()
		return len(items) == 2 && items[0].Attempts == 1 && items[1].Attempts == 1
	})
	for _, it := range b.Queue() {
		if it.ID != ids[it.Domain] {
			t.Fatalf("B lists %s for %s, A queued %s", it.ID, it.Domain, ids[it.Domain])
		}
	}

	b.QueueCmd("hold", ids["one.test"])
	state := func(s *Server) map[string]string {
		m := map[string]string{}
		for _, it := range s.Queue() {
			m[it.Domain] = it.State
		}
		return m
	}
	if st := state(a); st["one.test"] != "held" || st["two.test"] == "held" {
		t.Fatalf("after hold through B, A shows %v", st)
	}

	prim.Start()
	b.QueueCmd("flush") // everything not held, A's mail included
	prim.WaitMessages(1, 10*time.Second)
	a.WaitQueueLen(1, 10*time.Second)
	if st := state(a); st["one.test"] != "held" {
		t.Fatalf("held mail left the queue or lost its hold: %v", st)
	}
	b.QueueCmd("release", ids["one.test"])
	prim.WaitMessages(2, 10*time.Second)
	a.WaitQueueLen(0, 10*time.Second)
	if got := arrivals(prim); got["to-one.test"] != 1 || got["to-two.test"] != 1 {
		t.Fatalf("arrivals %v", got)
	}
}

// TestClusterFlushWakesOtherNode: a flush through node A wakes node B at
// once through LISTEN/NOTIFY. Only B can deliver: A's database role may
// update deliveries (flush) but not lock leases (claim), so A's claims fail.
// B is idle: its mail was deferred for an hour, its probe runs hourly and
// its poll every 30 s, so an arrival within 10 s of the flush is the
// notification's doing.
func TestClusterFlushWakesOtherNode(t *testing.T) {
	pg := pgtest.NewServer(t)
	dsn := pg.DSN(t)
	prim := NewPrimary(t) // down
	doms := []string{"wake.test"}
	b := pgNode(t, dsn, "node-b", prim.Addr, doms, "", Options{}) // creates the schema

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE ROLE flusher LOGIN`,
		`GRANT CREATE, USAGE ON SCHEMA public TO flusher`,
		`GRANT ALL ON ALL TABLES IN SCHEMA public TO flusher`,
		`GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO flusher`,
		`REVOKE UPDATE ON leases FROM flusher`,
	} {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	c.Close(ctx)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User("flusher")
	a := pgNode(t, u.String(), "node-a", prim.Addr, doms, "", Options{})
	t.Cleanup(func() { // the role outlives the database: drop it
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, dsn); err == nil {
			c.Exec(ctx, `DROP OWNED BY flusher`)
			c.Exec(ctx, `DROP ROLE flusher`)
			c.Close(ctx)
		}
	})

	r, err := SendMail(b.SMTPAddr, testMail("wake", "wake.test"))
	if err != nil || r.Code != 250 {
		t.Fatalf("send: %v %v", r, err)
	}
	Eventually(t, 10*time.Second, "not deferred", func() bool {
		items := b.Queue()
		return len(items) == 1 && items[0].Attempts == 1
	})
	prim.Start()
	t0 := time.Now()
	a.QueueCmd("flush", "wake.test")
	prim.WaitMessages(1, 10*time.Second)
	t.Logf("flush through node-a → delivered by node-b in %v (poll 30 s, probe 1 h, next attempt in 1 h)", time.Since(t0).Round(time.Millisecond))
	if !strings.Contains(a.Log(), "permission denied") {
		t.Errorf("node-a's claims did not fail as arranged")
	}
}

// TestPostgresDownUnderLoad: the database stops while senders keep
// sending. Every reply is 250 or 451 4.3.0 (or the 421 that ends a session
// after max_bad_commands errors; never a 5xx); every 250'd message is delivered; the node serves again by itself
// once the database is back (no restart).
func TestPostgresDownUnderLoad(t *testing.T) {
	const domain = "load.test"
	pg := pgtest.NewServer(t)
	dsn := pg.DSN(t)
	prim := StartPrimary(t)
	// lease 3s: a lease whose release failed while the database was down
	// holds the domain until it expires, even for its own node.
	n := pgNode(t, dsn, "node-a", prim.Addr, []string{domain}, "lease = \"3s\"", Options{ProbeInterval: "1s", Retry: []string{"1s"}})

	var (
		mu      sync.Mutex
		replies = map[string]Reply{}
		wg      sync.WaitGroup
		stop    = make(chan struct{})
	)
	// A sender: one session after another (the server ends a session after
	// max_bad_commands error replies, 451s included), many messages each.
	session := func(g int, seq *int) {
		c, err := DialSMTP(n.SMTPAddr)
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			return
		}
		defer c.Close()
		if r, err := c.Cmd("EHLO client.e2e.test"); err != nil || r.Code != 250 {
			return
		}
		for {
			select {
			case <-stop:
				return
			default:
			}
			*seq++
			id := fmt.Sprintf("g%d-%04d", g, *seq)
			r, err := c.Send(testMail(id, domain))
			if err != nil {
				return // the session broke before a reply: nothing was promised
			}
			mu.Lock()
			replies[id] = r
			mu.Unlock()
			if r.Code == 421 {
				return
			}
			if r.Code != 250 {
				time.Sleep(20 * time.Millisecond) // a sender backing off a little
			}
		}
	}
	for g := range 4 {
		wg.Go(func() {
			seq := 0
			for {
				select {
				case <-stop:
					return
				default:
				}
				session(g, &seq)
			}
		})
	}
	count := func(code int) int {
		mu.Lock()
		defer mu.Unlock()
		k := 0
		for _, r := range replies {
			if r.Code == code {
				k++
			}
		}
		return k
	}
	Eventually(t, 10*time.Second, "no mail accepted", func() bool { return count(250) >= 50 })
	pg.Stop(t)
	t.Logf("database stopped after %d accepted", count(250))
	Eventually(t, 10*time.Second, "no 451 while the database is down", func() bool { return count(451) >= 20 })
	time.Sleep(time.Second) // down a little longer, under load
	ok := count(250)
	pg.Start(t)
	Eventually(t, 20*time.Second, "service did not resume after the database came back", func() bool { return count(250) >= ok+50 })
	close(stop)
	wg.Wait()

	var acked []string
	tempfail, closed := 0, 0
	for id, r := range replies {
		switch {
		case r.Code == 250:
			acked = append(acked, id)
		case r.Code == 451 && strings.HasPrefix(r.Text, "4.3.0"):
			tempfail++
		case r.Code == 421: // the session's end after too many errors: temporary too
			closed++
		default:
			t.Errorf("%s: %v, want 250 or 451 4.3.0", id, r)
		}
	}
	t.Logf("%d transactions: %d accepted, %d refused with 451 4.3.0, %d ended by 421", len(replies), len(acked), tempfail, closed)
	Eventually(t, 25*time.Second, "accepted mail not all delivered", func() bool {
		got := arrivals(prim)
		for _, id := range acked {
			if got[id] == 0 {
				return false
			}
		}
		return true
	})
	got := arrivals(prim)
	dups, ambiguous := 0, 0
	for id, k := range got {
		dups += max(k-1, 0)
		if replies[id].Code != 250 {
			ambiguous++ // committed, but the reply was lost with the connection
		}
	}
	t.Logf("delivered: %d distinct, %d duplicates, %d that the sender was told 451", len(got), dups, ambiguous)
}

// TestPostgresNodeStartsWhileDown: a node started while its database is
// down does not exit: it logs, retries with backoff, does not listen
// meanwhile (a sender's connection is refused: a temporary failure), and
// serves once the database is up.
func TestPostgresNodeStartsWhileDown(t *testing.T) {
	const domain = "late.test"
	pg := pgtest.NewServer(t)
	dsn := pg.DSN(t)
	prim := StartPrimary(t)
	n := pgNode(t, dsn, "node-a", prim.Addr, []string{domain}, "", Options{})
	n.Stop()
	pg.Stop(t)

	n.startProcess() // not Start: that waits for the banner
	Eventually(t, 10*time.Second, "no retry logged", func() bool {
		return strings.Count(n.Log(), "store unavailable") >= 2
	})
	if _, err := DialSMTP(n.SMTPAddr); err == nil {
		t.Fatal("SMTP answers while the store is not open")
	}
	if n.exited() {
		t.Fatal("backupmx exited while the database was down")
	}
	pg.Start(t)
	Eventually(t, 40*time.Second, "SMTP did not come up after the database", func() bool {
		c, err := DialSMTP(n.SMTPAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	r, err := SendMail(n.SMTPAddr, testMail("late", domain))
	if err != nil || r.Code != 250 {
		t.Fatalf("send after recovery: %v %v", r, err)
	}
	prim.WaitMessages(1, 10*time.Second)
}
