package tlsfiles

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Generated names the files Generate writes in its directory: a CA, a
// certificate for the nodes (server and client use, for the hosts given) and
// one for clients (client use only).
type Generated struct {
	CA   string // ca.pem; its key, ca-key.pem, lies beside it
	Node Files  // node.pem, node-key.pem
	User Files  // client.pem, client-key.pem
}

// Generate writes a new development CA and two certificates signed by it
// into dir (created 0700; keys written 0600), valid for validFor from now.
// hosts are the IP addresses and DNS names the nodes are reached by. It
// refuses a dir that holds any of its files already: a new CA there would
// orphan every certificate the old one signed. It is for local clusters and
// tests: a production CA keeps its key elsewhere.
func Generate(dir string, hosts []string, validFor time.Duration) (Generated, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Generated{}, fmt.Errorf("tls: %w", err)
	}
	g := Generated{
		CA:   filepath.Join(dir, "ca.pem"),
		Node: Files{Cert: filepath.Join(dir, "node.pem"), Key: filepath.Join(dir, "node-key.pem")},
		User: Files{Cert: filepath.Join(dir, "client.pem"), Key: filepath.Join(dir, "client-key.pem")},
	}
	for _, p := range []string{g.CA, filepath.Join(dir, "ca-key.pem"), g.Node.Cert, g.Node.Key, g.User.Cert, g.User.Key} {
		if _, err := os.Lstat(p); err == nil {
			return Generated{}, fmt.Errorf("tls: %s exists: remove the old files or choose another directory", p)
		} else if !os.IsNotExist(err) {
			return Generated{}, fmt.Errorf("tls: %w", err)
		}
	}
	g.Node.CA, g.User.CA = g.CA, g.CA
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Generated{}, err
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "tally development CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validFor),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := sign(caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return Generated{}, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return Generated{}, err
	}
	if err := writePEM(g.CA, "CERTIFICATE", caDER, 0o644); err != nil {
		return Generated{}, err
	}
	if err := writeKey(filepath.Join(dir, "ca-key.pem"), caKey); err != nil {
		return Generated{}, err
	}
	if err := issue(g.Node, caCert, caKey, "tally node", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, hosts, validFor); err != nil {
		return Generated{}, err
	}
	if err := issue(g.User, caCert, caKey, "tally client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, validFor); err != nil {
		return Generated{}, err
	}
	return g, nil
}

// Issue writes a new key and a certificate for it to out.Cert and out.Key,
// signed by the CA in caDir (ca.pem and ca-key.pem, as Generate writes
// them): a node's (server and client use, valid for hosts) when hosts is
// not empty, else a client's. The files are replaced through a rename, so a
// node re-reading its certificate (a rotation in place) never sees half of
// one; it does see a new certificate before the new key, and keeps the old
// pair until both match.
func Issue(caDir string, out Files, hosts []string, validFor time.Duration) error {
	if out.Cert == "" || out.Key == "" {
		return errors.New("tls: a certificate and a key file to write are required")
	}
	if validFor <= 0 {
		return fmt.Errorf("tls: validity %v is not positive", validFor)
	}
	caCert, caKey, err := LoadCA(caDir)
	if err != nil {
		return err
	}
	if len(hosts) > 0 {
		return issue(out, caCert, caKey, "tally node", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, hosts, validFor)
	}
	return issue(out, caCert, caKey, "tally client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, validFor)
}

// LoadCA reads the CA certificate and key that Generate wrote into dir.
func LoadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, nil, fmt.Errorf("tls: %w", err)
	}
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return nil, nil, fmt.Errorf("tls: %s holds no PEM block", filepath.Join(dir, "ca.pem"))
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("tls: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		return nil, nil, fmt.Errorf("tls: %w", err)
	}
	if b, _ = pem.Decode(keyPEM); b == nil {
		return nil, nil, fmt.Errorf("tls: %s holds no PEM block", filepath.Join(dir, "ca-key.pem"))
	}
	key, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("tls: %w", err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("tls: %s: not an ECDSA key", filepath.Join(dir, "ca-key.pem"))
	}
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("tls: %s is not a CA certificate", filepath.Join(dir, "ca.pem"))
	}
	return cert, ec, nil
}

// issue writes a new key and a certificate for it, signed by the CA, to f's
// Cert and Key.
func issue(f Files, caCert *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, usage []x509.ExtKeyUsage, hosts []string, validFor time.Duration) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(validFor),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: usage,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := sign(tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	if err := writePEM(f.Cert, "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	return writeKey(f.Key, key)
}

// sign makes a certificate of tmpl, signed by parent's key, with a random
// 128-bit serial number (RFC 5280 wants them unique per CA).
func sign(tmpl, parent *x509.Certificate, pub, signer any) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("tls: sign %q: %w", tmpl.Subject.CommonName, err)
	}
	return der, nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

// writePEM writes a PEM file with mode through a temporary file renamed
// into place: a reader (a node re-reading a rotated certificate) never sees
// half a file, and a key gets its mode even where a file with a looser one
// was (os.WriteFile keeps an existing file's mode; found by review).
func writePEM(path, typ string, der []byte, mode os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
			err = fmt.Errorf("tls: write %s: %w", path, err)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if err := pem.Encode(f, &pem.Block{Type: typ, Bytes: der}); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
