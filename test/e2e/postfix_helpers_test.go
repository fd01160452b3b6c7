package e2e

// A manager for throw-away Postfix instances, each with its own
// config_directory, queue_directory and data_directory under the test's
// temporary directory, an smtpd on 127.0.0.1 only, its log in a file, and
// every route that is not the test's own loopback next hop set to error:.
// The package's default instance (/etc/postfix) is never started.

import (
	"bytes"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// noRoute is the error: transport for every route a test did not ask for.
const noRoute = "error:5.7.1 no outside routes in backupmx e2e tests"

// requirePostfix skips the test when Postfix is not installed (or we are not
// root, which Postfix needs to start), and fails it instead when CI is set.
func requirePostfix(t *testing.T) {
	t.Helper()
	var missing []string
	for _, p := range []string{"/usr/sbin/postfix", "/usr/sbin/postconf", "/usr/sbin/postqueue"} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
		}
	}
	if _, err := user.Lookup("postfix"); err != nil {
		missing = append(missing, "user postfix")
	}
	why := ""
	switch {
	case len(missing) > 0:
		why = "Postfix not installed: missing " + strings.Join(missing, ", ")
	case os.Geteuid() != 0:
		why = "Postfix instances need root to start"
	default:
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal(why + " (CI is set)")
	}
	t.Skip(why)
}

// postfixInstance is one Postfix mail system of a test.
type postfixInstance struct {
	t        *testing.T
	Name     string
	Dir      string // the instance's root: conf, queue, data, mail, maillog
	ConfDir  string // config_directory: main.cf, master.cf
	QueueDir string
	DataDir  string
	MailDir  string // virtual_mailbox_base, owned by the postfix user
	LogPath  string // maillog_file
	Addr     string // the smtpd listener, 127.0.0.1:port
	UID, GID int    // of the postfix user (mail_owner)

	running bool
}

