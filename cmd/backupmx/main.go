// Command backupmx is the backup MX server and its queue tool.
//
//	backupmx serve -config FILE
//	backupmx queue list|show|flush|delete|hold|release -config FILE …
//	backupmx check-config -config FILE
//	backupmx version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"backupmx/internal/admin"
	"backupmx/internal/config"
	"backupmx/internal/dnsbl"
	"backupmx/internal/dnsres"
	"backupmx/internal/logsink"
	"backupmx/internal/queue"
	"backupmx/internal/recipients"
	"backupmx/internal/relay"
	"backupmx/internal/smtpd"
	"backupmx/internal/store"
	"backupmx/internal/store/embedded"
	"backupmx/internal/store/postgres"
	"backupmx/internal/tlsconf"
)

// gcPercent is the server's garbage collection target (GOGC) unless the
// environment sets one.
const gcPercent = 200

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  backupmx serve -config FILE
  backupmx queue list|show|flush|delete|hold|release -config FILE …
  backupmx check-config -config FILE
  backupmx version
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stderr)
	case "queue":
		return runQueue(args[1:], stdout, stderr)
	case "check-config":
		fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
		fs.SetOutput(stderr)
		path := fs.String("config", "backupmx.toml", "configuration file")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		cfg, err := config.Load(*path)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprintf(stdout, "%s: ok (%d domains, store %s)\n", *path, len(cfg.Domains), cfg.Store.Engine)
		return 0
	case "version":
		fmt.Fprintln(stdout, "backupmx", version)
		return 0
	default:
		fmt.Fprint(stderr, usage)
		return 2
	}
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func openStore(cfg *config.Config) (store.Store, error) {
	switch cfg.Store.Engine {
	case "embedded":
		return embedded.Open(cfg.Store.Dir, embedded.WithCommitDelay(time.Duration(cfg.Store.CommitDelay)))
	case "postgres":
		// Leases run on the database clock: nodes' clocks may differ.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return postgres.Open(ctx, cfg.Store.DSN, postgres.Options{})
	default:
		return nil, fmt.Errorf("store engine %q is not available in this build", cfg.Store.Engine)
	}
}

