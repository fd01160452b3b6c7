package relay

import (
	"bufio"
	"bytes"
	"math/rand/v2"
	"net/textproto"
	"testing"
)

// TestDotStufferMatchesTextproto: for bodies made of the awkward bytes
// ('.', CR, LF, text) cut into writes of every size, our writer sends exactly
// what net/textproto's DotWriter sends — except after "\r\r", where
// textproto forgets the second CR and sends "\r\r\r\n" for "\r\r\n";
// we keep the bytes (see TestDotStufferCRCR).
func TestDotStufferMatchesTextproto(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte(".\r\nab")
	for iter := range 3000 {
		body := make([]byte, r.IntN(60))
		for i := range body {
			body[i] = alphabet[r.IntN(len(alphabet))]
		}
		if len(body) == 0 || bytes.Contains(body, []byte("\r\r")) { // empty: textproto adds a blank line
			continue
		}
		var want, got bytes.Buffer
		ww := bufio.NewWriter(&want)
		tw := textproto.NewWriter(ww).DotWriter()
		tw.Write(body)
		tw.Close()
		ww.Flush()

		gw := bufio.NewWriter(&got)
		d := newDotStuffer(gw)
		for rest := body; len(rest) > 0; {
			k := 1 + r.IntN(len(rest))
			if _, err := d.Write(rest[:k]); err != nil {
				t.Fatal(err)
			}
			rest = rest[k:]
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("case %d: body %q\n got %q\nwant %q", iter, body, got.Bytes(), want.Bytes())
		}
	}
}

func TestDotStufferCRCR(t *testing.T) {
	var got bytes.Buffer
	bw := bufio.NewWriter(&got)
	d := newDotStuffer(bw)
	d.Write([]byte("a\r\r\n.b\r"))
	d.Close()
	if want := "a\r\r\n..b\r\n.\r\n"; got.String() != want {
		t.Fatalf("got %q, want %q", got.String(), want)
	}
}

func BenchmarkDotStuffer(b *testing.B) {
	line := bytes.Repeat([]byte("x"), 76)
	var body []byte
	for len(body) < 10<<10 {
		body = append(append(body, line...), '\r', '\n')
	}
	bw := bufio.NewWriter(discard{})
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		d := newDotStuffer(bw)
		d.Write(body)
		d.Close()
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func BenchmarkTextprotoDotWriter(b *testing.B) {
	line := bytes.Repeat([]byte("x"), 76)
	var body []byte
	for len(body) < 10<<10 {
		body = append(append(body, line...), '\r', '\n')
	}
	bw := bufio.NewWriter(discard{})
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		d := textproto.NewWriter(bw).DotWriter()
		d.Write(body)
		d.Close()
	}
}
