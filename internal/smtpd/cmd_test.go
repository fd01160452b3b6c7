package smtpd

import "testing"

func TestParseCmd(t *testing.T) {
	for _, tc := range []struct{ line, cmd, arg string }{
		{"MAIL FROM:<a@b.test>\r\n", "MAIL", "FROM:<a@b.test>"},
		{"mail FROM:<a@b.test>  \r\n", "MAIL", "FROM:<a@b.test>"},
		{"ehlo client.test\r\n", "EHLO", "client.test"},
		{"Rcpt To:<@relay:x@y.test>\n", "RCPT", "To:<@relay:x@y.test>"},
		{"QuIt\r\n", "QUIT", ""},
		{"data\r\n", "DATA", ""},
		{"etrn #example.test\r\n", "ETRN", "#example.test"},
		{"BDAT 100 LAST\r\n", "BDAT", "100 LAST"},
		{"xyzw\r\n", "XYZW", ""},
		{"StartTLS\r\n", "STARTTLS", ""},
		{"xclient NAME=x.test\r\n", "XCLIENT", "NAME=x.test"},
		{"XFORWARD ADDR=192.0.2.1\r\n", "XFORWARD", "ADDR=192.0.2.1"},
		{"abc\r\n", "", ""},
		{"MAILX\r\n", "", ""},
		{"\r\n", "", ""},
	} {
		cmd, arg := parseCmd([]byte(tc.line))
		if cmd != tc.cmd || arg != tc.arg {
			t.Errorf("parseCmd(%q) = %q, %q; want %q, %q", tc.line, cmd, arg, tc.cmd, tc.arg)
		}
	}
	if n := testing.AllocsPerRun(100, func() { parseCmd([]byte("DATA\r\n")) }); n != 0 {
		t.Errorf("parseCmd of DATA: %v allocations, want 0", n)
	}
}
