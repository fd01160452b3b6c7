// Command floor is the cheapest SMTP server Go can be under bench/ab.sh's
// load: one goroutine per connection, a 16 KiB read buffer, a fixed reply
// to every command, the body read up to its final dot and thrown away. No
// parsing, no deadlines, no logging, no store. It is not a mail server; it
// measures the floor under backupmx's cost per message on this machine —
// the kernel's loopback TCP, the Go runtime and the client's own load —
// so that what backupmx adds above it can be told apart (bench/README.md).
//
//	go build -o /tmp/floor ./bench/floor && /tmp/floor 127.0.0.1:13201
package main

import (
	"bufio"
	"bytes"
	"log"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		log.Fatal("usage: floor ADDRESS")
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Print(err)
			continue
		}
		go serve(c)
	}
}

func serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 16<<10)
	w := bufio.NewWriter(c)
	reply := func(s string) bool {
		w.WriteString(s)
		return w.Flush() == nil
	}
	if !reply("220 floor ESMTP\r\n") {
		return
	}
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		var verb [4]byte
		copy(verb[:], bytes.ToUpper(line[:min(4, len(line))]))
		var ok bool
		switch string(verb[:]) {
		case "EHLO", "HELO":
			ok = reply("250-floor\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10240000\r\n")
		case "DATA":
			if !reply("354 end with <CRLF>.<CRLF>\r\n") || !skipBody(r) {
				return
			}
			ok = reply("250 2.0.0 Ok: queued\r\n")
		case "QUIT":
			reply("221 2.0.0 Bye\r\n")
			return
		default: // MAIL, RCPT, RSET, NOOP…
			ok = reply("250 2.0.0 Ok\r\n")
		}
		if !ok {
			return
		}
	}
}

// skipBody reads up to and including the line that is a single dot.
func skipBody(r *bufio.Reader) bool {
	atStart := true
	for {
		line, err := r.ReadSlice('\n')
		switch {
		case err == bufio.ErrBufferFull:
			atStart = false // the rest of a long line follows
		case err != nil:
			return false
		case atStart && string(line) == ".\r\n":
			return true
		default:
			atStart = true
		}
	}
}
