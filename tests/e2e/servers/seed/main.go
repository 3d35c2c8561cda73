// The seed scenario's REST server: POST /customResponse {"size": N} -> {"answer": "<N random letters>"}.
// Standard library only. Usage: seed-server -addr 127.0.0.1:PORT
package main

import (
	"encoding/json"
	"flag"
	"log"
	"math/rand"
	"net/http"
)

const maxSize = 10 * 1024 * 1024

var letters = []byte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

type request struct {
	Size *int `json:"size"`
}

type response struct {
	Answer string `json:"answer"`
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
	answer := make([]byte, *req.Size)
	for i := range answer {
		answer[i] = letters[rand.Intn(len(letters))]
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(response{Answer: string(answer)})
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
