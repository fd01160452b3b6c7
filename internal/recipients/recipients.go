// Package recipients decides whether a customer domain has a given recipient,
// so that the door never accepts mail it would later have to bounce.
//
// Invariants:
//   - Only a definite answer is final: an address is Unknown (550 5.1.1) when
//     it is missing from the domain's static list and verification is off, or
//     when the primary said 5xx to it. A temporary doubt (primary down, 4xx,
//     timeout) is never cached and never becomes Unknown; it is decided by the
//     domain's `unknown` setting (accept or tempfail), or by an earlier answer
//     still in the cache.
//   - Answers from the primary are cached (positive 31 days, negative 3 days,
//     like Postfix's address verification) in a bounded LRU: memory does not
//     grow with the number of addresses tried.
//   - Reload swaps a domain's file-backed list only when the file was read
//     whole; a bad file keeps the previous list.
package recipients

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"backupmx/internal/config"
)

// Verdict is the decision for one recipient.
type Verdict int

const (
	Accept   Verdict = iota // 250
	Unknown                 // 550 5.1.1: no such user
	TempFail                // 450 4.1.1: could not verify, try again later
)

func (v Verdict) String() string {
	return [...]string{"accept", "unknown", "tempfail"}[v]
}

// Answer is a callout's definite answer about one address.
type Answer struct {
	Exists bool
	Reply  string // the primary's reply, for the log
}

// Callout asks a domain's primary whether an address exists. A non-nil error
// is a temporary doubt (no primary reachable, 4xx, timeout).
type Callout interface {
	Verify(ctx context.Context, domain, addr string) (Answer, error)
}

// Validator checks recipients against each domain's configuration. Create it
// with New; it is safe for concurrent use.
type Validator struct {
	cfg     *config.Config
	callout Callout
	now     func() time.Time

	mu    sync.RWMutex
	lists map[string]map[string]bool // domain → lower-case local parts and addresses

	cache *lru
}

// Cache lifetimes (Postfix: address_verify_positive_expire_time 31d,
// address_verify_negative_expire_time 3d).
const (
	PositiveTTL = 31 * 24 * time.Hour
	NegativeTTL = 3 * 24 * time.Hour
	// DefaultCacheSize caps the callout cache (entries, ~100 bytes each).
	DefaultCacheSize = 100000
)

// New loads every domain's static list. callout may be nil when no domain
// has verify = "primary"; now nil means time.Now; cacheSize 0 means
// DefaultCacheSize.
func New(cfg *config.Config, callout Callout, now func() time.Time, cacheSize int) (*Validator, error) {
	if now == nil {
		now = time.Now
	}
	if cacheSize <= 0 {
		cacheSize = DefaultCacheSize
	}
	v := &Validator{cfg: cfg, callout: callout, now: now, cache: newLRU(cacheSize), lists: map[string]map[string]bool{}}
	return v, v.Reload()
}

// Reload re-reads every domain's recipients_file (on SIGHUP). A domain whose
// file cannot be read keeps its previous list; the errors are returned joined.
func (v *Validator) Reload() error {
	var errs []error
	lists := make(map[string]map[string]bool)
	v.mu.RLock()
	for _, d := range v.cfg.Domains {
		if len(d.Recipients) == 0 && d.RecipientsFile == "" {
			continue
		}
		set := make(map[string]bool)
		for _, r := range d.Recipients {
			set[key(r)] = true
		}
		if d.RecipientsFile != "" {
			if err := readFile(d.RecipientsFile, set); err != nil {
				errs = append(errs, fmt.Errorf("recipients: domain %s: %w", d.Name, err))
				if old, ok := v.lists[d.Name]; ok {
					set = old
				}
			}
		}
		lists[d.Name] = set
	}
	v.mu.RUnlock()
	v.mu.Lock()
	v.lists = lists
	v.mu.Unlock()
	return errors.Join(errs...)
}

// readFile adds the file's entries to set: one local part or address a
// line; blank lines and "#" comments are skipped.
func readFile(path string, set map[string]bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if line = strings.TrimSpace(line); line != "" {
			set[key(line)] = true
		}
	}
	return sc.Err()
}

// key normalises a list entry or a recipient: local parts compare without
// case (as Postfix lookups do), domains as config.NormalizeDomain.
func key(s string) string {
	i := strings.LastIndexByte(s, '@')
	if i < 0 {
		return strings.ToLower(s)
	}
	domain := s[i+1:]
	if d, err := config.NormalizeDomain(domain); err == nil {
		domain = d
	}
	return strings.ToLower(s[:i]) + "@" + domain
}

// Check decides about local@domain (domain normalised, a configured
// domain). how says what decided, for the log: "list", "open" (no
// validation configured), "cache", "callout", "stale-cache", "unknown-policy".
func (v *Validator) Check(ctx context.Context, local, domain string) (verdict Verdict, how string) {
	return v.check(ctx, 0, local, domain)
}

// CheckWithin is Check bounded by timeout, counted from the callout: the
// other answers need no deadline (a timer per RCPT was 1% of the server's
// CPU at one message per connection).
func (v *Validator) CheckWithin(timeout time.Duration, local, domain string) (verdict Verdict, how string) {
	return v.check(context.Background(), timeout, local, domain)
}

// check is Check; a callout gets a deadline timeout from now, if not 0.
func (v *Validator) check(ctx context.Context, timeout time.Duration, local, domain string) (verdict Verdict, how string) {
	d := v.cfg.Domain(domain)
	if d == nil {
		return Unknown, "no-domain"
	}
	addr := local + "@" + domain
	v.mu.RLock()
	set, hasList := v.lists[domain]
	v.mu.RUnlock()
	if hasList && (set[key(local)] || set[key(addr)]) {
		return Accept, "list"
	}
	if d.Verify != "primary" || v.callout == nil {
		if hasList {
			return Unknown, "list"
		}
		return Accept, "open"
	}
	now := v.now()
	k := key(addr)
	e, cached := v.cache.get(k)
	if cached && now.Before(e.expires) {
		return verdictOf(e.exists), "cache"
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	ans, err := v.callout.Verify(ctx, domain, addr)
	if err == nil {
		ttl := NegativeTTL
		if ans.Exists {
			ttl = PositiveTTL
		}
		v.cache.put(k, cacheEntry{exists: ans.Exists, expires: now.Add(ttl)})
		return verdictOf(ans.Exists), "callout"
	}
	if cached && e.exists {
		// Primary down: a recipient that existed still does. (A stale "no
		// such user" is not trusted with a 5xx: the address may be new.)
		return Accept, "stale-cache"
	}
	if d.Unknown == "tempfail" {
		return TempFail, "unknown-policy"
	}
	return Accept, "unknown-policy"
}

func verdictOf(exists bool) Verdict {
	if exists {
		return Accept
	}
	return Unknown
}
