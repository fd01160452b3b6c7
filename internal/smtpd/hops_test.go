package smtpd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
)

// message builds a header with n Received fields among others, then a body
// that has Received lines of its own (not counted: past the header).
func hopMessage(n int, crlf string) string {
	var b strings.Builder
	b.WriteString("Subject: x" + crlf)
	for i := range n {
		fmt.Fprintf(&b, "%s: from h%d.test by x.test;%s\tFri, 27 Nov 2026 12:00:00 +0000%s", []string{"Received", "RECEIVED", "received"}[i%3], i, crlf, crlf)
		b.WriteString("X-Short: 1" + crlf + "Rec: no" + crlf)
	}
	b.WriteString("From: a@b.test" + crlf + crlf)
	for range 200 {
		b.WriteString("Received: in the body" + crlf)
	}
	return b.String()
}

// oneByOne reads r in random small pieces, as a slow client's body arrives.
type piecewise struct {
	s   string
	rng *rand.Rand
}

func (p *piecewise) Read(b []byte) (int, error) {
	if p.s == "" {
		return 0, io.EOF
	}
	n := min(len(p.s), len(b), 1+p.rng.IntN(12))
	copy(b, p.s[:n])
	p.s = p.s[n:]
	return n, nil
}

func TestHopReader(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for _, crlf := range []string{"\r\n", "\n"} {
		for _, tc := range []struct {
			received, max int
			refused       bool
		}{
			{0, 100, false}, {99, 100, false}, {100, 100, false}, {101, 100, true}, {150, 100, true}, {3, 2, true},
		} {
			for _, pieces := range []bool{false, true} {
				msg := hopMessage(tc.received, crlf)
				var src io.Reader = strings.NewReader(msg)
				if pieces {
					src = &piecewise{msg, rng}
				}
				h := &hopReader{r: src, max: tc.max}
				got, err := io.ReadAll(h)
				if tc.refused != errors.Is(err, errTooManyHops) || (!tc.refused && err != nil) {
					t.Fatalf("%d Received, max %d, pieces %v: err %v", tc.received, tc.max, pieces, err)
				}
				if !tc.refused {
					if !bytes.Equal(got, []byte(msg)) {
						t.Fatalf("the body changed on its way through")
					}
					if h.count != tc.received {
						t.Fatalf("counted %d Received, want %d (pieces %v)", h.count, tc.received, pieces)
					}
				}
			}
		}
	}
}
