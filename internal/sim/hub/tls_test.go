package hub

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestLoadOrCreateTLS(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	read := func(name string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	cert, created, err := loadOrCreateTLS(dir, "localhost", now)
	if err != nil || !created {
		t.Fatalf("first call = %v, created %v", err, created)
	}
	ca, err := readCert(filepath.Join(dir, caCertFile))
	if err != nil {
		t.Fatal(err)
	}
	if ca.Subject.CommonName != caCommonName || !ca.IsCA {
		t.Errorf("CA = %q, IsCA %v", ca.Subject.CommonName, ca.IsCA)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("server certificate does not verify for %s: %v", name, err)
		}
	}
	for _, name := range []string{caKeyFile, serverKeyFile} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v, %v; want 0600", name, fi.Mode().Perm(), err)
		}
	}
	caPEM, serverPEM := read(caCertFile), read(serverCertFile)

	// Same host: everything is reused.
	if _, created, err := loadOrCreateTLS(dir, "localhost", now); err != nil || created {
		t.Errorf("second call = %v, created %v; want reuse", err, created)
	}
	if !bytes.Equal(read(serverCertFile), serverPEM) {
		t.Error("server certificate changed without reason")
	}

	// New host name: new server certificate from the same CA.
	cert, created, err = loadOrCreateTLS(dir, "myhub.example", now)
	if err != nil || !created {
		t.Fatalf("new host = %v, created %v", err, created)
	}
	if !bytes.Equal(read(caCertFile), caPEM) {
		t.Error("CA changed for a new host name")
	}
	leaf, _ = x509.ParseCertificate(cert.Certificate[0])
	for _, name := range []string{"myhub.example", "localhost", "127.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("renewed certificate does not verify for %s: %v", name, err)
		}
	}

	// Close to expiry: renewed, CA kept.
	serverPEM = read(serverCertFile)
	if _, created, err := loadOrCreateTLS(dir, "myhub.example", now.Add(certLifetime-renewBefore+time.Hour)); err != nil || !created {
		t.Errorf("near expiry = %v, created %v; want a renewal", err, created)
	}
	if bytes.Equal(read(serverCertFile), serverPEM) || !bytes.Equal(read(caCertFile), caPEM) {
		t.Error("near expiry: want a new server certificate and the same CA")
	}

	// An IP host name becomes an IP SAN.
	cert, _, err = loadOrCreateTLS(dir, "192.0.2.7", now)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ = x509.ParseCertificate(cert.Certificate[0])
	if err := leaf.VerifyHostname("192.0.2.7"); err != nil {
		t.Errorf("IP host: %v", err)
	}

	// A damaged CA key: everything is made anew.
	if err := os.WriteFile(filepath.Join(dir, caKeyFile), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, created, err := loadOrCreateTLS(dir, "localhost", now); err != nil || !created {
		t.Errorf("damaged CA key = %v, created %v", err, created)
	}
	if bytes.Equal(read(caCertFile), caPEM) {
		t.Error("CA kept although its key was damaged")
	}
}
