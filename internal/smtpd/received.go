package smtpd

import (
	"crypto/tls"
	"net/netip"
	"strings"
	"time"

	"backupmx/internal/store"
)

// receivedHeader writes our trace header (RFC 5321 §4.4), folded one clause a
// line with CRLF endings:
//
//	Received: from HELO (rdns [ip])
//		by hostname (backupmx) with ESMTPS (TLS1.3 TLS_AES_128_GCM_SHA256)
//		id QUEUEID
//		for <rcpt>;
//		Mon, 02 Jan 2006 15:04:05 -0700
//
// The rdns name appears only when forward-confirmed, the TLS comment only on
// TLS, and "for" only with a single recipient (more would disclose the
// others' addresses to each of them).
func (s *Server) receivedHeader(env *store.Envelope, ts *tls.ConnectionState) string {
	var b strings.Builder
	b.Grow(256) // one allocation for the usual header
	b.WriteString("Received: from ")
	b.WriteString(headerSafe(env.Client.HELO))
	b.WriteString(" (")
	if env.Client.Name != "" {
		b.WriteString(headerSafe(env.Client.Name))
		b.WriteString(" ")
	}
	ip, _ := netip.ParseAddr(env.Client.Addr)
	b.WriteString(addrLiteral(ip))
	b.WriteString(")\r\n\tby ")
	b.WriteString(headerSafe(s.Config.Hostname))
	b.WriteString(" (backupmx) with ")
	b.WriteString(env.Client.Proto)
	if ts != nil {
		b.WriteString(" (")
		b.WriteString(strings.ReplaceAll(tls.VersionName(ts.Version), " ", ""))
		b.WriteString(" ")
		b.WriteString(tls.CipherSuiteName(ts.CipherSuite))
		b.WriteString(")")
	}
	b.WriteString("\r\n\tid ")
	b.WriteString(env.ID)
	n, only := 0, ""
	for _, rs := range env.Domains {
		n += len(rs)
		if len(rs) > 0 {
			only = rs[0].Addr
		}
	}
	if n == 1 {
		b.WriteString("\r\n\tfor <")
		b.WriteString(headerSafe(only))
		b.WriteString(">")
	}
	b.WriteString(";\r\n\t")
	b.WriteString(env.Received.Format(time.RFC1123Z))
	b.WriteString("\r\n")
	return b.String()
}

// headerSafe keeps client-supplied text from breaking the header: no
// controls, spaces or comment delimiters; non-ASCII only in UTF-8 form.
func headerSafe(s string) string {
	if headerSafeASCII(s) {
		return s // the usual case, without a function call per rune
	}
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r == 0x7f || r == '(' || r == ')' || r == '\\' || r == ';' || r == '\uFFFD' {
			return '?'
		}
		return r
	}, s)
}

// headerSafeASCII reports whether headerSafe leaves s as it is because it
// is printable ASCII without comment delimiters.
func headerSafeASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c <= ' ' || c >= 0x7f, c == '(', c == ')', c == '\\', c == ';':
			return false
		}
	}
	return true
}
