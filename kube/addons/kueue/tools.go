//go:build tools

// Package tools records the Kueue command `make kube` builds.
package tools

import _ "sigs.k8s.io/kueue/cmd/kueue"
