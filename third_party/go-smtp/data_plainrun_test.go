package smtp

// backupmx patch: the whole-line fast path of dataReader.Read (plainRun)
// must give what the byte-by-byte state machine gives.

import (
	"bufio"
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

// referenceData is the end-of-data state machine one byte at a time, as
// dataReader.Read ran it before the fast paths: the body it passes on, and
// whether it saw the end marker.
func referenceData(in []byte) (out []byte, ended bool, used int) {
	const (
		beginLine = iota
		dot
		dotCR
		cr
		data
	)
	state := beginLine
	for i, c := range in {
		switch state {
		case beginLine:
			if c == '.' {
				state = dot
				continue
			}
			if c == '\r' {
				state = cr
				break
			}
			state = data
		case dot:
			if c == '\r' {
				state = dotCR
				continue
			}
			state = data
		case dotCR:
			if c == '\n' {
				return out, true, i + 1
			}
			state = data
		case cr:
			if c == '\n' {
				state = beginLine
				break
			}
			if c != '\r' {
				state = data
			}
		case data:
			if c == '\r' {
				state = cr
			}
		}
		out = append(out, c)
	}
	return out, false, len(in)
}

func TestDataReaderMatchesStateMachine(t *testing.T) {
	pieces := []string{"a", "bc", "Subject: x", ".", "..", "\r", "\n", "\r\n", "\r\r\n", ".\r", ".\r\n", "\r\n.\r\n", " .", "x\r\n"}
	r := rand.New(rand.NewPCG(3, 4))
	for iter := 0; iter < 20000; iter++ {
		var in []byte
		for k := r.IntN(30); k > 0; k-- {
			in = append(in, pieces[r.IntN(len(pieces))]...)
		}
		if iter%2 == 0 {
			in = append(in, "\r\n.\r\n"...)
		}
		in = append(in, "NEXT"...)
		wantOut, wantEnded, used := referenceData(in)

		br := bufio.NewReaderSize(bytes.NewReader(in), 16+r.IntN(64))
		dr := &dataReader{r: br}
		var got []byte
		var err error
		for err == nil {
			p := make([]byte, 1+r.IntN(40))
			var n int
			n, err = dr.Read(p)
			got = append(got, p[:n]...)
		}
		if !bytes.Equal(got, wantOut) {
			t.Fatalf("input %q:\n got %q\nwant %q", in, got, wantOut)
		}
		if wantEnded != (err == io.EOF) {
			t.Fatalf("input %q: end seen %v, reference %v (err %v)", in, err == io.EOF, wantEnded, err)
		}
		rest, _ := io.ReadAll(br)
		if wantEnded && !bytes.Equal(rest, in[used:]) {
			t.Fatalf("input %q: left %q after the end, want %q", in, rest, in[used:])
		}
	}
}
