// Package queue is the scheduler: it claims due deliveries from the store one
// domain at a time, hands them to the relay over a few sessions per primary,
// and records each outcome (delivered, deferred with the next attempt, failed
// or expired with a DSN to the sender).
//
// Invariants: the store is the only truth — nothing here is needed to resume
// after a crash, and memory holds at most Workers × Batch deliveries at once.
// A recipient leaves the store only after the primary said 250 for it, or after
// the DSN telling its sender has itself been made durable in the store.
// A domain whose primary answers a probe, accepts a delivery, or sends ETRN is
// flushed: all its waiting mail becomes due at once.
package queue

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"backupmx/internal/config"
	"backupmx/internal/dsn"
	"backupmx/internal/relay"
	"backupmx/internal/store"
)

// Notifier is implemented by stores shared by several nodes: a value arrives
// when another node may have made work due (a flush, an enqueue). It is only
// a hint; the loop also polls the store every PollInterval.
type Notifier interface {
	Notifications(ctx context.Context) <-chan struct{}
}

// shutdownGrace is how long deliveries in progress may take to finish after
// Run's context is cancelled.
const shutdownGrace = 20 * time.Second

// Scheduler runs deliveries. Set the fields, then call Run.
type Scheduler struct {
	Store  store.Store
	Dialer relay.Dialer
	Config *config.Config
	Log    *slog.Logger
	Now    func() time.Time // clock seam
	Owner  string           // lease owner: this node's name
	// PollInterval bounds how long the loop sleeps without looking at the
	// store (other nodes may have added work). Default 30s.
	PollInterval time.Duration
	// ProbeBudget is how long one probe may take. 0: min(queue.connect_timeout,
	// 10 s) + 5 s for the greeting.
	ProbeBudget time.Duration

	once    sync.Once
	kick    chan struct{}
	retry   []time.Duration // Config.Queue.Retry, read once (init)
	probing sync.Mutex      // one probe round at a time

	downMu sync.Mutex
	down   map[string]string // configured domains whose primary refused us last: suspended(why)
	// flushes counts flushes (probe, ETRN, admin, success). A work cycle
	// that cached "primary down" forgets it when this moves, and results
	// decided before the move are made due again rather than deferred, so
	// that no flush is overwritten by a cycle that was already running.
	flushes atomic.Int64
}

func (s *Scheduler) init() {
	s.once.Do(func() {
		s.kick = make(chan struct{}, 1)
		s.down = make(map[string]string)
		if s.Now == nil {
			s.Now = time.Now
		}
		if s.Log == nil {
			s.Log = slog.Default()
		}
		if s.PollInterval == 0 {
			s.PollInterval = 30 * time.Second
		}
		if s.Owner == "" {
			s.Owner = s.Config.Node
		}
		for _, r := range s.Config.Queue.Retry {
			s.retry = append(s.retry, r.D())
		}
	})
}

