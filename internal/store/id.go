package store

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"time"
)

var idEncoding = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

// NewID returns a fresh queue id: 16 characters of Crockford base32, the first
// ones a millisecond timestamp so ids sort roughly by arrival, the rest random.
func NewID(now time.Time) string {
	var b [10]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	var r [4]byte
	_, _ = rand.Read(r[:])
	// 48 bits of time, then 32 random bits.
	copy(b[6:], r[:])
	return idEncoding.EncodeToString(b[:])
}
