package tlsfiles

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"
)

// reloadCheck is how often a handshake may look at the key pair's files.
const reloadCheck = time.Second

// keyPair serves a certificate and its key from their files, re-read when
// either file changes (its modification time or size), so that a rotated
// certificate is used for new connections without a restart. A pair that
// fails to load (one file replaced and not yet the other, say) leaves the
// last good one in use, and is tried again at the next check. The CA pool is
// read once: a new CA takes a restart (or a bundle of old and new CA
// certificates, given ahead of the rotation).
type keyPair struct {
	certFile, keyFile string
	now               func() time.Time // tests move it

	mu        sync.Mutex
	cert      *tls.Certificate
	stamps    [2]fileStamp
	checkedAt time.Time
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func newKeyPair(certFile, keyFile string) (*keyPair, error) {
	p := &keyPair{certFile: certFile, keyFile: keyFile, now: time.Now}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.loadLocked(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *keyPair) stampsNow() ([2]fileStamp, error) {
	var s [2]fileStamp
	for i, name := range []string{p.certFile, p.keyFile} {
		fi, err := os.Stat(name)
		if err != nil {
			return s, fmt.Errorf("tls: %w", err)
		}
		s[i] = fileStamp{mod: fi.ModTime(), size: fi.Size()}
	}
	return s, nil
}

// loadLocked reads the pair. The stamps are taken before the read, so a
// file changed during it is read again at the next check.
func (p *keyPair) loadLocked() error {
	p.checkedAt = p.now()
	stamps, err := p.stampsNow()
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(p.certFile, p.keyFile)
	if err != nil {
		return fmt.Errorf("tls: load %s and %s: %w", p.certFile, p.keyFile, err)
	}
	p.cert, p.stamps = &cert, stamps
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
	stamps, err := p.stampsNow()
	if err == nil && stamps == p.stamps {
		return p.cert
	}
	if err == nil {
		_ = p.loadLocked() // a failure keeps the last good pair
	}
	return p.cert
}

func (p *keyPair) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return p.current(), nil
}

func (p *keyPair) getClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return p.current(), nil
}