// Kick wakes the loop: there may be due work. It never blocks.
func (s *Scheduler) Kick() {
	s.init()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Arrival is asked about a message's domains before the message is stored.
// A domain whose primary is known down gets its first attempt decided now,
// as Postfix does for a dead destination: the delivery is stored as one
// failed attempt, due at the first retry interval (or sooner, when a probe
// finds the primary back and flushes the domain). So a burst of arrivals for
// a dead primary costs no claim, no dial and no second store write each.
//
// queued must be called once the message is durable: it wakes the loop for
// the domains not deferred, and re-flushes a deferred domain that was
// flushed while the message was being stored (that flush may have missed it).
func (s *Scheduler) Arrival(domains []string) (deferred map[string]store.Deferral, queued func()) {
	s.init()
	epoch := s.flushes.Load() // before reading down: see FlushDomain
	now := s.Now()
	s.downMu.Lock()
	for _, d := range domains {
		lastErr, ok := s.down[d]
		if !ok {
			continue
		}
		if deferred == nil {
			deferred = make(map[string]store.Deferral)
		}
		deferred[d] = store.Deferral{
			Next:  NextAttempt(1, now, now.Add(s.retention(d)), s.intervals()),
			Error: lastErr,
		}
	}
	s.downMu.Unlock()
	return deferred, func() { s.queued(domains, deferred, epoch) }
}

func (s *Scheduler) queued(domains []string, deferred map[string]store.Deferral, epoch int64) {
	if len(deferred) > 0 && s.flushes.Load() != epoch {
		for d := range deferred {
			s.downMu.Lock()
			_, down := s.down[d]
			s.downMu.Unlock()
			if !down {
				go func() {
					if err := s.FlushDomain(context.Background(), d, "flushed while a message arrived"); err != nil {
						s.Log.Error("flush failed", "domain", d, "err", err)
					}
				}()
			}
		}
	}
	if len(deferred) < len(domains) {
		s.Kick()
	}
}

// Flushing is told that someone else (the admin API's flush or release) is
// about to make mail due: every domain is presumed up again, and the flush
// is counted, before the store changes. So a message the door is storing
// meanwhile, deferred at arrival for a domain then known down, is flushed
// again once durable (see Arrival) rather than left for the next probe. The
// caller wakes the loop with Kick once the store has changed.
func (s *Scheduler) Flushing() {
	s.init()
	s.downMu.Lock()
	clear(s.down)
	s.flushes.Add(1) // with the clear: see FlushDomain
	s.downMu.Unlock()
}

// suspended is the last_error of mail deferred at arrival for a domain
// whose primary refused us with why (made once, when the domain is marked).
func suspended(why error) string { return "delivery temporarily suspended: " + why.Error() }

// markUp forgets that a domain's primary was down.
func (s *Scheduler) markUp(domain string) {
	s.init()
	s.downMu.Lock()
	delete(s.down, domain)
	s.downMu.Unlock()
}

// markDown remembers that a domain's primary refused an attempt begun at
// flush count epoch, unless a flush has come since (the primary may be
// back). Only configured domains are kept, so the map is bounded by the
// configuration.
// A work cycle calls it at the first refusal, so that mail arriving for the
// domain while the cycle defers what it claimed is deferred by Arrival, not
// claimed and tried by the same cycle.
func (s *Scheduler) markDown(domain string, why error, epoch int64) {
	s.init()
	s.downMu.Lock()
	defer s.downMu.Unlock()
	if s.flushes.Load() == epoch && s.Config.Domain(domain) != nil {
		s.down[domain] = suspended(why)
	}
}

// FlushDomain makes all of a domain's waiting mail due now and wakes the loop
// (ETRN, a successful probe, the admin API).
//
// The domain is marked up and the flush counted, together under downMu
// (markDown sees both or neither), before the store's flush: a message
// stored after that flush was deferred by Arrival only if Arrival ran before
// them, and then its queued sees the count move and flushes again.
func (s *Scheduler) FlushDomain(ctx context.Context, domain, why string) error {
	s.init()
	s.downMu.Lock()
	delete(s.down, domain)
	s.flushes.Add(1)
	s.downMu.Unlock()
	n, err := s.Store.Flush(ctx, store.Filter{Domain: domain}, s.Now())
	if err != nil {
		return err
	}
	s.Log.Info("flush", "domain", domain, "reason", why, "deliveries", n)
	s.Kick()
	return nil
}

// Run delivers until ctx is cancelled, then waits for deliveries in progress.
func (s *Scheduler) Run(ctx context.Context) error {
	s.init()
	workers := s.Config.Queue.Workers
	done := make(chan struct{}, workers)
	active := 0
	probe := time.NewTicker(s.Config.Queue.ProbeInterval.D())
	defer probe.Stop()
	timer := time.NewTimer(0)
	defer timer.Stop()
	go s.probeAll(ctx) // after a restart, every waiting domain is presumed down
	// Deliveries in progress outlive ctx by up to shutdownGrace: on stop, the
	// feeders stop handing out work, and the sessions finish (and record)
	// the messages they are sending rather than cutting them off.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	var hints <-chan struct{}
	if n, ok := s.Store.(Notifier); ok {
		hints = n.Notifications(ctx)
	}
	for {
		wait := s.PollInterval
		for active < workers && ctx.Err() == nil {
			now := s.Now()
			l, ds, err := s.Store.Claim(ctx, s.Owner, now, s.Config.Queue.Lease.D(), s.Config.Queue.Batch)
			if err != nil {
				if ctx.Err() == nil {
					s.Log.Error("claim failed", "err", err)
				}
				wait = time.Second
				break
			}
			if l == nil {
				// Work due at now that Claim didn't hand out is under a lease:
				// its release kicks us (or, another node's, PollInterval
				// passes). Waiting for it here would spin on Claim.
				if t, ok, err := s.Store.NextDue(ctx); err == nil && ok && t.After(now) {
					wait = min(wait, max(t.Sub(s.Now()), 0)+5*time.Millisecond)
				}
				break
			}
			active++
			go func() {
				s.work(workCtx, ctx, l, ds)
				done <- struct{}{}
			}()
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			grace := time.AfterFunc(shutdownGrace, cancelWork)
			defer grace.Stop()
			for ; active > 0; active-- {
				<-done
			}
			return nil
		case <-done:
			active--
		case <-s.kick:
		case <-hints: // another node flushed or enqueued: look now
		case <-timer.C:
		case <-probe.C:
			go s.probeAll(ctx)
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// RunDue claims and processes due work, one domain after the other, until
// nothing is due at s.Now(). Tests drive a fake clock with it.
func (s *Scheduler) RunDue(ctx context.Context) error {
	s.init()
	for {
		l, ds, err := s.Store.Claim(ctx, s.Owner, s.Now(), s.Config.Queue.Lease.D(), s.Config.Queue.Batch)
		if err != nil || l == nil {
			return err
		}
		s.work(ctx, ctx, l, ds)
	}
}

// probeAll probes the primary of every configured domain that has waiting
// mail, and flushes those that answer.
func (s *Scheduler) probeAll(ctx context.Context) {
	if !s.probing.TryLock() {
		return
	}
	defer s.probing.Unlock()
	domains, err := s.Store.Waiting(ctx, s.Now())
	if err != nil {
		s.Log.Error("probe: listing waiting domains failed", "err", err)
		return
	}
	// A probe only asks "are you there?": a short budget, and as many at
	// once as the pace can start within one budget (up to maxProbes), so
	// that primaries that drop packets (each probe then waits its whole
	// budget) slow a round no more than refusing ones: 10,000 of them take
	// ~2.5 min at the defaults, not 10,000 / 64 × 15 s ≈ 40 min.
	budget := s.ProbeBudget
	if budget <= 0 {
		budget = min(s.Config.Queue.ConnectTimeout.D(), 10*time.Second) + 5*time.Second
	}
	sem := make(chan struct{}, probeConcurrency(s.Config.Queue.ProbeRate, budget))
	// Starts are paced at Queue.ProbeRate a second: thousands of down
	// domains are probed in a longer round, not in a burst every interval.
	pace := time.NewTicker(time.Second / time.Duration(max(s.Config.Queue.ProbeRate, 1)))
	defer pace.Stop()
	var wg sync.WaitGroup
	started := 0
	for _, d := range domains {
		if s.Config.Domain(d) == nil {
			continue // notices to senders: no probing of foreign hosts
		}
		if started++; started > 1 {
			select {
			case <-pace.C:
			case <-ctx.Done():
				wg.Wait()
				return
			}
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			pctx, cancel := context.WithTimeout(ctx, budget)
			defer cancel()
			if err := s.Dialer.Probe(pctx, d); err != nil {
				s.Log.Debug("probe: primary still down", "domain", d, "err", err)
				return
			}
			if err := s.FlushDomain(ctx, d, "probe answered"); err != nil {
				s.Log.Error("probe: flush failed", "domain", d, "err", err)
			}
		}()
	}
	wg.Wait()
}

// maxProbes bounds the probes in flight: each holds a socket.
const maxProbes = 1024

// probeConcurrency is how many probes may be in flight: what rate starts a
// second over one budget (at least 16, at most maxProbes).
func probeConcurrency(rate int, budget time.Duration) int {
	secs := int((budget + time.Second - 1) / time.Second)
	return min(max(max(rate, 1)*secs, 16), maxProbes)
}

// retention is how long mail for the domain is held before a DSN.
func (s *Scheduler) retention(domain string) time.Duration {
	if d := s.Config.Domain(domain); d != nil {
		return d.Retention.D()
	}
	return s.Config.Queue.Retention.D()
}

// intervals is the retry schedule (Arrival asks for it per message: it is
// converted once). Callers must not change it.
func (s *Scheduler) intervals() []time.Duration {
	s.init()
	return s.retry
}

// work delivers a leased domain's due mail over up to Queue.Sessions
// sessions, batch after batch, until none is due or the primary is down.
//
// Cancelling stop ends the feeding: the cycle finishes and records what its
// sessions are sending, then returns. Cancelling ctx aborts everything.
func (s *Scheduler) work(ctx, stop context.Context, l *store.Lease, first []store.Delivery) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer func() {
		if err := s.Store.ReleaseLease(context.WithoutCancel(ctx), l); err != nil {
			s.Log.Warn("lease release failed", "domain", l.Domain, "err", err)
		}
		s.Kick()
	}()
	go s.renew(ctx, cancel, l)

	c := &cycle{s: s, lease: l, intervals: s.intervals(), retention: s.retention(l.Domain)}
	defer c.close()

	// Three stages run at once, so that sessions never wait for the store:
	// a feeder reads due deliveries (never one already in flight), up to
	// Queue.Sessions senders deliver them, and this goroutine records the
	// results in groups. Memory is bounded by two batches.
	batch := s.Config.Queue.Batch
	sessions := s.Config.Queue.Sessions
	// The feeder reads bodies ahead, a group of `sessions` at a time, when
	// the store can (one read instead of one per message): the queue of
	// jobs is then kept short, so that it holds at most a few groups.
	bodies, _ := s.Store.(store.BodiesReader)
	jobCap := batch
	if bodies != nil {
		jobCap = sessions
	}
	jobs := make(chan job, jobCap)
	results := make(chan decided, batch)
	recorded := make(chan struct{}, 1) // the feeder waits on it when all is in flight

	var mu sync.Mutex
	inflight := make(map[string]bool) // fed but not yet recorded
	go func() {
		defer close(jobs)
		ds := first
		for ctx.Err() == nil && stop.Err() == nil {
			mu.Lock()
			for _, d := range ds {
				inflight[d.ID] = true
			}
			busy := len(inflight)
			mu.Unlock()
			for rest := ds; len(rest) > 0; {
				n := len(rest)
				var got map[string][]byte
				if bodies != nil && !c.knownDown() {
					n = min(n, sessions)
					ids := make([]string, n)
					for i := range n {
						ids[i] = rest[i].ID
					}
					// On error each sender reads its body itself.
					got, _ = bodies.Bodies(ctx, ids)
				}
				for _, d := range rest[:n] {
					select {
					case jobs <- job{d, got[d.ID]}:
					case <-ctx.Done():
						return
					case <-stop.Done():
						return
					}
				}
				rest = rest[n:]
			}
			if len(ds) == 0 {
				if busy == 0 {
					return // nothing due, nothing in flight: the cycle is over
				}
				select { // wait for results: they may flush more mail due
				case <-recorded:
				case <-ctx.Done():
					return
				case <-stop.Done():
					return
				}
			}
			mu.Lock()
			skip := make([]string, 0, len(inflight))
			for id := range inflight {
				skip = append(skip, id)
			}
			mu.Unlock()
			var err error
			ds, err = s.Store.More(ctx, l, s.Now(), batch, skip)
			if err != nil {
				if ctx.Err() == nil {
					s.Log.Error("reading more work failed", "domain", l.Domain, "err", err)
				}
				cancel()
				return
			}
		}
	}()

	var senders sync.WaitGroup
	for range s.Config.Queue.Sessions {
		senders.Go(func() {
			var sess relay.Session
			for j := range jobs {
				flushes := s.flushes.Load()
				var r store.Result
				r, sess = c.deliverOne(ctx, &j.d, j.body, sess)
				results <- decided{r, flushes}
			}
			if sess != nil {
				sess.Close()
			}
		})
	}
	go func() {
		senders.Wait()
		close(results)
	}()

	pending := make([]store.Result, 0, batch)
	var stale []int // indexes in pending decided before the latest flush
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	failed := false
	record := func() {
		if len(pending) == 0 || failed {
			return
		}
		// Flush before recording: the flush makes the domain's waiting mail
		// due now, and must not override the schedule of these results'
		// own deferred recipients, which Complete writes next.
		if len(stale) > 0 {
			now := s.Now()
			for _, i := range stale {
				if pending[i].Next.After(now) {
					pending[i].Next = now // a flush came after this deferral
				}
			}
			stale = stale[:0]
		}
		if c.takeFlush() {
			if n, err := s.Store.Flush(ctx, store.Filter{Domain: l.Domain}, s.Now()); err != nil {
				s.Log.Error("flush after success failed", "domain", l.Domain, "err", err)
			} else if n > 0 {
				s.Log.Info("flush", "domain", l.Domain, "reason", "delivery succeeded", "deliveries", n)
			}
		}
		if err := s.Store.Complete(context.WithoutCancel(ctx), l, pending); err != nil {
			// Lease lost or store fault: these outcomes are not recorded, so
			// the deliveries are tried again later (at least once, never lost).
			s.Log.Error("recording outcomes failed", "domain", l.Domain, "count", len(pending), "err", err)
			failed = true
			cancel()
			return
		}
		mu.Lock()
		for _, r := range pending {
			delete(inflight, r.ID)
		}
		mu.Unlock()
		pending = pending[:0]
		select {
		case recorded <- struct{}{}:
		default:
		}
	}
	for {
		select {
		case r, ok := <-results:
			if !ok {
				record()
				return
			}
			if r.flushes != s.flushes.Load() {
				stale = append(stale, len(pending))
			}
			pending = append(pending, r.Result)
			if len(pending) >= max(batch/4, 1) {
				record()
			}
		case <-tick.C:
			record()
		}
	}
}

// job is a delivery handed to a sender, with its body when the feeder read
// it ahead (nil: the sender reads it).
type job struct {
	d    store.Delivery
	body []byte
}

// decided is one result and the flush count when its attempt began.
type decided struct {
	store.Result
	flushes int64
}

// renew keeps the lease alive while work goes on; losing it stops the work.
func (s *Scheduler) renew(ctx context.Context, cancel context.CancelFunc, l *store.Lease) {
	ttl := s.Config.Queue.Lease.D()
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.Store.Renew(ctx, l, s.Now(), ttl); err != nil {
				if ctx.Err() == nil {
					s.Log.Error("lease lost, stopping work", "domain", l.Domain, "err", err)
					cancel()
				}
				return
			}
		}
	}
}

// cycle is the state of one leased work cycle on one domain.
type cycle struct {
	s         *Scheduler
	lease     *store.Lease
	intervals []time.Duration
	retention time.Duration

	mu        sync.Mutex
	downErr   error // set once the primary refused us: no more dialing…
	downSince int64 // …until Scheduler.flushes moves past this
	flush     bool  // a delivery succeeded: flush the domain's waiting mail
	flushed   bool  // flush was already requested in this cycle
}

// takeFlush reports (once per cycle) that a delivery succeeded and the
// domain's waiting mail should be made due.
func (c *cycle) takeFlush() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.flush
	c.flush = false
	return f
}

