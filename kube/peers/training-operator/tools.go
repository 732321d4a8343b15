//go:build tools

// Package tools records the training-operator command the bench builds.
package tools

import _ "github.com/kubeflow/training-operator/cmd/training-operator.v1"