// openStoreRetry opens the store. The postgres engine is retried while it
// fails (the database may be down, or failing over, when the node starts):
// after 1 s, doubling up to 30 s, each failure logged, until ctx is done.
// Nothing listens meanwhile, neither SMTP nor admin: a sender's connection is
// refused, which is a temporary failure (RFC 5321 §5.1: it tries our other MX
// or later), and no door is open that could not make mail durable. Once
// open, an outage is the engine's business: every call fails (451 at the
// door) and its pool reconnects. The embedded engine fails at once: its
// errors (permissions, a full disk, a bad directory) need an operator.
func openStoreRetry(ctx context.Context, cfg *config.Config, log *slog.Logger) (store.Store, error) {
	backoff := time.Second
	for {
		st, err := openStore(cfg)
		if err == nil || cfg.Store.Engine != "postgres" {
			return st, err
		}
		log.Error("store unavailable, not listening yet; retrying", "engine", cfg.Store.Engine, "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// serve runs the server until SIGINT or SIGTERM.
func serve(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "backupmx.toml", "configuration file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	// Connections hand their log lines to the sink's goroutine instead of
	// each writing its own (internal/logsink); serve writes what is left
	// before it returns.
	sink := logsink.New(stderr)
	defer sink.Close()
	log := newLogger(cfg.Log, sink)
	if os.Getenv("GOGC") == "" {
		// The live heap is small (the queue lives on disk) and most of what
		// is allocated is message data passing through: collecting at 200%
		// instead of 100% halves the collector's CPU for a few MB more.
		debug.SetGCPercent(gcPercent)
	}
	if err := serveConfig(cfg, log); err != nil {
		log.Error("fatal", "err", err)
		return 1
	}
	return 0
}

func serveConfig(cfg *config.Config, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	st, err := openStoreRetry(ctx, cfg, log)
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped before the store could be opened")
			return nil
		}
		return fmt.Errorf("opening store: %w", err)
	}
	defer st.Close()

	resolver := dnsres.New(cfg.DNS.Resolver)
	rc := &relay.Client{
		Hostname: cfg.Hostname,
		Config:   cfg,
		Resolver: resolver,
		Log:      log,
	}
	sched := &queue.Scheduler{Store: st, Dialer: rc, Config: cfg, Log: log, Owner: cfg.Node}
	door, err := newDoor(cfg, resolver)
	if err != nil {
		return err
	}
	var certs *tlsconf.Certs // nil: no STARTTLS
	if pairs := cfg.TLS.Pairs(); len(pairs) > 0 {
		if certs, err = tlsconf.Load(pairs); err != nil {
			return err // a certificate that doesn't load at start is fatal
		}
	}
	stopHUP := reloadOnHUP(door.rcpts, certs, log)
	defer stopHUP()
	srv := &smtpd.Server{
		DNSBL:      door.dnsbl,
		Recipients: door.rcpts,
		Stats:      door.stats,
		Config:     cfg,
		Store:      st,
		Log:        log,
		Resolver:   resolver,
		TLS:        certs.ServerConfig(),
		Arrival:    sched.Arrival,
		ETRN: func(domain string) error {
			return sched.FlushDomain(ctx, domain, "ETRN")
		},
	}

	var listeners []net.Listener
	for _, addr := range cfg.SMTP.Listen {
		l, err := smtpd.Listen(ctx, addr)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return err
		}
		listeners = append(listeners, l)
	}
	var adminSrv *http.Server
	if cfg.Admin.Listen != "" {
		a := &admin.Server{Store: st, Token: cfg.Admin.Token, Log: log, Kick: sched.Kick, Flushing: sched.Flushing, Stats: door.stats.Snapshot, Pprof: cfg.Admin.Pprof}
		l, err := net.Listen("tcp", cfg.Admin.Listen)
		if err != nil {
			return fmt.Errorf("admin listener: %w", err)
		}
		adminSrv = &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go adminSrv.Serve(l)
		log.Info("admin API listening", "addr", l.Addr().String())
	}

	var wg sync.WaitGroup
	schedCtx, stopSched := context.WithCancel(context.Background())
	wg.Go(func() { sched.Run(schedCtx) })
	for _, l := range listeners {
		log.Info("SMTP listening", "addr", l.Addr().String(), "hostname", cfg.Hostname, "store", cfg.Store.Engine)
		wg.Go(func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, net.ErrClosed) {
				log.Error("SMTP listener stopped", "addr", l.Addr().String(), "err", err)
			}
		})
	}

	<-ctx.Done()
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if adminSrv != nil {
		adminSrv.Shutdown(sctx)
	}
	stopSched()
	wg.Wait()
	return nil
}

// door is the policy the SMTP server applies besides the relay rules.
type door struct {
	dnsbl *dnsbl.Checker // nil when dnsbl.zones is empty
	rcpts *recipients.Validator
	stats *smtpd.Stats
}

// newDoor builds the DNSBL checker (queries go to dns.resolver, like every
// other lookup) and the recipient validator (callouts use the same resolver
// for MX hosts).
func newDoor(cfg *config.Config, resolver *net.Resolver) (*door, error) {
	d := &door{stats: &smtpd.Stats{}}
	if len(cfg.DNSBL.Parsed) > 0 {
		r, err := dnsbl.NewDNS(cfg.DNS.Resolver)
		if err != nil {
			return nil, err
		}
		d.dnsbl = &dnsbl.Checker{Zones: cfg.DNSBL.Parsed, Threshold: cfg.DNSBL.Threshold,
			Allow: cfg.DNSBL.Allowed, Resolver: r, Budget: cfg.DNSBL.Timeout.D()}
	}
	callout := &recipients.SMTPCallout{Config: cfg, Resolver: resolver, Timeout: cfg.Queue.ConnectTimeout.D()}
	v, err := recipients.New(cfg, callout, nil, 0)
	if err != nil {
		return nil, err // an unreadable recipients_file at start is fatal
	}
	d.rcpts = v
	return d, nil
}

// reloadOnHUP re-reads the recipients files and the TLS certificates on
// SIGHUP; a file that fails keeps its previous list or certificates
// (logged). Open connections are untouched: TLS sessions keep the
// certificate they started with.
func reloadOnHUP(v *recipients.Validator, certs *tlsconf.Certs, log *slog.Logger) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-hup:
				if certs != nil {
					if err := certs.Reload(); err != nil {
						log.Error("TLS certificates reload failed, previous ones kept", "err", err)
					} else {
						log.Info("TLS certificates reloaded")
					}
				}
				if err := v.Reload(); err != nil {
					log.Error("recipients reload failed, previous lists kept", "err", err)
					continue
				}
				log.Info("recipients reloaded")
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
	}
}
