// Package config reads backupmx's TOML configuration into typed values.
//
// Invariant: a Config returned by Load has passed Validate: unknown keys and bad
// values are errors that name the key, and every default is filled in, so the
// rest of the program never checks for zero values.
package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"golang.org/x/net/idna"

	"backupmx/internal/dnsbl"
)

// Duration is a time.Duration written in Go syntax, with "d" for days ("15d", "1d12h").
type Duration time.Duration

// UnmarshalText parses Go duration syntax plus a leading "Nd" day count.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration in Go syntax.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// ParseDuration accepts "15d", "1d12h", "10m", "90s".
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.Atoi(s[:i])
		if err != nil {
			return 0, fmt.Errorf("bad duration %q", s)
		}
		days = time.Duration(n) * 24 * time.Hour
		s = s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("bad duration %q", s)
	}
	return days + v, nil
}

// Config is the whole file.
type Config struct {
	Hostname string    `toml:"hostname"` // banner, Received, HELO to primaries
	Node     string    `toml:"node"`     // this node's name (lease owner); default the host name
	SMTP     SMTP      `toml:"smtp"`
	Store    Store     `toml:"store"`
	Queue    Queue     `toml:"queue"`
	Admin    Admin     `toml:"admin"`
	DNS      DNS       `toml:"dns"`
	DNSBL    DNSBL     `toml:"dnsbl"`
	Notices  Notices   `toml:"notices"`
	TLS      TLS       `toml:"tls"`
	Log      Log       `toml:"log"`
	Domains  []*Domain `toml:"domain"`

	byName map[string]*Domain
}

// SMTP is the inbound listener.
type SMTP struct {
	Listen         []string `toml:"listen"`
	MaxMessageSize int64    `toml:"max_message_size"` // bytes; default 50 MiB
	MaxRecipients  int      `toml:"max_recipients"`   // per message; default 1000
	// MaxReceived refuses a message whose header would have more Received
	// fields (ours included) as a mail loop; default 100 (RFC 5321 §6.3).
	MaxReceived int `toml:"max_received"`
	// Timeouts, RFC 5321 §4.5.3.2: commands 5m; DATA is an idle timeout per read.
	CommandTimeout Duration `toml:"command_timeout"`
	DataTimeout    Duration `toml:"data_timeout"`
	MaxConnections int      `toml:"max_connections"` // default 1000
	// Abuse limits. For the keys where 0 means "off", Parse supplies the
	// default before decoding, so an explicit 0 is kept.
	MaxConnectionsPerIP int      `toml:"max_connections_per_ip"` // default 20 (IPv6: per /64)
	ConnectionRatePerIP int      `toml:"connection_rate_per_ip"` // connections per minute; default 100, 0 = no limit
	MaxBadCommands      int      `toml:"max_bad_commands"`       // error replies before 421; default 20
	PregreetWait        Duration `toml:"pregreet_wait"`          // default 1s, "0s" = no pregreet test
	// TrustedNetworks may use XFORWARD (CIDRs); none by default.
	TrustedNetworks []string       `toml:"trusted_networks"`
	Trusted         []netip.Prefix `toml:"-"`
}

// Store selects and configures the queue engine.
type Store struct {
	Engine string `toml:"engine"` // "embedded" (default) or "postgres"
	Dir    string `toml:"dir"`    // embedded: data directory
	DSN    string `toml:"dsn"`    // postgres: connection string
	// CommitDelay (embedded): how long a group commit waits, at most, for
	// messages still being received; default 2ms, "0s" = never.
	CommitDelay Duration `toml:"commit_delay"`
}

// Queue is the scheduler's policy.
type Queue struct {
	Retention     Duration   `toml:"retention"`      // default 15d, then a DSN
	Retry         []Duration `toml:"retry"`          // the last interval repeats
	ProbeInterval Duration   `toml:"probe_interval"` // default 10s
	// ProbeRate caps how many probes start per second (default 100): with
	// more down domains than ProbeInterval × ProbeRate, a round takes longer
	// than the interval and each primary is probed less often.
	ProbeRate      int      `toml:"probe_rate"`
	Workers        int      `toml:"workers"`         // domains delivered at once; default 16
	Sessions       int      `toml:"sessions"`        // connections per primary; default 10
	Batch          int      `toml:"batch"`           // deliveries read per claim; default 200
	Lease          Duration `toml:"lease"`           // domain lease length; default 2m
	ConnectTimeout Duration `toml:"connect_timeout"` // default 30s
}

