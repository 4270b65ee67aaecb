// Package tlsfiles loads the mutual-TLS settings of tallyd, tallyctl and
// tally-load from PEM files, and writes a development CA and certificates
// (tallyctl certs).
//
// Every connection of a cluster with TLS on is mutual TLS under one CA:
// clients' gRPC calls, the nodes' calls to each other, and Raft traffic.
// A node presents its certificate as a server and as a client (peers dial
// it); a client presents one too, and a node refuses a connection without a
// certificate the CA signed. Beyond that, only a node's certificate
// (node.verifyPeerCert) may speak Raft, pass the DefineAsset fan-out's
// mark, or call Backup and Restore; any certificate from the CA may call
// every other client RPC.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
)

// Files names a certificate, its private key, and the CA certificate(s)
// that peers' certificates must chain to, all PEM.
type Files struct {
	Cert, Key, CA string
}

// Environment variables that name the files when the flags do not.
const (
	EnvCert = "TALLY_TLS_CERT"
	EnvKey  = "TALLY_TLS_KEY"
	EnvCA   = "TALLY_TLS_CA"
)

// FromEnv fills the names f lacks from the environment (TALLY_TLS_CERT,
// TALLY_TLS_KEY, TALLY_TLS_CA): for the clients' tools, tallyctl and
// tally-load, so that an operator need not repeat three flags. tallyd does
// not read them: a node's TLS is in its command line.
func (f *Files) FromEnv() {
	for _, v := range []struct {
		dst *string
		env string
	}{{&f.Cert, EnvCert}, {&f.Key, EnvKey}, {&f.CA, EnvCA}} {
		if *v.dst == "" {
			*v.dst = os.Getenv(v.env)
		}
	}
}

// AddFlags registers --tls-cert, --tls-key and --tls-ca on fs, into f, with
// f's values as defaults (so that a second flag set, as tallyctl's command
// flags after its global ones, keeps what the first set, and FromEnv's
// names stand until a flag says otherwise).
func (f *Files) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&f.Cert, "tls-cert", f.Cert, "PEM certificate to present (with --tls-key and --tls-ca: mutual TLS; none of the three: plaintext)")
	fs.StringVar(&f.Key, "tls-key", f.Key, "PEM private key of --tls-cert")
	fs.StringVar(&f.CA, "tls-ca", f.CA, "PEM CA certificate the other side's certificate must chain to")
}

// Enabled reports whether any file is named; Check then wants all three.
func (f Files) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

// Check reports an error unless all three files are named, or none.
func (f Files) Check() error {
	if f.Enabled() && (f.Cert == "" || f.Key == "" || f.CA == "") {
		return errors.New("tls: --tls-cert, --tls-key and --tls-ca go together: name all three, or none for plaintext")
	}
	return nil
}

// load reads the key pair (kept re-read as its files change: keyPair) and
// the CA pool.
func (f Files) load() (*keyPair, *x509.CertPool, error) {
	if err := f.Check(); err != nil {
		return nil, nil, err
	}
	pair, err := newKeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, nil, err
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, nil, fmt.Errorf("tls: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("tls: %s holds no PEM certificate", f.CA)
	}
	return pair, pool, nil
}

// Server is the configuration of a node's listeners: it presents the
// certificate and requires a client certificate the CA signed. Nil, nil when
// no file is named. A certificate rotated in place (both files replaced) is
// presented from the next handshake on, within a second (keyPair).
func (f Files) Server() (*tls.Config, error) {
	return f.config(func(pair *keyPair, pool *x509.CertPool) *tls.Config {
		return &tls.Config{
			GetCertificate: pair.getCertificate,
			ClientAuth:     tls.RequireAndVerifyClientCert,
			ClientCAs:      pool,
			MinVersion:     tls.VersionTLS13,
		}
	})
}

// Client is the configuration of a connection to a node: it presents the
// certificate and verifies the node's against the CA (and its name against
// the address dialled). Nil, nil when no file is named. A certificate
// rotated in place is presented from the next handshake on (keyPair).
func (f Files) Client() (*tls.Config, error) {
	return f.config(func(pair *keyPair, pool *x509.CertPool) *tls.Config {
		return &tls.Config{
			GetClientCertificate: pair.getClientCertificate,
			RootCAs:              pool,
			MinVersion:           tls.VersionTLS13,
		}
	})
}

// config loads the files and builds one side's configuration from them:
// nil, nil when no file is named.
func (f Files) config(side func(*keyPair, *x509.CertPool) *tls.Config) (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	pair, pool, err := f.load()
	if err != nil {
		return nil, err
	}
	return side(pair, pool), nil
}
