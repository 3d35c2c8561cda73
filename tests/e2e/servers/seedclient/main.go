// A tiny Go HTTP client for the e2e tests: the client side of the seed scenario. Standard library only.
//
//	seed-client -base http://127.0.0.1:PORT -out DIR SPEC...
//
// Each SPEC is one request, all sent in order on one keep-alive connection (the default Transport
// reuses it because every body is read to the end):
//
//	size=N      POST /customResponse?i=K with {"size": N}   (K is the spec's index)
//	raw=TEXT    POST /customResponse?i=K with TEXT as the body
//	get=PATH    GET PATH
//
// The body of response K goes to DIR/K.body; a JSON manifest (status, headers, local port, whether
// the connection was reused) is printed on stdout.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
)

type result struct {
	Index     int                 `json:"index"`
	Method    string              `json:"method"`
	Target    string              `json:"target"`
	Status    int                 `json:"status"`
	Headers   map[string][]string `json:"headers"`
	BodySize  int                 `json:"body_size"`
	LocalPort int                 `json:"local_port"`
	Reused    bool                `json:"reused"`
}

func main() {
	base := flag.String("base", "", "http://host:port")
	out := flag.String("out", ".", "directory for the response bodies")
	flag.Parse()
	client := &http.Client{}
	var results []result
	for i, spec := range flag.Args() {
		kind, arg, _ := strings.Cut(spec, "=")
		method, target, body := http.MethodPost, fmt.Sprintf("/customResponse?i=%d", i), ""
		switch kind {
		case "size":
			body = fmt.Sprintf(`{"size": %s}`, arg)
		case "raw":
			body = arg
		case "get":
			method, target = http.MethodGet, arg
		default:
			log.Fatalf("bad spec %q", spec)
		}
		var reqBody io.Reader
		if method == http.MethodPost {
			reqBody = bytes.NewBufferString(body)
		}
		req, err := http.NewRequest(method, *base+target, reqBody)
		if err != nil {
			log.Fatal(err)
		}
		if method == http.MethodPost {
			req.Header.Set("Content-Type", "application/json")
		}
		res := result{Index: i, Method: method, Target: target}
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			res.Reused = info.Reused
			res.LocalPort = info.Conn.LocalAddr().(*net.TCPAddr).Port
		}}
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
		resp, err := client.Do(req)
		if err != nil {
			log.Fatal(err)
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(*out, fmt.Sprintf("%d.body", i)), data, 0o644); err != nil {
			log.Fatal(err)
		}
		res.Status, res.Headers, res.BodySize = resp.StatusCode, resp.Header, len(data)
		results = append(results, res)
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		log.Fatal(err)
	}
}
