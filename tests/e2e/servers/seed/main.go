// The seed scenario's REST server: POST /customResponse {"size": N} -> {"answer": "<N random letters>"}.
// Standard library only. Usage: seed-server -addr 127.0.0.1:PORT
package main

import (
	"encoding/json"
	"flag"
	"log"
	"math/bits"
	"math/rand"
	"net/http"
)

const maxSize = 10 * 1024 * 1024

var letters = []byte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

type request struct {
	Size *int `json:"size"`
}

func customResponse(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	var req request
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Size == nil {
		http.Error(w, `{"error": "bad JSON: want {\"size\": N}"}`, http.StatusBadRequest)
		return
	}
	if *req.Size < 0 || *req.Size > maxSize {
		http.Error(w, `{"error": "size out of range"}`, http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	// Letters need no JSON escaping, so the body is written as json.Encoder would write it, without
	// encoding 10 MB through reflection: the benchmarks need the server faster than the tracer.
	body := make([]byte, 0, len(`{"answer":""}`)+*req.Size+1)
	body = append(body, `{"answer":"`...)
	body = appendRandomLetters(body, *req.Size, rand.Uint64())
	body = append(body, "\"}\n"...)
	w.Write(body)
}

// appendRandomLetters appends n random letters, two per 64-bit draw of a wyrand generator seeded
// from math/rand: each 32-bit half picks a letter by multiply-shift (Lemire), biased by under 1e-8.
// math/rand's locked Intn per letter held the server to ~80 MB/s, below the tracer it benchmarks.
func appendRandomLetters(out []byte, n int, seed uint64) []byte {
	state := seed
	for n > 0 {
		state += 0xa0761d6478bd642f
		hi, lo := bits.Mul64(state, state^0xe7037ed1a0b428db)
		x := hi ^ lo
		out = append(out, letters[(uint64(uint32(x))*52)>>32])
		n--
		if n > 0 {
			out = append(out, letters[((x>>32)*52)>>32])
			n--
		}
	}
	return out
}

// chunked streams N lines with flushes, so the response goes out with chunked transfer coding.
func chunked(w http.ResponseWriter, r *http.Request) {
	flusher := w.(http.Flusher)
	for i := 0; i < 5; i++ {
		w.Write([]byte("line of a chunked response\n"))
		flusher.Flush()
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	flag.Parse()
	http.HandleFunc("/customResponse", customResponse)
	http.HandleFunc("/chunked", chunked)
	log.Fatal(http.ListenAndServe(*addr, nil))
}
