package queue

import (
	"context"
	"io"
	"strings"
	"testing"

	"backupmx/internal/store"
)

// A primary without DSN support: NOTIFY=SUCCESS is ours to honour with a
// "relayed" notice (RFC 3461 §6.2.3.1); nothing for other NOTIFY values, and
// nothing when the primary took the DSN parameters itself.
func TestRelayedNotice(t *testing.T) {
	tests := []struct {
		notify string
		noDSN  bool
		want   bool
	}{
		{"SUCCESS", true, true},
		{"SUCCESS,FAILURE", true, true},
		{"SUCCESS", false, false}, // the primary got NOTIFY=SUCCESS and answers for it
		{"FAILURE", true, false},
		{"NEVER", true, false},
		{"", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.notify, func(t *testing.T) {
			h := newHarness(t, "")
			h.net.setUp("example.test", true)
			h.net.noDSN = tt.noDSN
			now := h.clock.Now()
			env := &store.Envelope{ID: store.NewID(now), Sender: "s@sender.test", Received: now, Ret: "FULL", EnvID: "e1",
				Domains: map[string][]store.Recipient{"example.test": {{Addr: "u@example.test", Notify: tt.notify, ORcpt: "rfc822;u@example.test"}}}}
			if _, err := h.st.Enqueue(context.Background(), env, strings.NewReader("Subject: s\r\n\r\nsecret body\r\n")); err != nil {
				t.Fatal(err)
			}
			h.runDue()
			if n := len(h.net.received()); n != 1 {
				t.Fatalf("%d delivered", n)
			}
			notices := h.list(store.Filter{Domain: "sender.test"})
			if !tt.want {
				if len(notices) != 0 {
					t.Fatalf("unexpected notice %+v", notices)
				}
				return
			}
			if len(notices) != 1 || !notices[0].Envelope.Notice || notices[0].Envelope.Sender != "" {
				t.Fatalf("notices = %+v", notices)
			}
			rc, err := h.st.Body(context.Background(), notices[0].ID)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(rc)
			rc.Close()
			body := string(b)
			for _, want := range []string{"Subject: Successful Mail Delivery Report", "Action: relayed", "Status: 2.0.0",
				"Original-Recipient: rfc822; u@example.test", "Original-Envelope-Id: e1", "text/rfc822-headers"} {
				if !strings.Contains(body, want) {
					t.Errorf("notice lacks %q:\n%s", want, body)
				}
			}
			if strings.Contains(body, "secret body") {
				t.Error("a success notice carries the message body (RET=FULL is for failures only)")
			}
		})
	}
}
