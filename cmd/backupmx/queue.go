package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"backupmx/internal/admin"
	"backupmx/internal/config"
	"backupmx/internal/store"
)

const queueUsage = `usage: backupmx queue COMMAND [-config FILE] [flags] [ARG]

  list    [-json] [-domain D] [-limit N]  every queued delivery (one per message and domain)
  show    ID                              print the stored message
  flush   [DOMAIN|ID]                     make everything (or one domain or message) due now
  delete  ID                              drop a message, no DSN
  hold    ID|DOMAIN                       stop delivering it
  release ID|DOMAIN                       resume, and make it due now

The commands talk to the running server through its admin API (admin.listen and
admin.token in the config file, default backupmx.toml).
`

// queueCommand describes one `backupmx queue` subcommand.
type queueCommand struct {
	args    string // positional arguments, for the usage line
	min     int    // positional arguments required
	max     int    // positional arguments allowed
	flags   func(fs *flag.FlagSet) *queueFlags
	run     func(ctx context.Context, c *admin.Client, f *queueFlags, args []string, stdout io.Writer) error
	summary string
}

// queueFlags holds every subcommand's flags; each subcommand defines its own.
type queueFlags struct {
	json   bool
	domain string
	limit  int
}

var queueCommands = map[string]queueCommand{
	"list": {
		args: "", min: 0, max: 0,
		flags: func(fs *flag.FlagSet) *queueFlags {
			f := &queueFlags{}
			fs.BoolVar(&f.json, "json", false, "one JSON object per line instead of a table")
			fs.StringVar(&f.domain, "domain", "", "only deliveries to this domain")
			fs.IntVar(&f.limit, "limit", admin.DefaultLimit, "deliveries per request (all pages are listed)")
			return f
		},
		run: queueList,
	},
	"show": {args: "ID", min: 1, max: 1, run: func(ctx context.Context, c *admin.Client, _ *queueFlags, args []string, stdout io.Writer) error {
		return c.Show(ctx, queueID(args[0]), stdout)
	}},
	"flush": {args: "[DOMAIN|ID]", min: 0, max: 1, run: func(ctx context.Context, c *admin.Client, _ *queueFlags, args []string, stdout io.Writer) error {
		var f store.Filter
		if len(args) == 1 {
			f = admin.Target(queueTarget(args[0]))
		}
		n, err := c.Flush(ctx, f.Domain, f.ID)
		if err == nil {
			fmt.Fprintf(stdout, "flushed %d %s\n", n, queuePlural(n, "delivery", "deliveries"))
		}
		return err
	}},
	"delete": {args: "ID", min: 1, max: 1, run: func(ctx context.Context, c *admin.Client, _ *queueFlags, args []string, stdout io.Writer) error {
		id := queueID(args[0])
		err := c.Delete(ctx, id)
		if err == nil {
			fmt.Fprintf(stdout, "deleted %s\n", id)
		}
		return err
	}},
	"hold": {args: "ID|DOMAIN", min: 1, max: 1, run: func(ctx context.Context, c *admin.Client, _ *queueFlags, args []string, stdout io.Writer) error {
		n, err := c.Hold(ctx, queueTarget(args[0]))
		if err == nil {
			fmt.Fprintf(stdout, "held %d %s\n", n, queuePlural(n, "delivery", "deliveries"))
		}
		return err
	}},
	"release": {args: "ID|DOMAIN", min: 1, max: 1, run: func(ctx context.Context, c *admin.Client, _ *queueFlags, args []string, stdout io.Writer) error {
		n, err := c.Release(ctx, queueTarget(args[0]))
		if err == nil {
			fmt.Fprintf(stdout, "released %d %s\n", n, queuePlural(n, "delivery", "deliveries"))
		}
		return err
	}},
}

// runQueue runs `backupmx queue ARGS…` (args[0] is the subcommand) and returns
// the exit status: 0 done, 1 failed, 2 usage error.
func runQueue(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, queueUsage)
		return 2
	}
	name := args[0]
	if name == "help" || name == "-h" || name == "-help" || name == "--help" {
		fmt.Fprint(stdout, queueUsage)
		return 0
	}
	cmd, ok := queueCommands[name]
	if !ok {
		fmt.Fprintf(stderr, "backupmx queue: unknown command %q\n\n%s", name, queueUsage)
		return 2
	}

	fs := flag.NewFlagSet("backupmx queue "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "backupmx.toml", "configuration `file`")
	f := &queueFlags{}
	if cmd.flags != nil {
		f = cmd.flags(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: backupmx queue %s [flags] %s\n", name, cmd.args)
		fs.PrintDefaults()
	}
	pos, err := queueParseFlags(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2 // the flag package has printed the error and the usage
	}
	if len(pos) < cmd.min || len(pos) > cmd.max {
		fmt.Fprintf(stderr, "backupmx queue %s: want %s\n", name, queueOrNothing(cmd.args))
		fs.Usage()
		return 2
	}
	if name == "list" && f.limit < 1 {
		fmt.Fprintf(stderr, "backupmx queue %s: -limit must be at least 1\n", name)
		return 2
	}

	c, err := queueClient(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "backupmx queue %s: %v\n", name, err)
		return 1
	}
	if err := cmd.run(context.Background(), c, f, pos, stdout); err != nil {
		fmt.Fprintf(stderr, "backupmx queue %s: %v\n", name, queueExplain(c, err))
		return 1
	}
	return 0
}

