//go:build tools

// The commands built from this module: listed here so that `go mod tidy` keeps what
// they need in go.sum.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