// postfixUIDs returns the uid and gid of the postfix user.
func postfixUIDs(t *testing.T) (int, int) {
	t.Helper()
	u, err := user.Lookup("postfix")
	if err != nil {
		t.Fatal(err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		t.Fatalf("postfix user: uid %q gid %q", u.Uid, u.Gid)
	}
	return uid, gid
}

// newPostfix writes an instance's configuration without starting it. mainCF
// overrides or adds to the safe base settings (see baseMainCF); masterCF is
// appended to the base master.cf (the smtpd listener on Addr and the usual
// internal services, none chrooted).
func newPostfix(t *testing.T, name string, mainCF map[string]string, masterCF string) *postfixInstance {
	t.Helper()
	requirePostfix(t)
	uid, gid := postfixUIDs(t)
	dir := filepath.Join(t.TempDir(), "postfix-"+name)
	p := &postfixInstance{
		t:        t,
		Name:     name,
		Dir:      dir,
		ConfDir:  filepath.Join(dir, "conf"),
		QueueDir: filepath.Join(dir, "queue"),
		DataDir:  filepath.Join(dir, "data"),
		MailDir:  filepath.Join(dir, "mail"),
		LogPath:  filepath.Join(dir, "maillog"),
		Addr:     FreeAddr(t),
		UID:      uid,
		GID:      gid,
	}
	for _, d := range []string{p.ConfDir, p.QueueDir, p.DataDir, p.MailDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The daemons run as the postfix user: it must reach the queue (t.TempDir
	// makes 0700 directories) and own the data and mail directories.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if strings.HasPrefix(d, filepath.Dir(filepath.Dir(dir))) {
				// The test's own temporary directories.
				if err := os.Chmod(d, fi.Mode().Perm()|0o011); err != nil {
					t.Fatal(err)
				}
			} else {
				t.Fatalf("postfix user cannot traverse %s: set TMPDIR to a directory others can enter", d)
			}
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	for _, d := range []string{p.DataDir, p.MailDir} {
		if err := os.Chown(d, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(p.LogPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	cf := p.baseMainCF()
	maps.Copy(cf, mainCF)
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(cf)) {
		fmt.Fprintf(&b, "%s = %s\n", k, cf[k])
	}
	p.write("main.cf", b.String())
	p.write("master.cf", p.baseMasterCF()+masterCF)

	t.Cleanup(func() {
		if p.running {
			p.Stop()
		}
		// A fatal or panic in any daemon is a broken setup even if the
		// test's own checks passed.
		if bad := p.LogLines(": fatal: "); len(bad) > 0 {
			t.Errorf("postfix %s logged fatal errors:\n%s", p.Name, strings.Join(bad, "\n"))
		}
		if bad := p.LogLines(": panic: "); len(bad) > 0 {
			t.Errorf("postfix %s logged panics:\n%s", p.Name, strings.Join(bad, "\n"))
		}
		if t.Failed() || os.Getenv("E2E_POSTFIX_LOG") != "" {
			t.Logf("postfix %s maillog (%s):\n%s", p.Name, p.LogPath, p.Log())
		}
	})
	// No separate `postfix check`: `postfix start` runs the same checks
	// (post-install create-missing makes the queue's subdirectories with their
	// owners and modes) and fails on configuration errors, and under load the
	// hundred-odd processes the check spawns cost a second or two.
	return p
}

// startPostfix configures and starts an instance; it is stopped when the
// test ends.
func startPostfix(t *testing.T, name string, mainCF map[string]string, masterCF string) *postfixInstance {
	t.Helper()
	p := newPostfix(t, name, mainCF, masterCF)
	p.Start()
	return p
}

// baseMainCF is what every instance starts from: loopback only, no DNS, no
// syslog, no local or virtual delivery, every transport an error:. A test
// opens exactly the route it needs (transport_maps to a loopback next hop, or
// virtual delivery into MailDir).
func (p *postfixInstance) baseMainCF() map[string]string {
	return map[string]string{
		"compatibility_level":   "3.6",
		"queue_directory":       p.QueueDir,
		"data_directory":        p.DataDir,
		"mail_owner":            "postfix",
		"setgid_group":          "postdrop",
		"syslog_name":           "postfix-e2e-" + p.Name,
		"maillog_file":          p.LogPath,
		"maillog_file_prefixes": p.Dir,
		"myhostname":            p.Name + ".postfix.e2e.test",
		"mydomain":              "postfix.e2e.test",
		"myorigin":              "$myhostname",
		"mydestination":         "",
		"relay_domains":         "",
		"relayhost":             "",
		"smtp_fallback_relay":   "",
		"inet_interfaces":       "loopback-only",
		"inet_protocols":        "ipv4",
		"mynetworks_style":      "host",
		"mynetworks":            "127.0.0.0/8",
		// No DNS at all: next hops are [127.0.0.1]:port literals, and the
		// smtpd does not look up client names.
		"smtp_dns_support_level": "disabled",
		"smtp_host_lookup":       "native",
		"lmtp_host_lookup":       "native",
		"smtpd_peername_lookup":  "no",
		// Every route is closed unless the test opens one.
		"default_transport":       noRoute,
		"relay_transport":         noRoute,
		"local_transport":         noRoute,
		"virtual_transport":       noRoute,
		"transport_maps":          "",
		"alias_maps":              "",
		"alias_database":          "",
		"local_recipient_maps":    "",
		"virtual_mailbox_domains": "",
		"virtual_alias_domains":   "",
		"virtual_alias_maps":      "",
		"virtual_mailbox_base":    p.MailDir,
		// Leave headers as the client sent them (no address rewriting, no
		// added Message-ID/Date/From).
		"local_header_rewrite_clients": "",
		"smtpd_tls_security_level":     "none",
		"smtp_tls_security_level":      "none",
		"biff":                         "no",
		// Seconds, not minutes: deferred mail is retried at once.
		"queue_run_delay":      "1s",
		"minimal_backoff_time": "1s",
		"maximal_backoff_time": "2s",
		"smtp_connect_timeout": "2s",
	}
}

// baseMasterCF is the smtpd on Addr plus the internal services Postfix needs
// (from Debian's master.cf, chroot off), and postlogd for maillog_file.
func (p *postfixInstance) baseMasterCF() string {
	return p.Addr + ` inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
virtual   unix  -       n       n       -       -       virtual
postlog   unix-dgram n  -       n       -       1       postlogd
`
}

func (p *postfixInstance) write(name, text string) {
	p.t.Helper()
	if err := os.WriteFile(filepath.Join(p.ConfDir, name), []byte(text), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// postfix runs `postfix -c ConfDir ARGS…` and fails the test on error.
func (p *postfixInstance) postfix(args ...string) {
	p.t.Helper()
	if out, err := p.run("/usr/sbin/postfix", args...); err != nil {
		p.t.Fatalf("postfix -c %s %s: %v\n%s\nmaillog:\n%s", p.ConfDir, strings.Join(args, " "), err, out, p.Log())
	}
}

func (p *postfixInstance) run(cmd string, args ...string) ([]byte, error) {
	full := append([]string{"-c", p.ConfDir}, args...)
	c := exec.Command(cmd, full...)
	c.Env = append(os.Environ(), "MAIL_CONFIG="+p.ConfDir)
	return c.CombinedOutput()
}

// Start starts the mail system and waits for the smtpd's 220 banner.
func (p *postfixInstance) Start() {
	p.t.Helper()
	if p.running {
		p.t.Fatalf("postfix %s: already running", p.Name)
	}
	p.running = true // from here on, the cleanup stops (or aborts) it
	p.postfix("start")
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := DialSMTP(p.Addr)
		if err == nil {
			c.Close()
			if bad := p.LogLines(": fatal: "); len(bad) > 0 {
				p.t.Fatalf("postfix %s started with fatal errors:\n%s", p.Name, strings.Join(bad, "\n"))
			}
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("postfix %s: no banner on %s: %v\nmaillog:\n%s", p.Name, p.Addr, err, p.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the mail system (postfix stop waits for the master to exit and
// kills it after 5 s). If that fails while `postfix status` still sees a
// master, postfix abort.
func (p *postfixInstance) Stop() {
	p.t.Helper()
	if !p.running {
		return
	}
	p.running = false
	out, err := p.run("/usr/sbin/postfix", "stop")
	if err == nil {
		return
	}
	if _, err := p.run("/usr/sbin/postfix", "status"); err != nil {
		return // not running: a start that failed
	}
	p.t.Errorf("postfix -c %s stop: %v\n%s", p.ConfDir, err, out)
	if out, err := p.run("/usr/sbin/postfix", "abort"); err != nil {
		p.t.Errorf("postfix -c %s abort: %v\n%s", p.ConfDir, err, out)
	}
}

// Flush asks the queue manager to retry all deferred mail now.
func (p *postfixInstance) Flush() {
	p.t.Helper()
	if out, err := p.run("/usr/sbin/postqueue", "-f"); err != nil {
		p.t.Fatalf("postqueue -c %s -f: %v\n%s", p.ConfDir, err, out)
	}
}

// QueueEmpty reports whether postqueue -p shows no mail.
func (p *postfixInstance) QueueEmpty() bool {
	p.t.Helper()
	out, err := p.run("/usr/sbin/postqueue", "-p")
	if err != nil {
		p.t.Fatalf("postqueue -c %s -p: %v\n%s", p.ConfDir, err, out)
	}
	return bytes.Contains(out, []byte("Mail queue is empty"))
}

// Log returns the instance's maillog so far.
func (p *postfixInstance) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// LogLines returns the maillog lines that contain every one of subs.
func (p *postfixInstance) LogLines(subs ...string) []string {
	var out []string
next:
	for _, l := range strings.Split(p.Log(), "\n") {
		for _, s := range subs {
			if !strings.Contains(l, s) {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}

// Maildir returns the messages delivered to user's maildir (new/), by file
// name.
func (p *postfixInstance) Maildir(user string) map[string][]byte {
	p.t.Helper()
	dir := filepath.Join(p.MailDir, user, "new")
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		p.t.Fatal(err)
	}
	msgs := make(map[string][]byte, len(ents))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			p.t.Fatal(err)
		}
		msgs[e.Name()] = b
	}
	return msgs
}

// Port returns the smtpd's port.
func (p *postfixInstance) Port() int {
	_, port, _ := net.SplitHostPort(p.Addr)
	n, _ := strconv.Atoi(port)
	return n
}

// virtualPrimaryCF makes an instance the final destination for domain:
// maildir delivery (virtual(8)) into MailDir/USER/ for the listed users, as
// the postfix user; any other user of domain is refused at RCPT with 550
// 5.1.1 (smtpd_reject_unlisted_recipient).
func virtualPrimaryCF(uid, gid int, domain string, users ...string) map[string]string {
	var m []string
	for _, u := range users {
		m = append(m, u+"@"+domain+"="+u+"/")
	}
	return map[string]string{
		"virtual_mailbox_domains": domain,
		"virtual_mailbox_maps":    "inline:{ " + strings.Join(m, ", ") + " }",
		"virtual_transport":       "virtual",
		"virtual_uid_maps":        "static:" + strconv.Itoa(uid),
		"virtual_gid_maps":        "static:" + strconv.Itoa(gid),
		"virtual_minimum_uid":     strconv.Itoa(min(uid, 100)),
	}
}

// relayToCF makes an instance relay mail for domain to the SMTP server at
// addr (host:port literal, no MX lookup), and nowhere else.
func relayToCF(domain, addr string) map[string]string {
	host, port, _ := net.SplitHostPort(addr)
	return map[string]string{
		"relay_domains":  domain,
		"transport_maps": "inline:{ " + domain + "=smtp:[" + host + "]:" + port + " }",
	}
}