// Admin is the HTTP API the queue commands use.
type Admin struct {
	Listen string `toml:"listen"`
	Token  string `toml:"token"` // bearer token; empty allowed only on loopback
	// Pprof serves Go's runtime profiles under /debug/pprof/ (behind the
	// token like the rest). Off by default.
	Pprof bool `toml:"pprof"`
}

// DNS selects the resolver.
type DNS struct {
	Resolver string `toml:"resolver"` // "host:port"; empty = system resolver
}

// DNSBL is the blocklist check of every client at the door.
type DNSBL struct {
	// Zones: "zone*weight", optionally "zone=answer;prefix*weight" (see
	// dnsbl.ParseZone). Default zen.spamhaus.org*2, bl.spamcop.net*1,
	// b.barracudacentral.org*1; an explicit [] turns the check off.
	Zones     []string       `toml:"zones"`
	Threshold int            `toml:"threshold"` // reject at this score; default 2
	Allow     []string       `toml:"allow"`     // CIDRs or addresses never checked
	Timeout   Duration       `toml:"timeout"`   // total budget per client; default 5s
	Parsed    []dnsbl.Zone   `toml:"-"`
	Allowed   []netip.Prefix `toml:"-"`
}

// DefaultDNSBLZones is the default of dnsbl.zones.
var DefaultDNSBLZones = []string{"zen.spamhaus.org*2", "bl.spamcop.net*1", "b.barracudacentral.org*1"}

// Notices says where DSNs go.
type Notices struct {
	Smarthost string `toml:"smarthost"` // "host:port"; empty = MX of the sender's domain
	Port      int    `toml:"port"`      // port used with MX hosts; default 25
}

// TLS is the inbound STARTTLS certificate(s). No pair: no STARTTLS.
// cert/key is one pair; [[tls.certificate]] adds more (chosen by SNI).
type TLS struct {
	Cert         string     `toml:"cert"` // PEM chain
	Key          string     `toml:"key"`  // PEM private key
	Certificates []CertPair `toml:"certificate"`
}

// CertPair is one certificate chain and its key, both PEM files.
type CertPair struct {
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
}

// Pairs lists every configured pair, the simple form first.
func (t TLS) Pairs() []CertPair {
	var ps []CertPair
	if t.Cert != "" || t.Key != "" {
		ps = append(ps, CertPair{t.Cert, t.Key})
	}
	return append(ps, t.Certificates...)
}

// TLS policies towards a primary (Domain.TLS).
const (
	TLSMay     = "may"     // STARTTLS when offered, plain text if it fails
	TLSEncrypt = "encrypt" // never plain text; the certificate is not checked
	TLSVerify  = "verify"  // encrypt, and the certificate must verify for the host name
)

// Log configures the operator's log.
type Log struct {
	Level  string `toml:"level"`  // debug, info (default), warn, error
	Format string `toml:"format"` // text (default) or json
}

// Domain is one customer domain we are backup MX for.
type Domain struct {
	Name      string   `toml:"name"`
	Primary   []string `toml:"primary"`   // host:port in preference order; empty = MX records
	Retention Duration `toml:"retention"` // default queue.retention
	// Recipient validation: a static list (local parts or addresses) and/or
	// a file of them (one a line, reloaded on SIGHUP); verify = "primary"
	// checks unlisted recipients against the primary (cached); unknown says
	// what to do when neither can tell: "accept" (default) or "tempfail".
	Recipients     []string `toml:"recipients"`
	RecipientsFile string   `toml:"recipients_file"`
	Verify         string   `toml:"verify"`
	Unknown        string   `toml:"unknown"`
	// Delivery to the primary: TLS policy ("may" default, "encrypt",
	// "verify"); tls_ca, a PEM file of roots for "verify" instead of the
	// system's; xforward (default true) sends XFORWARD when offered.
	TLS      string         `toml:"tls"`
	TLSCA    string         `toml:"tls_ca"`
	XForward *bool          `toml:"xforward"`
	TLSRoots *x509.CertPool `toml:"-"` // parsed tls_ca; nil = system roots
}

// SendXForward reports whether XFORWARD is on for the domain (default true).
func (d *Domain) SendXForward() bool { return d.XForward == nil || *d.XForward }

// Load reads and validates the file at path.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(string(b))
}