// close records that the cycle ended; a domain whose primary refused us is
// remembered as down until a probe or a delivery says otherwise.
func (c *cycle) close() {
	c.mu.Lock()
	var down error
	if !c.flushed {
		down = c.downErr
	}
	since := c.downSince
	c.mu.Unlock()
	if down != nil {
		c.s.markDown(c.lease.Domain, down, since)
	} else {
		c.s.markUp(c.lease.Domain)
	}
}

// knownDown reports whether the primary refused this cycle since the last
// flush: no body needs reading for what the cycle defers then.
func (c *cycle) knownDown() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.downErr != nil && c.downSince == c.s.flushes.Load()
}

// session returns a usable session: the one given, or a new one.
func (c *cycle) session(ctx context.Context, sess relay.Session) (relay.Session, error) {
	if sess != nil {
		return sess, nil
	}
	c.mu.Lock()
	if c.downErr != nil && c.downSince == c.s.flushes.Load() {
		err := c.downErr
		c.mu.Unlock()
		return nil, err
	}
	c.mu.Unlock()
	flushes := c.s.flushes.Load()
	dctx, cancel := context.WithTimeout(ctx, c.s.Config.Queue.ConnectTimeout.D()+time.Minute)
	defer cancel()
	sess, err := c.s.Dialer.Dial(dctx, c.lease.Domain)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		if c.downErr == nil || c.downSince != flushes {
			c.downErr, c.downSince = err, flushes
			c.s.Log.Warn("primary down", "domain", c.lease.Domain, "err", err)
			c.s.markDown(c.lease.Domain, err, flushes)
		}
		return nil, err
	}
	c.downErr = nil
	return sess, nil
}

