package sqlrow

import (
	"strings"
	"testing"
	"time"
)

func TestNanos(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 123, time.UTC)
	if got := FromNanos(Nanos(now)); !got.Equal(now) {
		t.Fatalf("round trip: %v", got)
	}
	if Nanos(time.Time{}) >= Nanos(now) {
		t.Fatal("the zero time must sort first")
	}
	if Nanos(time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)) <= Nanos(now) {
		t.Fatal("a far future must sort last, not wrap around")
	}
}

func TestDecode(t *testing.T) {
	ds, err := Decode([]Delivery{{ID: "A", Domain: "example.test", Rcpts: `[{"addr":"u@example.test"}]`,
		Env: `{"id":"A","sender":"s@x.test","received":"2026-11-27T12:00:00Z"}`, Attempts: 2, Next: 5, Size: 10, Held: true}})
	if err != nil {
		t.Fatal(err)
	}
	d := ds[0]
	if d.Recipients[0].Addr != "u@example.test" || d.Envelope.Sender != "s@x.test" || d.Attempts != 2 || !d.Held || d.Size != 10 || d.State() != "held" {
		t.Fatalf("%+v", d)
	}
	if _, err := Decode([]Delivery{{ID: "B", Domain: "d.test", Rcpts: "{", Env: "{}"}}); err == nil || !strings.Contains(err.Error(), "B/d.test") {
		t.Fatalf("bad JSON: %v", err)
	}
}
