// An HTTPS server and client from Go's standard library only, for the Go crypto/tls tests.
// HTTP/1.1 is forced on both sides (an empty TLSNextProto): Go would negotiate HTTP/2 otherwise.
// With GOTLS_H2=1 in the environment both sides speak HTTP/2 (Go's bundled x/net/http2) instead.
//
//	gotlsapp serve ADDR                 /echo returns the POST body, /big 1 MiB, /hello a short text
//	gotlsapp posts BASE N SIZE          N keep-alive POSTs of SIZE bytes to /echo, then GET /big; checked
//	gotlsapp load BASE N CONNS          N GETs of /hello over CONNS keep-alive connections; checked
//	gotlsapp hold BASE                  one connection: a POST per line read on stdin ("ok I" after each)
//
// Bodies are deterministic so the tests can compare captures byte for byte (see body/bigBody).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

// bigBody: SHA-256 of the counters 0..32767 (little-endian u64), 1 MiB in all.
func bigBody() []byte {
	out := make([]byte, 0, 1<<20)
	var ctr [8]byte
	for i := 0; i < 32768; i++ {
		binary.LittleEndian.PutUint64(ctr[:], uint64(i))
		sum := sha256.Sum256(ctr[:])
		out = append(out, sum[:]...)
	}
	return out
}

// body i of the given size: "post I:" then the letters a..z repeated.
func body(i, size int) []byte {
	out := []byte(fmt.Sprintf("post %d:", i))
	for len(out) < size {
		out = append(out, byte('a'+len(out)%26))
	}
	return out[:size]
}

func certificate() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	check(err)
	tmpl := x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	check(err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func serve(addr string) {
	big := bigBody()
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		data, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(data)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(big)
	})
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("hello from go over tls\n"))
	})
	ln, err := net.Listen("tcp", addr)
	check(err)
	srv := &http.Server{Handler: mux, TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{certificate()}}}
	if h2 {
		srv.TLSNextProto = nil // ServeTLS then offers h2 by ALPN
	}
	fmt.Println("listening")
	check(srv.ServeTLS(ln, "", ""))
}

var h2 = os.Getenv("GOTLS_H2") == "1"

func client(conns int) *http.Client {
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true,
	}
	if h2 {
		transport.TLSNextProto, transport.ForceAttemptHTTP2 = nil, true
	}
	return &http.Client{Transport: transport, Timeout: 60 * time.Second}
}

func do(c *http.Client, method, url string, data []byte, want []byte) {
	var reader io.Reader
	if data != nil {
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, url, reader)
	check(err)
	resp, err := c.Do(req)
	check(err)
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	check(err)
	if resp.StatusCode != 200 || !bytes.Equal(got, want) || (resp.ProtoMajor == 2) != h2 {
		fmt.Fprintf(os.Stderr, "%s %s: %s status %d, %d bytes, want %d\n", method, url, resp.Proto, resp.StatusCode,
			len(got), len(want))
		os.Exit(1)
	}
}

func main() {
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2])
	case "posts":
		base, n, size := os.Args[2], atoi(os.Args[3]), atoi(os.Args[4])
		c := client(1)
		for i := 0; i < n; i++ {
			do(c, "POST", base+"/echo", body(i, size), body(i, size))
		}
		do(c, "GET", base+"/big", nil, bigBody())
		fmt.Println("ok")
	case "load":
		base, n, conns := os.Args[2], atoi(os.Args[3]), atoi(os.Args[4])
		c := client(conns)
		var wg sync.WaitGroup
		for w := 0; w < conns; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := w; i < n; i += conns {
					do(c, "GET", base+"/hello", nil, []byte("hello from go over tls\n"))
				}
			}(w)
		}
		wg.Wait()
		fmt.Println("ok")
	case "hold":
		base := os.Args[2]
		c := client(1)
		lines := bufio.NewScanner(os.Stdin)
		for i := 0; lines.Scan(); i++ {
			do(c, "POST", base+"/echo", body(i, 100), body(i, 100))
			fmt.Println("ok", i)
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	check(err)
	return n
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