// deliverOne makes one attempt at d and decides the fate of each recipient.
func (c *cycle) deliverOne(ctx context.Context, d *store.Delivery, data []byte, sess relay.Session) (store.Result, relay.Session) {
	s := c.s
	log := s.Log.With("id", d.ID, "domain", d.Domain)
	res := store.Result{ID: d.ID, Attempted: true}
	var rr relay.Result
	var sendErr error

	sess, sendErr = c.session(ctx, sess)
	if sendErr == nil {
		var body io.ReadCloser
		var err error
		if data != nil {
			body = io.NopCloser(bytes.NewReader(data))
		} else {
			body, err = s.Store.Body(ctx, d.ID)
		}
		if err != nil {
			log.Error("opening stored body failed", "err", err)
			res.Attempted = false
			res.LastError = "local: " + err.Error()
			res.Next = s.Now().Add(time.Minute)
			return res, sess
		}
		rr, sendErr = sess.Send(ctx, d, body)
		body.Close()
		if sendErr != nil {
			sess.Close()
			sess = nil
		}
	}

	now := s.Now()
	settled := make(map[string]bool)
	for _, a := range rr.Accepted {
		settled[a] = true
		res.Delivered = append(res.Delivered, a)
	}
	if len(rr.Accepted) > 0 {
		log.Info("delivered", "recipients", len(rr.Accepted), "host", hostOf(sess), "tls", tlsOf(sess), "attempts", d.Attempts+1)
		if rr.NoDSN {
			c.relayed(ctx, d, rr.Accepted, hostOf(sess))
		}
		c.mu.Lock()
		if !c.flushed {
			c.flush, c.flushed = true, true
		}
		c.mu.Unlock()
	}
	var bounces []bounce
	for _, r := range rr.Rejected {
		settled[r.Addr] = true
		bounces = append(bounces, bounce{addr: r.Addr, status: statusOf(r.Reply, "5.0.0"), diag: r.Reply.String(), remote: hostOf(sess)})
	}
	lastErr := ""
	if sendErr != nil {
		lastErr = sendErr.Error()
		if relay.IsPermanent(sendErr) {
			// e.g. a null MX for a notice's domain: no point in retrying.
			for _, r := range d.Recipients {
				if !settled[r.Addr] {
					settled[r.Addr] = true
					bounces = append(bounces, bounce{addr: r.Addr, status: "5.1.2", diag: lastErr})
				}
			}
		}
	}
	for _, r := range rr.Deferred {
		if lastErr == "" {
			lastErr = r.Reply.String()
		}
	}
	var remaining []store.Recipient
	for _, r := range d.Recipients {
		if !settled[r.Addr] {
			remaining = append(remaining, r)
		}
	}
	expires := d.Envelope.Received.Add(c.retention)
	if len(remaining) > 0 && !now.Before(expires) {
		for _, r := range remaining {
			bounces = append(bounces, bounce{addr: r.Addr, status: "4.4.7", diag: lastErr, expired: true})
		}
		log.Warn("expired", "recipients", len(remaining), "held_for", now.Sub(d.Envelope.Received).Round(time.Second).String(), "last_error", lastErr)
		remaining = nil
	}
	if len(bounces) > 0 {
		if err := c.s.notify(ctx, d, bounces); err != nil {
			// Without a durable DSN the recipients must stay queued.
			log.Error("enqueueing DSN failed; keeping recipients", "err", err)
			for _, b := range bounces {
				remaining = append(remaining, store.Recipient{Addr: b.addr})
			}
			res.Next = now.Add(c.intervals[0])
			res.LastError = "local: DSN not queued: " + err.Error()
			return res, sess
		}
		for _, b := range bounces {
			res.Failed = append(res.Failed, b.addr)
		}
	}
	if len(remaining) > 0 {
		res.LastError = lastErr
		res.Next = NextAttempt(d.Attempts+1, now, expires, c.intervals)
		log.Info("deferred", "recipients", len(remaining), "attempts", d.Attempts+1, "next_attempt", res.Next.Format(time.RFC3339), "err", lastErr)
	}
	return res, sess
}

