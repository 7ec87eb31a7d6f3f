// etcd's own entry point (the etcd binary's main is this one call), built from the
// etcd server module that k8s.io/kubernetes itself requires.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
