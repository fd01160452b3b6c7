package store

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"
)

// TestEnvelopeJSONMatchesEncodingJSON: the hand-written encoding is
// encoding/json's, byte for byte, whatever the strings hold.
func TestEnvelopeJSONMatchesEncodingJSON(t *testing.T) {
	pieces := []string{"", "a", "user@example.test", "ESMTPS", `"`, `\`, "<", ">", "&", "\n", "\x00", "\x7f",
		"é", "\u2028", "\xff", "mx.example.test", "FULL", "8BITMIME", "rfc822;u@example.test", "FAILURE,DELAY", " ", "~"}
	str := func(r *rand.Rand) string {
		s := ""
		for range r.IntN(4) {
			s += pieces[r.IntN(len(pieces))]
		}
		return s
	}
	zones := []*time.Location{time.UTC, time.FixedZone("x", 5*3600+1800), time.FixedZone("y", -7*3600)}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		e := Envelope{
			ID: str(r), Sender: str(r),
			Received: time.Unix(r.Int64N(1<<36)-1<<35, r.Int64N(3)*r.Int64N(1e9)).In(zones[r.IntN(len(zones))]),
			Client:   Client{Addr: str(r), Name: str(r), HELO: str(r), Proto: str(r)},
			Body:     str(r), UTF8: r.IntN(2) == 0, Ret: str(r), EnvID: str(r), Notice: r.IntN(2) == 0,
			Domains: map[string][]Recipient{"a.test": {{Addr: "x@a.test"}}},
		}
		switch i % 1000 {
		case 0:
			e.Received = time.Time{}
		case 1:
			e.Received = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) // encoding/json refuses it
		case 2:
			e.Received = time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)
		}
		got, err := EnvelopeJSON(&e)
		c := e
		c.Domains = nil
		want, werr := json.Marshal(&c)
		if (err == nil) != (werr == nil) {
			t.Fatalf("envelope %+v: error %v, encoding/json's %v", e, err, werr)
		}
		if string(got) != string(want) {
			t.Fatalf("envelope %+v:\n got %s\nwant %s", e, got, want)
		}
		rs := make([]Recipient, r.IntN(4))
		for k := range rs {
			rs[k] = Recipient{Addr: str(r), Notify: str(r), ORcpt: str(r)}
		}
		if r.IntN(10) == 0 {
			rs = nil
		}
		got, err = RecipientsJSON(rs)
		if err != nil {
			t.Fatal(err)
		}
		want, _ = json.Marshal(rs)
		if string(got) != string(want) {
			t.Fatalf("recipients %+v:\n got %s\nwant %s", rs, got, want)
		}
	}
}

func BenchmarkEnvelopeJSON(b *testing.B) {
	e := Envelope{ID: "06H1ZBQ3KR6G9JQJ", Sender: "sender@src.bench.test", Received: time.Now(),
		Client: Client{Addr: "127.0.0.1", HELO: "client.bench.test", Proto: "ESMTP"}}
	for b.Loop() {
		if _, err := EnvelopeJSON(&e); err != nil {
			b.Fatal(err)
		}
	}
}