// queueParseFlags parses fs from args, allowing flags after positional
// arguments ("hold example.com -config F"), and returns the positional ones.
// Everything after "--" is positional.
func queueParseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// queueClient reads the config file for the admin API's address and token.
func queueClient(path string) (*admin.Client, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	if cfg.Admin.Listen == "" {
		return nil, fmt.Errorf("%s: admin.listen is not set, and the queue commands need the admin API", path)
	}
	host, port, err := net.SplitHostPort(cfg.Admin.Listen)
	if err != nil {
		return nil, fmt.Errorf("%s: admin.listen: %v", path, err)
	}
	// A wildcard listener is reached on loopback.
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // the admin API is ours, never behind the operator's HTTP proxy
	tr.ResponseHeaderTimeout = time.Minute
	return &admin.Client{
		BaseURL: "http://" + net.JoinHostPort(host, port),
		Token:   cfg.Admin.Token,
		HTTP:    &http.Client{Transport: tr},
	}, nil
}

// queueExplain adds what an operator needs to know to the error of a request.
func queueExplain(c *admin.Client, err error) error {
	var apiErr *admin.Error
	switch {
	case errors.As(err, &apiErr) && apiErr.Status == http.StatusUnauthorized:
		return fmt.Errorf("%w: check admin.token", err)
	case errors.As(err, &apiErr):
		return err
	default:
		var opErr *net.OpError
		if errors.As(err, &opErr) && opErr.Op == "dial" {
			return fmt.Errorf("cannot reach the admin API at %s (is backupmx serve running?): %w", c.BaseURL, err)
		}
		return err
	}
}

// queueList walks every page and prints each as it arrives, so memory holds
// one page whatever the size of the queue.
func queueList(ctx context.Context, c *admin.Client, f *queueFlags, _ []string, stdout io.Writer) error {
	filter := store.Filter{Domain: f.domain}
	enc := json.NewEncoder(stdout)
	t := &queueTable{w: stdout}
	total, held := 0, 0
	after := ""
	for {
		items, next, err := c.List(ctx, filter, after, f.limit)
		if err != nil {
			return err
		}
		for _, it := range items {
			total++
			if it.State == "held" {
				held++
			}
			if f.json {
				if err := enc.Encode(it); err != nil {
					return err
				}
			}
		}
		if !f.json {
			t.page(items)
		}
		if next == "" || len(items) == 0 {
			break
		}
		after = next
	}
	if f.json {
		return nil
	}
	if total == 0 {
		_, err := fmt.Fprintln(stdout, "queue is empty")
		return err
	}
	_, err := fmt.Fprintf(stdout, "%d %s, %d held\n", total, queuePlural(total, "delivery", "deliveries"), held)
	return err
}

// queueTable prints rows under one header, page by page. Column widths only
// grow, so they stay aligned within a page and never shrink between pages.
type queueTable struct {
	w      io.Writer
	widths []int
}

var queueHeader = []string{"ID", "DOMAIN", "STATE", "ATTEMPTS", "NEXT ATTEMPT", "SIZE", "SENDER", "RECIPIENTS", "LAST ERROR"}

func (t *queueTable) page(items []admin.Item) {
	if len(items) == 0 {
		return
	}
	rows := make([][]string, 0, len(items)+1)
	if t.widths == nil {
		rows = append(rows, queueHeader)
		t.widths = make([]int, len(queueHeader))
	}
	for _, it := range items {
		next := it.NextAttempt.Local().Format("2006-01-02 15:04:05")
		if it.State == "held" {
			next = "-"
		}
		sender := it.Sender
		if sender == "" {
			sender = "<>"
		}
		rows = append(rows, []string{
			it.ID, it.Domain, it.State, strconv.Itoa(it.Attempts), next,
			strconv.FormatInt(it.Size, 10), sender, strings.Join(it.Recipients, ","),
			strings.Join(strings.Fields(it.LastError), " "),
		})
	}
	for _, r := range rows {
		for i, cell := range r {
			t.widths[i] = max(t.widths[i], len(cell))
		}
	}
	var b strings.Builder
	for _, r := range rows {
		b.Reset()
		for i, cell := range r {
			if i == len(r)-1 {
				b.WriteString(cell)
				break
			}
			b.WriteString(cell)
			b.WriteString(strings.Repeat(" ", t.widths[i]-len(cell)+2))
		}
		fmt.Fprintln(t.w, strings.TrimRight(b.String(), " "))
	}
}

// queueID accepts an id as an operator may type it: ids are upper case.
func queueID(s string) string { return strings.ToUpper(strings.TrimSpace(s)) }

// queueTarget cleans an ID|DOMAIN argument (see admin.Target): an id is
// upper-cased, a domain is left to the server to normalise.
func queueTarget(s string) string {
	s = strings.TrimSpace(s)
	if admin.Target(s).ID != "" {
		return queueID(s)
	}
	return s
}

func queuePlural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func queueOrNothing(s string) string {
	if s == "" {
		return "no arguments"
	}
	return s
}
