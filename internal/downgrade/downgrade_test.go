package downgrade

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"strings"
	"testing"
)

func convert(t *testing.T, msg string) string {
	t.Helper()
	var out bytes.Buffer
	if err := Convert(&out, strings.NewReader(msg)); err != nil {
		t.Fatalf("Convert: %v", err)
	}
	if Needed(out.Bytes()) {
		t.Fatalf("output has 8-bit bytes:\n%s", out.String())
	}
	return out.String()
}

func TestSevenBitUnchanged(t *testing.T) {
	for _, msg := range []string{
		"Subject: hi\r\n\r\nplain text\r\n",
		"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npre\r\n--b1\r\nContent-Type: text/plain\r\n\r\none\r\n--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b1--\r\nepilogue\r\n",
		"Subject: no body\r\n",
		"",
	} {
		if got := convert(t, msg); got != msg {
			t.Errorf("7-bit message changed:\n%q\n→\n%q", msg, got)
		}
	}
}

func TestNotMIME(t *testing.T) {
	got := convert(t, "Subject: café\r\n"[:0]+"Subject: x\r\n\r\nç'est l'été\r\nline two \r\n")
	want := "Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=unknown-8bit\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
		"=C3=A7'est l'=C3=A9t=C3=A9\r\nline two=20\r\n"
	if got != want {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
}

func TestEightBitHeader(t *testing.T) {
	err := Convert(io.Discard, strings.NewReader("Subject: café\r\n\r\nbody\r\n"))
	if !errors.Is(err, ErrHeader) {
		t.Fatalf("Convert = %v, want ErrHeader", err)
	}
}

func TestFoldedCTEReplaced(t *testing.T) {
	msg := "MIME-Version: 1.0\r\nContent-Type: text/plain;\r\n charset=utf-8\r\nContent-Transfer-Encoding:\r\n 8bit\r\nX-After: 1\r\n\r\nna\xc3\xafve\r\n"
	got := convert(t, msg)
	want := "MIME-Version: 1.0\r\nContent-Type: text/plain;\r\n charset=utf-8\r\nX-After: 1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nna=C3=AFve\r\n"
	if got != want {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
}

func TestBrokenEncodedParts(t *testing.T) {
	msg := "MIME-Version: 1.0\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nd\xe9j=C3=A0\r\n"
	got := convert(t, msg)
	if !strings.HasSuffix(got, "\r\n\r\nd=E9j=C3=A0\r\n") {
		t.Fatalf("got %q", got)
	}
}

// leaf is what a reader must get out of one leaf of a message.
type leaf struct {
	ctype   string
	content []byte
}

// gen builds random MIME messages and the leaves they hold.
type gen struct {
	rng *rand.Rand
	n   int
}

func (g *gen) text(eightBit bool) []byte {
	var b bytes.Buffer
	for range 1 + g.rng.IntN(5) {
		for range g.rng.IntN(120) {
			switch r := g.rng.IntN(20); {
			case eightBit && r == 0:
				b.WriteString("é")
			case eightBit && r == 1:
				b.WriteByte(byte(0x80 + g.rng.IntN(128)))
			case r == 2:
				b.WriteByte(' ')
			case r == 3:
				b.WriteByte('=')
			case r == 4:
				b.WriteByte('.')
			default:
				b.WriteByte(byte('a' + g.rng.IntN(26)))
			}
		}
		b.WriteString("\r\n")
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\r\n"))
}

// entity returns a header block and body for a random entity.
func (g *gen) entity(depth int, leaves *[]leaf) (hdr, body string) {
	g.n++
	switch k := g.rng.IntN(6); {
	case depth < 3 && k == 0:
		b := fmt.Sprintf("b%d=_%d", g.n, g.rng.IntN(1000))
		var sb strings.Builder
		sb.WriteString("preamble\r\n")
		for range 1 + g.rng.IntN(3) {
			h, bd := g.entity(depth+1, leaves)
			sb.WriteString("--" + b + "\r\n" + h + "\r\n" + bd + "\r\n")
		}
		sb.WriteString("--" + b + "--\r\n")
		return "Content-Type: multipart/mixed; boundary=\"" + b + "\"\r\n", sb.String()
	case depth < 3 && k == 1:
		h, bd := g.entity(depth+1, leaves)
		return "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n", "MIME-Version: 1.0\r\nSubject: inner\r\n" + h + "\r\n" + bd
	case k == 2:
		c := g.text(true)
		*leaves = append(*leaves, leaf{"application/octet-stream", c})
		return "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n", string(c)
	case k == 3:
		c := g.text(false)
		*leaves = append(*leaves, leaf{"text/plain", c})
		return "Content-Type: text/plain\r\n", string(c)
	default:
		c := g.text(true)
		*leaves = append(*leaves, leaf{"text/plain", c})
		return "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n", string(c)
	}
}

// read collects the decoded leaves of a message as a MIME reader sees them.
func read(t *testing.T, h textproto.MIMEHeader, body io.Reader, leaves *[]leaf) {
	t.Helper()
	ct, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil {
		t.Fatalf("Content-Type %q: %v", h.Get("Content-Type"), err)
	}
	switch {
	case strings.HasPrefix(ct, "multipart/"):
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			read(t, p.Header, p, leaves)
		}
	case ct == "message/rfc822":
		m, err := mail.ReadMessage(body)
		if err != nil {
			t.Fatal(err)
		}
		read(t, textproto.MIMEHeader(m.Header), m.Body, leaves)
	default:
		var r io.Reader = body
		switch strings.ToLower(h.Get("Content-Transfer-Encoding")) {
		case "quoted-printable":
			r = quotedprintable.NewReader(body)
		case "base64":
			r = base64.NewDecoder(base64.StdEncoding, body)
		}
		c, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		*leaves = append(*leaves, leaf{ct, c})
	}
}

// Random trees of multiparts, enclosed messages and 8-bit, 7-bit and
// binary-ish leaves: the output is 7-bit, and a MIME reader decodes from
// it what the input held, leaf by leaf.
func TestRandomMessagesDecodeTheSame(t *testing.T) {
	g := &gen{rng: rand.New(rand.NewPCG(5, 6))}
	for i := range 3000 {
		var want []leaf
		h, body := g.entity(0, &want)
		msg := "MIME-Version: 1.0\r\nSubject: test\r\n" + h + "\r\n" + body
		out := convert(t, msg)
		m, err := mail.ReadMessage(strings.NewReader(out))
		if err != nil {
			t.Fatal(err)
		}
		var got []leaf
		read(t, textproto.MIMEHeader(m.Header), m.Body, &got)
		if len(got) != len(want) {
			t.Fatalf("message %d: %d leaves after conversion, want %d\n%s\n→\n%s", i, len(got), len(want), msg, out)
		}
		for j := range want {
			if got[j].ctype != want[j].ctype || !bytes.Equal(got[j].content, want[j].content) {
				t.Fatalf("message %d leaf %d: got %s %q, want %s %q\n%s\n→\n%s", i, j, got[j].ctype, got[j].content, want[j].ctype, want[j].content, msg, out)
			}
		}
	}
}

// Garbage in (broken headers, stray boundaries, unbalanced multiparts,
// deep nesting, lone CRs and LFs): Convert ends, and its output is 7-bit
// unless a header has 8-bit bytes.
func TestGarbage(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	tokens := []string{"MIME-Version: 1.0\r\n", "Content-Type: multipart/mixed; boundary=x\r\n", "Content-Type: multipart/mixed; boundary=y\r\n",
		"Content-Type: message/rfc822\r\n", "Content-Transfer-Encoding: 8bit\r\n", "Content-Transfer-Encoding: base64\r\n",
		"Content-Transfer-Encoding: quoted-printable\r\n", "Content-Type: text/plain\r\n", "Content-Type: multipart/digest; boundary=x\r\n",
		"\r\n", "\n", "\r", "--x\r\n", "--x--\r\n", "--y\r\n", "--y--\r\n", "text", "\xc3\xa9", "\xff", "\x00", " folded\r\n", "Subject: s\r\n"}
	for range 20000 {
		var b strings.Builder
		for range rng.IntN(60) {
			b.WriteString(tokens[rng.IntN(len(tokens))])
		}
		var out bytes.Buffer
		err := Convert(&out, strings.NewReader(b.String()))
		if err != nil && !errors.Is(err, ErrHeader) && !errors.Is(err, ErrNesting) {
			t.Fatalf("Convert(%q): %v", b.String(), err)
		}
		if err == nil && Needed(out.Bytes()) {
			t.Fatalf("Convert(%q) = %q: 8-bit bytes left", b.String(), out.String())
		}
	}
}

func TestNestingBounded(t *testing.T) {
	msg := "MIME-Version: 1.0\r\n" + strings.Repeat("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n", 60) + "\r\nt\xc3\xa9\r\n"
	if err := Convert(io.Discard, strings.NewReader(msg)); !errors.Is(err, ErrNesting) {
		t.Fatalf("Convert = %v, want ErrNesting", err)
	}
	msg = "MIME-Version: 1.0\r\n" + strings.Repeat("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n", 10) + "\r\nt\xc3\xa9\r\n"
	convert(t, msg)
}

func TestHeader(t *testing.T) {
	long := "X-Long: " + strings.Repeat("a", 10000) + "\r\n"
	for _, tc := range []struct{ msg, hdr string }{
		{"Subject: a\r\n\r\nbody\r\n", "Subject: a\r\n\r\n"},
		{"Subject: a\n\nbody\n", "Subject: a\n\n"},
		{"Subject: a\r\n", "Subject: a\r\n"},
		{"", ""},
		{long + "\r\nbody", long + "\r\n"},
		// A line filling bufio's 4,096 bytes, its CRLF after: not an empty line.
		{"X-A: " + strings.Repeat("a", 4091) + "\r\nSubject: b\r\n\r\nbody", "X-A: " + strings.Repeat("a", 4091) + "\r\nSubject: b\r\n\r\n"},
	} {
		hdr, whole, err := Header(strings.NewReader(tc.msg))
		if err != nil || string(hdr) != tc.hdr {
			t.Errorf("Header(%.40q) = %.40q, %v; want %.40q", tc.msg, hdr, err, tc.hdr)
			continue
		}
		if all, _ := io.ReadAll(whole); string(all) != tc.msg {
			t.Errorf("whole message %.40q, want %.40q", all, tc.msg)
		}
	}
}
