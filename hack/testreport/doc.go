// Command testreport is the filter hack/test.sh runs `go test -json` through:
// it prints what plain `go test` prints (each package's result line and the
// whole output of failed tests), then one closing line
// "N passed, N failed, N skipped" counting top-level tests, so that a tier
// whose tests all skipped is reported as skipped, not as passed. It only
// reads and prints.
package main
