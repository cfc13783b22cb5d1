// registry is the real test node's image registry: go-containerregistry's in-memory
// implementation of the OCI distribution API, on the address given. skaffold's inner loop
// pushes what it builds here and the node's containerd pulls it; nothing is kept on disk.
package main

import (
	"flag"
	"log"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	address := flag.String("address", "127.0.0.1:5000", "host:port to listen on")
	flag.Parse()
	server := &http.Server{Addr: *address, Handler: registry.New(), ReadHeaderTimeout: 10 * time.Second}
	log.Printf("registry on %s", *address)
	log.Fatal(server.ListenAndServe())
}
