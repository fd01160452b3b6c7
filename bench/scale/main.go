// Command scale fills an embedded store with a large queue for the scale
// benchmark (issue 6 item 2) and writes a matching server configuration.
//
//	go run ./bench/scale fill -dir DIR -n 1000000 -domains 10000 -size 1024 -due later
//	go run ./bench/scale config -dir DIR -domains 10000 -smtp ADDR -admin ADDR -primary ADDR
//
// fill stores messages through embedded.Fill (body files, one syncfs, rows in
// big transactions), one recipient each, spread round-robin over -domains
// domains d00000.test, d00001.test, …; every message has been tried once.
// -due says when they are next due: "now" (all at once, as after a flush),
// "hour" (spread over the next hour: the steady state of a long outage on the
// hourly schedule) or "later" (two to three hours from now: nothing is due
// while the benchmark runs, so what runs is the probing alone).
//
// config prints a TOML file for `backupmx serve` with those domains, each
// with -primary as its only primary (point it at a closed loopback port: the
// primaries are down), no DNSBL, and the store in -dir.
//
// Everything stays on loopback; the .test domains are reserved (RFC 2606).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"time"

	"backupmx/internal/store"
	"backupmx/internal/store/embedded"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: scale fill|config [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "fill":
		err = fill(os.Args[2:])
	case "config":
		err = config(os.Args[2:], os.Stdout)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

func domainName(i int) string { return fmt.Sprintf("d%05d.test", i) }

func fill(args []string) error {
	fs := flag.NewFlagSet("fill", flag.ExitOnError)
	dir := fs.String("dir", "", "store directory (created if needed)")
	n := fs.Int("n", 100000, "messages to add")
	domains := fs.Int("domains", 10000, "spread over this many domains")
	size := fs.Int("size", 1024, "body size in bytes")
	due := fs.String("due", "later", "when they are next due: now, hour or later")
	batch := fs.Int("batch", 10000, "messages per transaction")
	fs.Parse(args)
	if *dir == "" {
		return fmt.Errorf("fill: -dir is required")
	}
	st, err := embedded.Open(*dir)
	if err != nil {
		return err
	}
	defer st.Close()

	body := makeBody(*size)
	now := time.Now()
	received := now.Add(-time.Hour)
	next := func() time.Time {
		switch *due {
		case "now":
			return received
		case "hour":
			return now.Add(rand.N(time.Hour))
		default:
			return now.Add(2*time.Hour + rand.N(time.Hour))
		}
	}
	if *due != "now" && *due != "hour" && *due != "later" {
		return fmt.Errorf("fill: -due %q: want now, hour or later", *due)
	}
	// Ids: a run prefix (several fills can share a store) and a counter.
	prefix := fmt.Sprintf("G%08X", uint32(now.UnixNano()>>10))
	start := time.Now()
	items := make([]embedded.FillItem, 0, *batch)
	for i := 0; i < *n; i++ {
		dom := domainName(i % *domains)
		items = append(items, embedded.FillItem{
			Env: &store.Envelope{
				ID:       fmt.Sprintf("%s%09d", prefix, i),
				Sender:   "sender@example.test",
				Received: received,
				Client:   store.Client{Addr: "127.0.0.1", HELO: "client.example.test", Proto: "ESMTP"},
				Domains:  map[string][]store.Recipient{dom: {{Addr: fmt.Sprintf("user%d@%s", i%1000, dom)}}},
			},
			Next:     next(),
			Attempts: 1,
			LastErr:  "dial tcp 127.0.0.1:9: connect: connection refused",
		})
		if len(items) == *batch || i == *n-1 {
			if err := st.Fill(context.Background(), items, body); err != nil {
				return err
			}
			items = items[:0]
			fmt.Fprintf(os.Stderr, "\rfilled %d/%d (%.0f msgs/s)", i+1, *n, float64(i+1)/time.Since(start).Seconds())
		}
	}
	fmt.Fprintln(os.Stderr)
	return nil
}

// makeBody is a plausible message of about size bytes with CRLF lines.
func makeBody(size int) []byte {
	hdr := "From: sender@example.test\r\nTo: user@example.test\r\nSubject: scale benchmark\r\n\r\n"
	b := []byte(hdr)
	line := []byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!?\r\n")
	for len(b)+len(line) <= size {
		b = append(b, line...)
	}
	return b
}

func config(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("config", flag.ExitOnError)
	dir := fs.String("dir", "", "store directory")
	domains := fs.Int("domains", 10000, "domains d00000.test …")
	smtp := fs.String("smtp", "127.0.0.1:12601", "SMTP listen address")
	admin := fs.String("admin", "127.0.0.1:12602", "admin API listen address")
	primary := fs.String("primary", "127.0.0.1:12603", "every domain's primary (down: nothing listens)")
	fs.Parse(args)
	if *dir == "" {
		return fmt.Errorf("config: -dir is required")
	}
	w := bufio.NewWriter(out)
	fmt.Fprintf(w, `hostname = "mx2.example.test"
node = "scale"

[smtp]
listen = [%q]
pregreet_wait = "0s"
connection_rate_per_ip = 0
max_connections_per_ip = 1000

[store]
engine = "embedded"
dir = %q

[admin]
listen = %q

[dns]
resolver = "127.0.0.1:9" # nothing listens: no lookup leaves the machine

[dnsbl]
zones = []

[log]
level = "warn"
`, *smtp, *dir, *admin)
	for i := 0; i < *domains; i++ {
		fmt.Fprintf(w, "\n[[domain]]\nname = %q\nprimary = [%q]\n", domainName(i), *primary)
	}
	return w.Flush()
}
