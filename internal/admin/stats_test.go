package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestStats(t *testing.T) {
	s := &Server{Store: newFakeStore(), Token: "t",
		Stats: func() map[string]uint64 { return map[string]uint64{"dnsbl": 2, "relay": 5} }}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/v1/stats", nil)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("without token: %d, want 401", resp.StatusCode)
	}
	req.Header.Set("Authorization", "Bearer t")
	resp, err = srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct{ Counters map[string]uint64 }
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || got.Counters["dnsbl"] != 2 || got.Counters["relay"] != 5 {
		t.Fatalf("got %+v, %v", got, err)
	}
}

// TestPprof: the runtime profiles are served only when asked for, and only
// with the token.
func TestPprof(t *testing.T) {
	for _, on := range []bool{false, true} {
		s := &Server{Store: newFakeStore(), Token: "t", Pprof: on}
		srv := httptest.NewServer(s.Handler())
		get := func(token string) int {
			req, _ := http.NewRequest("GET", srv.URL+"/debug/pprof/cmdline", nil)
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		if code := get(""); code != http.StatusUnauthorized {
			t.Errorf("pprof %v without token: %d, want 401", on, code)
		}
		want := http.StatusNotFound
		if on {
			want = http.StatusOK
		}
		if code := get("t"); code != want {
			t.Errorf("pprof %v with token: %d, want %d", on, code, want)
		}
		srv.Close()
	}
}
