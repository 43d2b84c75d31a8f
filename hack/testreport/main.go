package main

// It exits 1 when a test or a package failed, 3 when no test ran but some
// were skipped (a tier whose every test skipped is not a pass), 4 when no
// test ran at all, and 0 otherwise.

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

func main() {
	verbose := flag.Bool("v", false, "print the output of every test, as go test -v does")
	flag.Parse()
	var (
		passed, failed, skipped int
		pkgFailed               bool
		// Output of tests still running, printed only if they fail.
		pending = map[string][]string{}
	)
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil {
			// Build errors and other text that is not an event.
			fmt.Println(string(line))
			continue
		}
		key := e.Package + "\x00" + e.Test
		top := e.Test != "" && !strings.Contains(e.Test, "/")
		switch e.Action {
		case "output":
			if e.Test == "" {
				// Package-level lines: "ok ...", "FAIL ...", "--- FAIL" summaries, panics.
				if !strings.HasPrefix(e.Output, "=== ") && !strings.HasPrefix(e.Output, "PASS") {
					fmt.Print(e.Output)
				}
				continue
			}
			if *verbose {
				fmt.Print(e.Output)
				continue
			}
			pending[key] = append(pending[key], e.Output)
		case "pass", "skip", "fail":
			if e.Test == "" {
				if e.Action == "fail" {
					pkgFailed = true
				}
				continue
			}
			if e.Action == "fail" && !*verbose {
				fmt.Print(strings.Join(pending[key], ""))
			}
			delete(pending, key)
			if !top {
				continue
			}
			switch e.Action {
			case "pass":
				passed++
			case "skip":
				skipped++
			case "fail":
				failed++
			}
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "testreport: read:", err)
		os.Exit(1)
	}
	fmt.Printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped)
	switch {
	case failed > 0 || pkgFailed:
		os.Exit(1)
	case passed == 0 && skipped > 0:
		os.Exit(3)
	case passed == 0:
		os.Exit(4)
	}
}
