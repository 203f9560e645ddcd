// pause is the test node's pod sandbox image: it holds the pod's namespaces open, reaps
// the zombies re-parented to it (PID 1 of the pod's PID namespace when it is shared) and
// exits on SIGTERM or SIGINT. The upstream image cannot be pulled here, so the node
// builds this one.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
