package main_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// certAuthority issues certificates for the TLS test.
type certAuthority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T) *certAuthority {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tripod test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &certAuthority{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a PEM certificate and key for a server (127.0.0.1) or a client.
func (ca *certAuthority) issue(t *testing.T, serial int64, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: fmt.Sprintf("tripod test %d", serial)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// A tcp:// endpoint with [tls] admits only clients with a certificate from
// the configured CA, and tripodd refuses a non-loopback endpoint without it.
func TestMutualTLSEndpoint(t *testing.T) {
	n := newNode(t)
	ca := newCA(t)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	srvCert, srvKey := ca.issue(t, 2, true)
	cliCert, cliKey := ca.issue(t, 3, false)
	other := newCA(t)
	strangerCert, strangerKey := other.issue(t, 4, false)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf := write("tripod.toml", []byte(fmt.Sprintf("listen = \"tcp://%s\"\n[tls]\ncert_file = %q\nkey_file = %q\nclient_ca_file = %q\n",
		addr, write("srv.pem", srvCert), write("srv.key", srvKey), write("ca.pem", ca.pem))))

	// Without [tls], a non-loopback endpoint is a config error.
	out, err := exec.Command(tripodd, "--config", filepath.Join(dir, "none.toml"), "--root", n.root, "--state", n.state, "--listen", "tcp://0.0.0.0:1").CombinedOutput()
	if err == nil {
		t.Fatalf("tripodd accepted tcp://0.0.0.0:1 without TLS:\n%s", out)
	}

	cmd := exec.Command(tripodd, "--config", conf, "--root", n.root, "--state", n.state, "--registry-hosts-dir", n.hosts,
		"--nri-socket", n.nriSock())
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("tripodd log:\n%s", log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tripodd did not listen on %s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	version := func(creds credentials.TransportCredentials) error {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = runtimeapi.NewRuntimeServiceClient(conn).Version(testCtx(t), &runtimeapi.VersionRequest{})
		return err
	}
	pair := func(c, k []byte) []tls.Certificate {
		kp, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return []tls.Certificate{kp}
	}
	if err := version(credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: pair(cliCert, cliKey)})); err != nil {
		t.Errorf("client with a certificate from the CA: %v", err)
	}
	if err := version(credentials.NewTLS(&tls.Config{RootCAs: pool})); err == nil {
		t.Error("a client without a certificate was admitted")
	}
	if err := version(credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: pair(strangerCert, strangerKey)})); err == nil {
		t.Error("a client with a certificate from another CA was admitted")
	}
	if err := version(insecure.NewCredentials()); err == nil {
		t.Error("a plaintext client was admitted")
	}
}
