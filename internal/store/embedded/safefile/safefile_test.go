package safefile

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	final := filepath.Join(dir, "f")
	n, err := WriteFile(dir, final, bytes.NewReader([]byte("hello")))
	if err != nil || n != 5 {
		t.Fatalf("WriteFile = %d, %v", n, err)
	}
	got, err := os.ReadFile(final)
	if err != nil || string(got) != "hello" {
		t.Fatalf("read back %q, %v", got, err)
	}
	if _, err := WriteFile(dir, final, bytes.NewReader([]byte("other"))); !errors.Is(err, ErrExist) {
		t.Fatalf("second WriteFile: %v, want ErrExist", err)
	}
	if got, _ := os.ReadFile(final); string(got) != "hello" {
		t.Fatalf("committed file replaced: %q", got)
	}
	assertOnly(t, dir, "f")
}

type failing struct{ n int }

func (f *failing) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("boom")
	}
	f.n--
	return copy(p, "xxxx"), nil
}

func TestWriteFileReaderFails(t *testing.T) {
	dir := t.TempDir()
	_, err := WriteFile(dir, filepath.Join(dir, "f"), &failing{n: 3})
	if err == nil || err.Error() != "boom" {
		t.Fatalf("err = %v, want boom", err)
	}
	assertOnly(t, dir)
}

func TestAbort(t *testing.T) {
	dir := t.TempDir()
	f, err := Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(f, "abc"); err != nil {
		t.Fatal(err)
	}
	f.Abort()
	f.Abort()
	if err := f.Commit(filepath.Join(dir, "f")); err == nil {
		t.Fatal("Commit after Abort succeeded")
	}
	assertOnly(t, dir)
}

func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if len(got) != len(names) {
		t.Fatalf("dir has %v, want %v", got, names)
	}
	for i := range got {
		if got[i] != names[i] {
			t.Fatalf("dir has %v, want %v", got, names)
		}
	}
}
