// SPDX-License-Identifier: Apache-2.0

// Command etcd is upstream etcd's server, built from its published module for the
// weave-cluster test bed (upstream's own main package lives in a module with replace
// lines, which a dependent module cannot use).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