// Parse decodes and validates a configuration text.
func Parse(text string) (*Config, error) {
	// Defaults of keys whose zero value is meaningful ("off") are set before
	// decoding, so that an explicit zero survives.
	c := Config{
		SMTP:  SMTP{PregreetWait: Duration(time.Second), ConnectionRatePerIP: 100},
		Store: Store{CommitDelay: Duration(2 * time.Millisecond)},
		DNSBL: DNSBL{Zones: append([]string(nil), DefaultDNSBLZones...), Threshold: 2},
	}
	md, err := toml.Decode(text, &c)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("config: unknown key(s): %s", strings.Join(keys, ", "))
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate fills in defaults and checks every value; errors name the key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("config: %s: %s", key, fmt.Sprintf(format, a...)))
	}
	if c.Hostname == "" {
		h, _ := os.Hostname()
		c.Hostname = h
	}
	if c.Node == "" {
		c.Node = c.Hostname
	}
	if len(c.SMTP.Listen) == 0 {
		c.SMTP.Listen = []string{"0.0.0.0:25"}
	}
	for _, l := range c.SMTP.Listen {
		if _, _, err := net.SplitHostPort(l); err != nil {
			bad("smtp.listen", "%q is not host:port", l)
		}
	}
	def64(&c.SMTP.MaxMessageSize, 50<<20)
	if c.SMTP.MaxMessageSize < 0 {
		bad("smtp.max_message_size", "must be positive")
	}
	defInt(&c.SMTP.MaxRecipients, 1000)
	defInt(&c.SMTP.MaxReceived, 100)
	if c.SMTP.MaxReceived < 2 {
		bad("smtp.max_received", "must be at least 2")
	}
	defInt(&c.SMTP.MaxConnections, 1000)
	defDur(&c.SMTP.CommandTimeout, 5*time.Minute)
	defDur(&c.SMTP.DataTimeout, 3*time.Minute)
	defInt(&c.SMTP.MaxConnectionsPerIP, 20)
	defInt(&c.SMTP.MaxBadCommands, 20)
	for key, v := range map[string]int{"smtp.max_connections_per_ip": c.SMTP.MaxConnectionsPerIP,
		"smtp.connection_rate_per_ip": c.SMTP.ConnectionRatePerIP, "smtp.max_bad_commands": c.SMTP.MaxBadCommands} {
		if v < 0 {
			bad(key, "must not be negative")
		}
	}
	if c.SMTP.PregreetWait < 0 {
		bad("smtp.pregreet_wait", "must not be negative")
	}
	c.SMTP.Trusted = nil
	for _, n := range c.SMTP.TrustedNetworks {
		p, err := parsePrefix(n)
		if err != nil {
			bad("smtp.trusted_networks", "%q is not an address or CIDR", n)
		}
		c.SMTP.Trusted = append(c.SMTP.Trusted, p)
	}
	c.DNSBL.Parsed, c.DNSBL.Allowed = nil, nil
	for _, z := range c.DNSBL.Zones {
		pz, err := dnsbl.ParseZone(z)
		if err != nil {
			bad("dnsbl.zones", "%v", err)
		}
		c.DNSBL.Parsed = append(c.DNSBL.Parsed, pz)
	}
	for _, n := range c.DNSBL.Allow {
		p, err := parsePrefix(n)
		if err != nil {
			bad("dnsbl.allow", "%q is not an address or CIDR", n)
		}
		c.DNSBL.Allowed = append(c.DNSBL.Allowed, p)
	}
	if c.DNSBL.Threshold < 0 {
		bad("dnsbl.threshold", "must not be negative")
	}
	defDur(&c.DNSBL.Timeout, 5*time.Second)

	switch c.Store.Engine {
	case "":
		c.Store.Engine = "embedded"
		fallthrough
	case "embedded":
		if c.Store.Dir == "" {
			c.Store.Dir = "var"
		}
		if c.Store.CommitDelay < 0 || c.Store.CommitDelay > Duration(time.Second) {
			bad("store.commit_delay", "must be between 0s and 1s")
		}
	case "postgres":
		if c.Store.DSN == "" {
			bad("store.dsn", "required with engine \"postgres\"")
		}
	default:
		bad("store.engine", "%q: want \"embedded\" or \"postgres\"", c.Store.Engine)
	}

	defDur(&c.Queue.Retention, 15*24*time.Hour)
	if len(c.Queue.Retry) == 0 {
		for range 6 {
			c.Queue.Retry = append(c.Queue.Retry, Duration(10*time.Minute))
		}
		c.Queue.Retry = append(c.Queue.Retry, Duration(time.Hour))
	}
	for i, r := range c.Queue.Retry {
		if r <= 0 {
			bad(fmt.Sprintf("queue.retry[%d]", i), "must be positive")
		}
	}
	defDur(&c.Queue.ProbeInterval, 10*time.Second)
	defInt(&c.Queue.ProbeRate, 100)
	defInt(&c.Queue.Workers, 16)
	defInt(&c.Queue.Sessions, 10)
	defInt(&c.Queue.Batch, 200)
	defDur(&c.Queue.Lease, 2*time.Minute)
	defDur(&c.Queue.ConnectTimeout, 30*time.Second)
	for key, v := range map[string]int{"queue.workers": c.Queue.Workers, "queue.sessions": c.Queue.Sessions, "queue.batch": c.Queue.Batch, "queue.probe_rate": c.Queue.ProbeRate} {
		if v < 1 {
			bad(key, "must be at least 1")
		}
	}

	if c.Admin.Listen != "" {
		host, _, err := net.SplitHostPort(c.Admin.Listen)
		if err != nil {
			bad("admin.listen", "%q is not host:port", c.Admin.Listen)
		} else if c.Admin.Token == "" && !isLoopback(host) {
			bad("admin.token", "required when admin.listen (%s) is not loopback", c.Admin.Listen)
		}
	}
	if c.DNS.Resolver != "" {
		if _, _, err := net.SplitHostPort(c.DNS.Resolver); err != nil {
			bad("dns.resolver", "%q is not host:port", c.DNS.Resolver)
		}
	}
	if c.Notices.Smarthost != "" {
		if _, _, err := net.SplitHostPort(c.Notices.Smarthost); err != nil {
			bad("notices.smarthost", "%q is not host:port", c.Notices.Smarthost)
		}
	}
	for i, p := range c.TLS.Pairs() {
		if p.Cert == "" || p.Key == "" {
			bad(fmt.Sprintf("tls.certificate[%d]", i), "needs both cert and key")
		}
	}
	if c.Notices.Port == 0 {
		c.Notices.Port = 25
	}
	switch c.Log.Level {
	case "", "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "", "text", "json":
	default:
		bad("log.format", "%q: want text or json", c.Log.Format)
	}

	c.byName = make(map[string]*Domain)
	for i, d := range c.Domains {
		key := fmt.Sprintf("domain[%d]", i)
		name, err := NormalizeDomain(d.Name)
		if err != nil || name == "" {
			bad(key+".name", "%q is not a domain name", d.Name)
			continue
		}
		d.Name = name
		if _, dup := c.byName[name]; dup {
			bad(key+".name", "%q appears twice", name)
		}
		c.byName[name] = d
		for _, p := range d.Primary {
			if _, _, err := net.SplitHostPort(p); err != nil {
				bad(key+".primary", "%q is not host:port", p)
			}
		}
		defDur(&d.Retention, c.Queue.Retention.D())
		switch d.Verify {
		case "", "primary":
		default:
			bad(key+".verify", "%q: want \"primary\" or nothing", d.Verify)
		}
		switch d.Unknown {
		case "":
			d.Unknown = "accept"
		case "accept", "tempfail":
		default:
			bad(key+".unknown", "%q: want \"accept\" or \"tempfail\"", d.Unknown)
		}
		switch d.TLS {
		case "":
			d.TLS = TLSMay
		case TLSMay, TLSEncrypt, TLSVerify:
		default:
			bad(key+".tls", "%q: want \"may\", \"encrypt\" or \"verify\"", d.TLS)
		}
		d.TLSRoots = nil
		if d.TLSCA != "" {
			pem, err := os.ReadFile(d.TLSCA)
			pool := x509.NewCertPool()
			switch {
			case err != nil:
				bad(key+".tls_ca", "%v", err)
			case !pool.AppendCertsFromPEM(pem):
				bad(key+".tls_ca", "%s: no PEM certificate", d.TLSCA)
			default:
				d.TLSRoots = pool
			}
		}
	}
	return errors.Join(errs...)
}

// Domain returns the configuration of a customer domain (already normalised), or nil.
func (c *Config) Domain(name string) *Domain { return c.byName[name] }

// NormalizeDomain lower-cases a domain, drops one trailing dot and converts
// U-labels to A-labels, so that every spelling of a domain compares equal.
func NormalizeDomain(s string) (string, error) {
	s = strings.TrimSuffix(strings.TrimSpace(s), ".")
	a, err := idna.Lookup.ToASCII(s)
	if err != nil {
		return "", err
	}
	return strings.ToLower(a), nil
}

// parsePrefix reads "192.0.2.0/24" or a single address.
func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func defInt(v *int, d int) {
	if *v == 0 {
		*v = d
	}
}

func def64(v *int64, d int64) {
	if *v == 0 {
		*v = d
	}
}

func defDur(v *Duration, d time.Duration) {
	if *v == 0 {
		*v = Duration(d)
	}
}
