package netnstest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netns"

	archnetns "github.com/archipelago-mesh/archipelago/internal/netns"
)

// Set is the namespaces of one test package: every name is
// Prefix<pid>-<rest>, pid being the test process's. Each package has its own
// prefix, so that test binaries running at the same time never touch each
// other's namespaces.
type Set struct {
	Prefix string
	// Ours reports whether a process found in one of the namespaces was
	// started by these tests (see EnvMarked). Such processes are killed
	// before their namespace is deleted; nil kills none.
	Ours func(pid int) bool
}

// Name is the namespace name for rest in this process.
func (s Set) Name(rest string) string {
	return fmt.Sprintf("%s%d-%s", s.Prefix, os.Getpid(), rest)
}

// New creates namespace s.Name(rest) with its loopback up and returns its
// name and a handle. The handle is closed and the namespace deleted (after
// killing its processes that are ours) when the test ends.
func (s Set) New(t *testing.T, rest string) (string, netns.NsHandle) {
	t.Helper()
	name := s.Name(rest)
	if err := archnetns.Add(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.killOurs(name)
		if err := archnetns.Delete(name); err != nil {
			t.Errorf("Delete netns: %v", err)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	return name, h
}

// RemoveLeftovers deletes the namespaces of earlier runs that died before
// their cleanups (a killed test runs none), killing our processes in them
// first. Namespaces of a run whose process is still alive are left alone.
// Call it at start (TestMain), before this process creates any namespace.
func (s Set) RemoveLeftovers() {
	for _, ns := range archnetns.List() {
		rest, ok := strings.CutPrefix(ns, s.Prefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		if pid, err := strconv.Atoi(pidStr); err == nil && pid != os.Getpid() && syscall.Kill(pid, 0) == nil {
			continue // a concurrent run's namespace
		}
		s.killOurs(ns)
		_ = archnetns.Delete(ns)
	}
}

func (s Set) killOurs(ns string) {
	if s.Ours == nil {
		return
	}
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && s.Ours(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// EnvMarked returns a Set.Ours that picks the processes whose environment
// holds a variable starting with marker (such as "NAME=prefix"): a marker
// only the test binary sets on the processes it starts.
func EnvMarked(marker string) func(pid int) bool {
	return func(pid int) bool {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		return err == nil && bytes.Contains(env, []byte(marker))
	}
}

// In runs fn on an OS thread switched into ns (see netns.Do) and fails the
// test if fn or the switch fails. Use it on the test's goroutine only.
func In(t *testing.T, ns netns.NsHandle, fn func() error) {
	t.Helper()
	if err := archnetns.Do(ns, fn); err != nil {
		t.Fatal(err)
	}
}

// RequireRoot skips the test unless it runs as root with every tool on PATH.
// why says what the test needs root for.
func RequireRoot(t *testing.T, why string, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: " + why)
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s on PATH", tool)
		}
	}
}

// Run runs a command and returns its combined output; it fails the test,
// with the command line and the output, if the command fails.
func Run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := RunErr(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// RunErr runs a command and returns its combined output and an error that
// holds the command line and the output.
func RunErr(args ...string) (string, error) {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Nft loads an nftables script into namespace ns ("nft -f -" run there).
func Nft(t *testing.T, ns, script string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f in %s: %v: %s\n%s", ns, err, out, script)
	}
}
