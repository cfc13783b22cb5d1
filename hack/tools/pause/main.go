// pause is the pod sandbox's process on the real test node: it holds the pod's
// namespaces open and does nothing else. Kubernetes' own pause is C in the kubernetes
// repository and its image cannot be pulled here, so this is the same behaviour in Go.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	// As PID 1 of the pod it must also reap orphans, or zombies pile up in shared PID namespaces.
	children := make(chan os.Signal, 8)
	signal.Notify(children, syscall.SIGCHLD)
	for {
		select {
		case <-signals:
			os.Exit(0)
		case <-children:
			for {
				var status syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}
