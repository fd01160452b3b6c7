// Package pgtest finds or starts a real PostgreSQL for tests.
//
// Invariant: every server it starts listens on 127.0.0.1 only (plus a unix
// socket inside its own temporary directory), runs with fsync on, and is
// stopped and removed by the test binary that started it: the shared server
// by Main when the tests are done (and, should the test binary die, by the
// kernel: the server is its child with a parent-death signal); a private one
// from NewServer at the end of its test.
//
// Where PostgreSQL comes from, in order:
//
//  1. BACKUPMX_TEST_PG_DSN: an existing server reached with that connection
//     string, as a role that may CREATE DATABASE. Each DSN call gets a fresh
//     database on it, dropped at the end of the test.
//  2. The local installation (/usr/lib/postgresql/*/bin, or initdb on PATH):
//     one throwaway cluster per test binary, initdb'd into a temporary
//     directory (as the user "postgres" when running as root, as initdb
//     refuses root), started on a free loopback port.
//
// When neither exists the test is skipped, or fails when the environment
// variable CI is set. A package using DSN must call Main from its TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvDSN names the environment variable with an existing server's DSN.
const EnvDSN = "BACKUPMX_TEST_PG_DSN"

var (
	mainCalled atomic.Bool

	sharedOnce sync.Once
	shared     *Server
	sharedErr  error

	dbSeq atomic.Int64
)

// Main runs the tests, then stops the shared server if one was started, and
// exits with the tests' status.
func Main(m *testing.M) {
	mainCalled.Store(true)
	code := m.Run()
	if shared != nil {
		shared.stop()
		shared.remove()
	}
	os.Exit(code)
}

// DSN returns the connection string of a new, empty database, dropped when t
// ends. It skips t (fails it under CI) when no PostgreSQL can be had.
func DSN(t testing.TB) string {
	t.Helper()
	if env := os.Getenv(EnvDSN); env != "" {
		return createDB(t, env)
	}
	if !mainCalled.Load() {
		t.Fatal("pgtest: call pgtest.Main(m) from TestMain to use a throwaway server")
	}
	sharedOnce.Do(func() { shared, sharedErr = start() })
	if sharedErr != nil {
		unavailable(t, sharedErr)
	}
	return createDB(t, shared.adminDSN())
}

// Server is a throwaway PostgreSQL cluster that a test may stop and start.
type Server struct {
	Port int

	bin, dir, data, sock string
	cred                 *syscall.Credential

	mu   sync.Mutex
	proc *exec.Cmd
	done chan struct{} // closed when proc has exited
}

// NewServer starts a private server for t from the local installation (an
// external BACKUPMX_TEST_PG_DSN can't be stopped, so it is not used here). It
// is stopped and removed when t ends.
func NewServer(t testing.TB) *Server {
	t.Helper()
	s, err := start()
	if err != nil {
		unavailable(t, err)
	}
	t.Cleanup(func() { s.stop(); s.remove() })
	return s
}

// DSN returns the connection string of a new, empty database on s.
func (s *Server) DSN(t testing.TB) string {
	t.Helper()
	return createDB(t, s.adminDSN())
}

// Stop shuts the server down (fast mode: clients are disconnected).
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if err := s.stop(); err != nil {
		t.Fatalf("pgtest: stop: %v", err)
	}
}

// Start starts a stopped server again on the same port and data.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	if err := s.run(); err != nil {
		t.Fatalf("pgtest: start: %v", err)
	}
}

func (s *Server) adminDSN() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.Port)
}

func unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("pgtest: PostgreSQL is required under CI: %v", err)
	}
	t.Skipf("pgtest: no PostgreSQL (set %s or install postgresql): %v", EnvDSN, err)
}

// createDB creates a uniquely named database through admin and returns
// admin's DSN pointing at it.
func createDB(t testing.TB, admin string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("pgtest: connect %s: %v", redact(admin), err)
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("backupmx_test_%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9, dbSeq.Add(1))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, admin)
		if err != nil {
			return // the server may have been stopped by the test
		}
		defer c.Close(ctx)
		_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	return withDatabase(admin, name)
}

// withDatabase returns dsn (URL or keyword/value form) with its database
// replaced by name.
func withDatabase(dsn, name string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err == nil {
			u.Path = "/" + name
			return u.String()
		}
	}
	return dsn + " dbname=" + name // a later keyword wins
}

func redact(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		u.User = url.User(u.User.Username())
		return u.String()
	}
	return "(dsn)"
}

// findBin returns the directory holding initdb and postgres, newest version
// first.
func findBin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("initdb not found in /usr/lib/postgresql/*/bin or PATH")
}

func version(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// start initdb's a cluster in a new temporary directory and starts it.
func start() (*Server, error) {
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root and no user postgres to run initdb as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	s.dir, err = os.MkdirTemp("", "backupmx-pg-")
	if err != nil {
		return nil, err
	}
	if s.cred != nil {
		if err := os.Chown(s.dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			s.remove()
			return nil, err
		}
	}
	s.data = filepath.Join(s.dir, "data")
	s.sock = s.dir
	initdb := s.command(filepath.Join(bin, "initdb"), "-D", s.data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		s.remove()
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	for range 5 { // a free port can be taken between our probe and the server's bind
		s.Port, err = freePort()
		if err != nil {
			break
		}
		if err = s.run(); err == nil {
			return s, nil
		}
	}
	s.remove()
	return nil, err
}

func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// run starts the postmaster as a child of a goroutine that holds its OS
// thread for the child's life (the parent-death signal follows the thread,
// not the process), and waits until it accepts connections.
func (s *Server) run() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		return errors.New("already running")
	}
	logf, err := os.OpenFile(filepath.Join(s.dir, "postgres.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := s.command(filepath.Join(s.bin, "postgres"), "-D", s.data,
		"-p", strconv.Itoa(s.Port), "-k", s.sock,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=on", "-c", "synchronous_commit=on",
		"-c", "max_connections=300",
		"-c", "shared_buffers=64MB")
	cmd.Stdout, cmd.Stderr = logf, logf
	started := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine, after the child
		err := cmd.Start()
		started <- err
		if err == nil {
			_ = cmd.Wait()
		}
		logf.Close()
		close(done)
	}()
	if err := <-started; err != nil {
		return err
	}
	s.proc, s.done = cmd, done
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := pgx.Connect(ctx, s.adminDSN())
		cancel()
		if err == nil {
			c.Close(context.Background())
			return nil
		}
		select {
		case <-done:
			s.proc = nil
			log, _ := os.ReadFile(filepath.Join(s.dir, "postgres.log"))
			return fmt.Errorf("postgres exited at start: %s", tail(log))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stopLocked()
			return fmt.Errorf("postgres did not accept connections: %v", err)
		}
	}
}

func (s *Server) stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopLocked()
}

// stopLocked asks for a fast shutdown (SIGINT) and waits for it.
func (s *Server) stopLocked() error {
	if s.proc == nil {
		return nil
	}
	_ = s.proc.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
	case <-time.After(60 * time.Second):
		_ = s.proc.Process.Kill()
		<-s.done
	}
	s.proc = nil
	return nil
}

func (s *Server) remove() {
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func tail(b []byte) string {
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
