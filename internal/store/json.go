package store

import (
	"encoding/json"
	"time"
)

// EnvelopeJSON is json.Marshal of e without its Domains, byte for byte, as
// the stores keep it. The common envelope (plain ASCII, a time in years
// 0–9999) is written without reflection: encoding/json was 2% of the
// server's CPU, twice per message accepted. Anything else goes through
// encoding/json.
func EnvelopeJSON(e *Envelope) ([]byte, error) {
	c := *e
	c.Domains = nil
	if b, ok := appendEnvelope(make([]byte, 0, 256), &c); ok {
		return b, nil
	}
	return json.Marshal(&c)
}

// RecipientsJSON is json.Marshal(rs), byte for byte (see EnvelopeJSON).
func RecipientsJSON(rs []Recipient) ([]byte, error) {
	if len(rs) > 0 {
		if b, ok := appendRecipients(make([]byte, 0, 64*len(rs)), rs); ok {
			return b, nil
		}
	}
	return json.Marshal(rs)
}

func appendEnvelope(b []byte, e *Envelope) ([]byte, bool) {
	if y := e.Received.Year(); y < 0 || y > 9999 {
		return nil, false
	}
	j := jsonWriter{b: b, ok: true}
	j.raw(`{"id":`)
	j.str(e.ID)
	j.raw(`,"sender":`)
	j.str(e.Sender)
	j.raw(`,"received":"`)
	j.b = e.Received.AppendFormat(j.b, time.RFC3339Nano)
	j.raw(`","client":{`)
	first := true
	for _, f := range [...]struct{ k, v string }{
		{`"addr":`, e.Client.Addr}, {`"name":`, e.Client.Name},
		{`"helo":`, e.Client.HELO}, {`"proto":`, e.Client.Proto},
	} {
		if f.v == "" {
			continue
		}
		if !first {
			j.raw(",")
		}
		first = false
		j.raw(f.k)
		j.str(f.v)
	}
	j.raw("}")
	j.opt(`,"body":`, e.Body)
	if e.UTF8 {
		j.raw(`,"utf8":true`)
	}
	j.opt(`,"ret":`, e.Ret)
	j.opt(`,"envid":`, e.EnvID)
	if e.Notice {
		j.raw(`,"notice":true`)
	}
	j.raw("}")
	return j.b, j.ok
}

func appendRecipients(b []byte, rs []Recipient) ([]byte, bool) {
	j := jsonWriter{b: b, ok: true}
	j.raw("[")
	for i, r := range rs {
		if i > 0 {
			j.raw(",")
		}
		j.raw(`{"addr":`)
		j.str(r.Addr)
		j.opt(`,"notify":`, r.Notify)
		j.opt(`,"orcpt":`, r.ORcpt)
		j.raw("}")
	}
	j.raw("]")
	return j.b, j.ok
}

// jsonWriter appends JSON; ok turns false at the first string that
// encoding/json would escape.
type jsonWriter struct {
	b  []byte
	ok bool
}

func (j *jsonWriter) raw(s string) { j.b = append(j.b, s...) }

// str appends s as a JSON string if no byte of it needs escaping (under
// encoding/json's rules, which escape <, > and & too).
func (j *jsonWriter) str(s string) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			j.ok = false
			return
		}
	}
	j.b = append(append(append(j.b, '"'), s...), '"')
}

// opt appends key and s, unless s is empty (omitempty).
func (j *jsonWriter) opt(key, s string) {
	if s != "" {
		j.raw(key)
		j.str(s)
	}
}
