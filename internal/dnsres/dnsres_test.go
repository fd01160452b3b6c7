package dnsres_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"backupmx/internal/dnsres"
	"backupmx/internal/dnsres/dnstest"
)

func TestEmptyAddressIsDefault(t *testing.T) {
	if dnsres.New("") != net.DefaultResolver {
		t.Fatal("New(\"\") is not net.DefaultResolver")
	}
}

func TestQueriesGoToTheConfiguredServer(t *testing.T) {
	srv := dnstest.Start(t,
		"example.test. 60 IN MX 20 backup.example.test.",
		"example.test. 60 IN MX 10 mx1.example.test.",
		"mx1.example.test. 60 IN A 127.0.0.2",
		"example.test. 60 IN TXT \"v=spf1 -all\"",
		"2.0.0.127.in-addr.arpa. 60 IN PTR mx1.example.test.",
	)
	r := dnsres.New(srv.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	mx, err := r.LookupMX(ctx, "example.test")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range mx {
		got = append(got, m.Host)
	}
	if want := []string{"mx1.example.test.", "backup.example.test."}; !slices.Equal(got, want) {
		t.Errorf("MX = %v, want %v (preference order)", got, want)
	}

	hosts, err := r.LookupHost(ctx, "mx1.example.test")
	if err != nil || !slices.Equal(hosts, []string{"127.0.0.2"}) {
		t.Errorf("LookupHost = %v, %v", hosts, err)
	}
	ips, err := r.LookupIPAddr(ctx, "mx1.example.test")
	if err != nil || len(ips) != 1 || !ips[0].IP.Equal(net.IPv4(127, 0, 0, 2)) {
		t.Errorf("LookupIPAddr = %v, %v", ips, err)
	}
	txt, err := r.LookupTXT(ctx, "example.test")
	if err != nil || !slices.Equal(txt, []string{"v=spf1 -all"}) {
		t.Errorf("LookupTXT = %v, %v", txt, err)
	}
	names, err := r.LookupAddr(ctx, "127.0.0.2")
	if err != nil || !slices.Equal(names, []string{"mx1.example.test."}) {
		t.Errorf("LookupAddr = %v, %v", names, err)
	}

	_, err = r.LookupMX(ctx, "nowhere.test")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Errorf("LookupMX(nowhere.test) = %v, want not found", err)
	}
	if len(srv.Queries()) == 0 {
		t.Error("the test server saw no query")
	}
}

func TestTruncatedAnswerRetriesOverTCP(t *testing.T) {
	srv := dnstest.Start(t, "big.example.test. 60 IN A 127.0.0.9")
	srv.Truncate("big.example.test")
	r := dnsres.New(srv.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hosts, err := r.LookupHost(ctx, "big.example.test")
	if err != nil || !slices.Equal(hosts, []string{"127.0.0.9"}) {
		t.Fatalf("LookupHost = %v, %v", hosts, err)
	}
	q := srv.Queries()
	if !slices.Contains(q, "udp A big.example.test.") || !slices.Contains(q, "tcp A big.example.test.") {
		t.Errorf("queries = %v, want the A query over UDP then TCP", q)
	}
}
