package relay

import (
	"bufio"
	"strings"
	"testing"
)

func TestReadReply(t *testing.T) {
	tests := []struct {
		in      string
		want    Reply
		wantErr bool
	}{
		{in: "250 ok\r\n", want: Reply{Code: 250, Text: "ok"}},
		{in: "250\r\n", want: Reply{Code: 250}},
		{in: "550 5.1.1 no such user\r\n", want: Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}},
		{in: "550-5.7.1 line one\r\n550 5.7.1 line two\r\n", want: Reply{Code: 550, Enhanced: "5.7.1", Text: "line one\nline two"}},
		{in: "450 5.1.1 class disagrees\r\n", want: Reply{Code: 450, Text: "5.1.1 class disagrees"}},
		{in: "250-mx.test\r\n250-SIZE 100\r\n250 8BITMIME\r\n", want: Reply{Code: 250, Text: "mx.test\nSIZE 100\n8BITMIME"}},
		{in: "25 short\r\n", wantErr: true},
		{in: "abc def\r\n", wantErr: true},
		{in: "250-one\r\n550 two\r\n", wantErr: true},
		{in: "250-unterminated\r\n", wantErr: true},
		{in: "250 " + strings.Repeat("x", maxReplyLine) + "\r\n", wantErr: true},
		{in: strings.Repeat("250-x\r\n", maxReplyLines+1), wantErr: true},
	}
	for _, tt := range tests {
		c := &smtpConn{br: bufio.NewReaderSize(strings.NewReader(tt.in), maxReplyLine)}
		got, err := c.read()
		if (err != nil) != tt.wantErr || (err == nil && got != tt.want) {
			t.Errorf("read(%.30q) = %+v, %v; want %+v, err %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestXtext(t *testing.T) {
	if got := xtext("a+b=c d\x01"); got != "a+2Bb+3Dc+20d+01" {
		t.Errorf("xtext = %q", got)
	}
}
