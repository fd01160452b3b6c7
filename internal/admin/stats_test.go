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
