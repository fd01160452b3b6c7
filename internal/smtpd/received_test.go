package smtpd

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// headerSafe's shortcut for plain ASCII gives what the rune-by-rune
// mapping gives, for every kind of byte a client can send.
func TestHeaderSafeShortcut(t *testing.T) {
	slow := func(s string) string {
		return strings.Map(func(r rune) rune {
			if r <= ' ' || r == 0x7f || r == '(' || r == ')' || r == '\\' || r == ';' || r == '\uFFFD' {
				return '?'
			}
			return r
		}, s)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"a", "Z", "0", ".", "-", "[", "]", " ", "\t", "\r", "\n", "(", ")", "\\", ";", "\x7f", "\x00", "é", "\xff", "\xc3", "ü", "\uFFFD", "<", ">", "@"}
	for range 20000 {
		var b strings.Builder
		for range rng.IntN(12) {
			b.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		s := b.String()
		if got, want := headerSafe(s), slow(s); got != want {
			t.Fatalf("headerSafe(%q) = %q, want %q", s, got, want)
		}
	}
	for _, s := range []string{"mail.example.com", "[192.0.2.1]", "user@example.com"} {
		if !headerSafeASCII(s) {
			t.Errorf("%q took the slow path", s)
		}
	}
}
