package pgtest

import "testing"

func TestWithDatabase(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"postgres://u:p@127.0.0.1:5432/postgres?sslmode=disable", "postgres://u:p@127.0.0.1:5432/x?sslmode=disable"},
		{"postgresql://u@h1,h2/db?target_session_attrs=read-write", "postgresql://u@h1,h2/x?target_session_attrs=read-write"},
		{"host=127.0.0.1 port=5432 dbname=postgres", "host=127.0.0.1 port=5432 dbname=postgres dbname=x"},
	} {
		if got := withDatabase(c.in, "x"); got != c.want {
			t.Errorf("withDatabase(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