// relayed honours NOTIFY=SUCCESS for recipients handed to a primary that
// does not support DSN (RFC 3461 §4.1, §6.2.3.1): a notice with action
// "relayed", since no other will come. The mail is delivered whatever
// happens here; a notice that fails to queue is logged, not retried.
func (c *cycle) relayed(ctx context.Context, d *store.Delivery, accepted []string, host string) {
	var bs []bounce
	for _, a := range accepted {
		bs = append(bs, bounce{addr: a, status: "2.0.0", remote: host, action: dsn.ActionRelayed})
	}
	if err := c.s.notify(ctx, d, bs); err != nil {
		c.s.Log.Error("enqueueing relayed notice failed", "id", d.ID, "domain", d.Domain, "err", err)
	}
}

func hostOf(s relay.Session) string {
	if s == nil {
		return ""
	}
	return s.Host()
}

func tlsOf(s relay.Session) string {
	if s == nil {
		return ""
	}
	if t := s.TLS(); t != "" {
		return t
	}
	return "none"
}

// statusOf is the enhanced status code of a reply; without one, the class
// of its code with no detail (RFC 3463 §3: "5.0.0"), or def.
func statusOf(r relay.Reply, def string) string {
	if r.Enhanced != "" {
		return r.Enhanced
	}
	if r.Code >= 400 && r.Code < 600 {
		return fmt.Sprintf("%d.0.0", r.Code/100)
	}
	return def
}
