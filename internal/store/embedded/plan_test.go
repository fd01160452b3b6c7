package embedded

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"backupmx/internal/store"
	"backupmx/internal/store/sqlrow"
	"backupmx/internal/store/storetest"
)

// queryPlan is SQLite's EXPLAIN QUERY PLAN of q, one detail per line.
func queryPlan(t *testing.T, s *Store, q string, args ...any) string {
	t.Helper()
	rows, err := s.rdb.Query("EXPLAIN QUERY PLAN "+q, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

// fillDomains stores n messages spread over domains d0.test … d<k-1>.test,
// due at next.
func fillDomains(t *testing.T, s *Store, prefix string, n, k int, next time.Time) {
	t.Helper()
	items := make([]FillItem, n)
	for i := range items {
		dom := fmt.Sprintf("d%d.test", i%k)
		items[i] = FillItem{Next: next, Env: &store.Envelope{
			ID: fmt.Sprintf("%s%06d", prefix, i), Sender: "s@x.test", Received: storetest.T0,
			Domains: map[string][]store.Recipient{dom: {{Addr: "u@" + dom}}},
		}}
	}
	if err := s.Fill(context.Background(), items, []byte("Subject: x\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
}

// Flushing, holding or listing one domain among many reads that domain's
// rows only, and Claim's and Complete's queries only seek indexes: none of
// them scans the deliveries, messages or leases tables.
func TestQueryPlansSeekIndexes(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fillDomains(t, s, "P", 300, 100, storetest.T0)
	n := sqlrow.Nanos(storetest.T0)

	q, args := flushSQL(store.Filter{Domain: "d42.test"}, storetest.T0)
	plans := map[string]string{
		"flush domain": queryPlan(t, s, q, args...),
		"claim front":  queryPlan(t, s, claimFrontSQL, n, claimLookahead),
		"claim walk":   queryPlan(t, s, claimWalkSQL, n),
		// Complete: one primary key seek per id, never the domain's backlog.
		"complete rows":       queryPlan(t, s, completeRowsSQL, "d42.test", `["P000042"]`),
		"complete deliveries": queryPlan(t, s, delDeliveriesSQL, "d42.test", `["P000042"]`),
		"complete messages":   queryPlan(t, s, delMessagesSQL, `["P000042"]`),
	}
	for name, plan := range plans {
		for _, line := range strings.Split(plan, "\n") {
			if strings.HasPrefix(line, "SCAN ") && line != "SCAN CONSTANT ROW" &&
				!strings.HasPrefix(line, "SCAN front") && !strings.HasPrefix(line, "SCAN doms") &&
				!strings.HasPrefix(line, "SCAN j VIRTUAL TABLE") {
				t.Errorf("%s: full scan %q in plan:\n%s", name, line, plan)
			}
		}
	}
	if p := plans["flush domain"]; !strings.Contains(p, "deliveries_domain (domain=?") {
		t.Errorf("flush of one domain does not seek deliveries_domain:\n%s", p)
	}
	for _, name := range []string{"complete rows", "complete deliveries", "complete messages"} {
		if p := plans[name]; strings.Contains(p, "deliveries_domain") || !strings.Contains(p, "PRIMARY KEY") {
			t.Errorf("%s does not seek by primary key:\n%s", name, p)
		}
	}
	if p := plans["claim front"]; !strings.Contains(p, "leases_live") {
		t.Errorf("claim reads every lease ever taken:\n%s", p)
	}
}

// When the oldest due work all belongs to a leased domain (more than Claim
// looks ahead), Claim still finds the other domains' due work.
func TestClaimPastLeasedBacklog(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	now := storetest.T0.Add(time.Hour)
	fillDomains(t, s, "B", claimLookahead+50, 1, storetest.T0) // all d0.test, oldest
	l, ds, err := s.Claim(ctx, "n1", now, time.Minute, 10)
	if err != nil || l == nil || l.Domain != "d0.test" || len(ds) != 10 {
		t.Fatalf("first Claim = %v, %d deliveries, %v; want d0.test", l, len(ds), err)
	}
	if l2, _, err := s.Claim(ctx, "n1", now, time.Minute, 10); err != nil || l2 != nil {
		t.Fatalf("Claim with only leased work due = %v, %v; want nothing", l2, err)
	}
	// Younger due work in two other domains, and some not yet due.
	items := []FillItem{}
	for i, dom := range []string{"late.test", "early.test", "future.test"} {
		next := storetest.T0.Add(time.Duration(30-10*i) * time.Minute)
		if dom == "future.test" {
			next = now.Add(time.Hour)
		}
		items = append(items, FillItem{Next: next, Env: &store.Envelope{
			ID: "Y" + dom[:4], Sender: "s@x.test", Received: storetest.T0,
			Domains: map[string][]store.Recipient{dom: {{Addr: "u@" + dom}}}}})
	}
	if err := s.Fill(ctx, items, []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"early.test", "late.test", ""} {
		l, _, err := s.Claim(ctx, "n1", now, time.Minute, 10)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if l != nil {
			got = l.Domain
		}
		if got != want {
			t.Fatalf("Claim = %q, want %q", got, want)
		}
	}
}
