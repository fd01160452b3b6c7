// Package tlsconf holds the server certificates for inbound STARTTLS.
//
// Invariant: a handshake always sees a complete, loaded set of certificates:
// Reload builds the new set aside and swaps it in only when every pair loaded,
// so a bad file leaves the previous set serving. Connections already in TLS
// keep the certificate they negotiated; only new handshakes see a reload.
package tlsconf

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"

	"backupmx/internal/config"
)

// Certs is a reloadable set of certificate/key pairs, chosen by SNI.
type Certs struct {
	pairs []config.CertPair

	mu    sync.RWMutex
	certs []*tls.Certificate // in configuration order; the first is the default
}

// Load reads every pair. It fails if any pair does not load, or if there is none.
func Load(pairs []config.CertPair) (*Certs, error) {
	c := &Certs{pairs: append([]config.CertPair(nil), pairs...)}
	if err := c.Reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// Reload reads the files again. On error the previous set stays in use.
func (c *Certs) Reload() error {
	if len(c.pairs) == 0 {
		return errors.New("tls: no certificate configured")
	}
	certs := make([]*tls.Certificate, 0, len(c.pairs))
	for _, p := range c.pairs {
		cert, err := tls.LoadX509KeyPair(p.Cert, p.Key)
		if err != nil {
			return fmt.Errorf("tls: %s / %s: %w", p.Cert, p.Key, err)
		}
		certs = append(certs, &cert) // Leaf is set by LoadX509KeyPair
	}
	c.mu.Lock()
	c.certs = certs
	c.mu.Unlock()
	return nil
}

// GetCertificate picks the certificate for a handshake: the first whose names
// match the SNI name (exactly, or by a wildcard in the leftmost label), else
// the first the client can use at all, else the first configured.
func (c *Certs) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.RLock()
	certs := c.certs
	c.mu.RUnlock()
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if name != "" {
		for _, cert := range certs {
			if cert.Leaf != nil && cert.Leaf.VerifyHostname(name) == nil {
				return cert, nil
			}
		}
	}
	for _, cert := range certs {
		if hello.SupportsCertificate(cert) == nil {
			return cert, nil
		}
	}
	return certs[0], nil
}

// ServerConfig is the STARTTLS configuration: TLS 1.2 or later, certificates
// from c at each handshake (so a Reload applies to the next one). A nil
// *Certs gives nil: no STARTTLS.
func (c *Certs) ServerConfig() *tls.Config {
	if c == nil {
		return nil
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: c.GetCertificate,
	}
}
