package tlsfiles

import (
	"bytes"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"os"
	"sync"
	"time"
)

// reloadCheck is how often a handshake may look at the key pair's files.
const reloadCheck = time.Second

// keyPair serves a certificate and its key from their files, re-read when
// either file's contents change, so that a rotated certificate is used for
// new connections without a restart. The files are compared by content, not
// by modification time and size: a certificate reissued within the same
// second can have both the same (a coarse file system, a PEM of the same
// length). A pair that fails to load (one file replaced and not yet the
// other, say) leaves the last good one in use, and is tried again at the
// next check. The CA pool is read once: a new CA takes a restart, first
// with a bundle of old and new CA certificates, then the rotation.
type keyPair struct {
	certFile, keyFile string
	now               func() time.Time // tests move it

	mu        sync.Mutex
	cert      *tls.Certificate
	certPEM   []byte // what cert was loaded from
	keyPEM    []byte
	checkedAt time.Time
}

func newKeyPair(certFile, keyFile string) (*keyPair, error) {
	p := &keyPair{certFile: certFile, keyFile: keyFile, now: time.Now}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.checkedAt = p.now()
	certPEM, keyPEM, err := p.read()
	if err != nil {
		return nil, err
	}
	if err := p.loadLocked(certPEM, keyPEM); err != nil {
		return nil, err
	}
	return p, nil
}

// read reads both files (a few KiB, at most once per reloadCheck).
func (p *keyPair) read() (certPEM, keyPEM []byte, err error) {
	if certPEM, err = os.ReadFile(p.certFile); err != nil {
		return nil, nil, fmt.Errorf("tls: %w", err)
	}
	if keyPEM, err = os.ReadFile(p.keyFile); err != nil {
		return nil, nil, fmt.Errorf("tls: %w", err)
	}
	return certPEM, keyPEM, nil
}

func (p *keyPair) loadLocked(certPEM, keyPEM []byte) error {
	// tls.X509KeyPair stops at the first block that does not decode and
	// drops the rest: a chain file caught half rewritten in place would
	// load as the leaf without its intermediate, and be served (found by
	// review). A file must end with a whole PEM block (pem.Decode skips
	// text before a block, so only what follows the last one is checked:
	// enough for a file cut short).
	for _, f := range []struct {
		name string
		b    []byte
	}{{p.certFile, certPEM}, {p.keyFile, keyPEM}} {
		if !wholePEM(f.b) {
			return fmt.Errorf("tls: %s ends in something that is not a whole PEM block (being written?)", f.name)
		}
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("tls: load %s and %s: %w", p.certFile, p.keyFile, err)
	}
	p.cert, p.certPEM, p.keyPEM = &cert, certPEM, keyPEM
	return nil
}

// current is the pair to present now, re-read first if a file changed since
// the last look (at most every reloadCheck).
func (p *keyPair) current() *tls.Certificate {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.now().Sub(p.checkedAt) < reloadCheck {
		return p.cert
	}
	p.checkedAt = p.now()
	certPEM, keyPEM, err := p.read()
	if err != nil || (bytes.Equal(certPEM, p.certPEM) && bytes.Equal(keyPEM, p.keyPEM)) {
		return p.cert
	}
	_ = p.loadLocked(certPEM, keyPEM) // a failure keeps the last good pair
	return p.cert
}

// wholePEM reports whether b holds at least one PEM block and nothing after
// its last block but white space (pem.Decode skips text before a block).
func wholePEM(b []byte) bool {
	blocks := 0
	for {
		block, rest := pem.Decode(b)
		if block == nil {
			return blocks > 0 && len(bytes.TrimSpace(rest)) == 0
		}
		blocks++
		b = rest
	}
}

func (p *keyPair) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return p.current(), nil
}

func (p *keyPair) getClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return p.current(), nil
}
