package framework

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BuildHub compiles the real hub binary (cmd/hub) into a temporary directory.
func BuildHub(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "archipelago-hub")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/hub")
	cmd.Dir = RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build hub: %v\n%s", err, out)
	}
	return bin
}

// HubProcess is the real hub binary running against a test apiserver. It is
// stopped (SIGKILL, by PID) when the test ends.
type HubProcess struct {
	Bin, Kubeconfig string
	// Args are passed after --kubeconfig.
	Args []string
	Log  *os.File

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Start starts the process; t's cleanup kills it.
func (h *HubProcess) Start(t testing.TB) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cmd = exec.Command(h.Bin, append([]string{"--kubeconfig", h.Kubeconfig}, h.Args...)...)
	h.cmd.Stdout, h.cmd.Stderr = h.Log, h.Log
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("start hub: %v", err)
	}
	t.Cleanup(h.Kill)
}

// Kill ends the process with SIGKILL and waits for it.
func (h *HubProcess) Kill() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd == nil {
		return
	}
	_ = h.cmd.Process.Signal(syscall.SIGKILL)
	_ = h.cmd.Wait()
	h.cmd = nil
}

// PID is the running process' PID, or 0.
func (h *HubProcess) PID() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd == nil || h.cmd.Process == nil {
		return 0
	}
	return h.cmd.Process.Pid
}

// ProcUsage is a process' CPU time and resident memory, from /proc.
type ProcUsage struct {
	CPU time.Duration
	RSS int64 // bytes
}

// ReadProcUsage reads /proc/PID/stat (utime+stime) and /proc/PID/status (VmRSS).
func ReadProcUsage(pid int) (ProcUsage, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcUsage{}, err
	}
	// The command name may hold spaces: fields start after the last ')'.
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(fields) < 13 {
		return ProcUsage{}, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	u := ProcUsage{CPU: time.Duration(utime+stime) * time.Second / clkTck}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcUsage{}, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			u.RSS = kb * 1024
		}
	}
	return u, nil
}
