package lab

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/archipelago-mesh/archipelago/agent/wireguard"
	"github.com/archipelago-mesh/archipelago/internal/netns"
)

// StateDir holds the state file that lets a later run clean up after a
// crashed one.
const StateDir = "/run/archipelago-lab"

// Proc is a process the lab started (inside a namespace, through
// "ip netns exec", which execs in place: the PID is the program's).
type Proc struct {
	Name string
	NS   string
	Log  string
	Argv []string

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Running reports whether the process has not exited yet.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// PID is the process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Stop sends SIGTERM, waits up to grace, then SIGKILL. It only ever
// signals the PID the lab started.
func (p *Proc) Stop(grace time.Duration) {
	if !p.Running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Kill sends SIGKILL and waits.
func (p *Proc) Kill() {
	if p.Running() {
		_ = p.cmd.Process.Kill()
	}
	<-p.done
}

// state is what the state file records: enough to remove everything after
// a crash without touching anything the lab did not make.
type state struct {
	Owner     int         `json:"owner"`
	OwnerTime string      `json:"ownerStart"`
	Dir       string      `json:"dir"`
	Procs     []procEntry `json:"procs"`
	Devices   []device    `json:"devices"`
	AgentBin  string      `json:"agentBin"`
}

type procEntry struct {
	PID   int    `json:"pid"`
	Start string `json:"start"`
	Name  string `json:"name"`
}

// device is a node that may run a WireGuard device (a gateway candidate).
type device struct {
	NS       string `json:"ns"`
	Iface    string `json:"iface"`
	StateDir string `json:"stateDir"`
}

// procStart is the start time of a process (field 22 of /proc/PID/stat), so
// that a recorded PID that the kernel has reused is never signalled.
func procStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		f := strings.Fields(s[i+1:])
		if len(f) > 19 {
			return f[19]
		}
	}
	return ""
}

type registry struct {
	mu    sync.Mutex
	st    state
	path  string
	procs []*Proc
}

func (r *registry) save() {
	b, _ := json.MarshalIndent(r.st, "", "  ")
	tmp := r.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		_ = os.Rename(tmp, r.path)
	}
}

func (r *registry) addDevice(d device) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.Devices = append(r.st.Devices, d)
	r.save()
}

// start runs argv inside namespace ns (host namespace when ns is ""),
// logging to logPath.
func (r *registry) start(name, ns, logPath string, env []string, argv ...string) (*Proc, error) {
	full := argv
	if ns != "" {
		full = append([]string{"ip", "netns", "exec", ns}, argv...)
	}
	cmd := exec.Command(full[0], full[1:]...)
	cmd.Env = append(os.Environ(), env...)
	// Own process group: a Ctrl-C on the terminal reaches only the lab,
	// which then stops everything in order. Pdeathsig: a lab killed with
	// SIGKILL does not leave apiservers and agents running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, NS: ns, Log: logPath, Argv: argv, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	r.mu.Lock()
	r.procs = append(r.procs, p)
	r.st.Procs = append(r.st.Procs, procEntry{PID: cmd.Process.Pid, Start: procStart(cmd.Process.Pid), Name: name})
	r.save()
	r.mu.Unlock()
	return p, nil
}

// acquire takes the state file for this process, after removing the
// leftovers of an earlier lab whose owner is gone.
func (r *registry) acquire(dir, agentBin string) error {
	if err := os.MkdirAll(StateDir, 0o700); err != nil {
		return err
	}
	r.path = filepath.Join(StateDir, "state.json")
	if b, err := os.ReadFile(r.path); err == nil {
		var old state
		if json.Unmarshal(b, &old) == nil {
			if old.Owner != os.Getpid() && old.Owner > 0 && procStart(old.Owner) == old.OwnerTime && old.OwnerTime != "" {
				return fmt.Errorf("another lab is running (pid %d, state %s): stop it first (Ctrl-C)", old.Owner, r.path)
			}
			removeLeftovers(old)
		}
	}
	// Namespaces of a run that died before writing its state file.
	removeLeftovers(state{})
	r.st = state{Owner: os.Getpid(), OwnerTime: procStart(os.Getpid()), Dir: dir, AgentBin: agentBin}
	r.save()
	return nil
}

// release removes the state file (after everything is torn down).
func (r *registry) release() { _ = os.Remove(r.path) }

// removeLeftovers stops the processes recorded in old (if they are still
// the same processes), removes WireGuard devices of lab nodes, deletes every
// namespace with the lab prefix and the lab's stale UAPI sockets.
func removeLeftovers(old state) {
	for i := len(old.Procs) - 1; i >= 0; i-- {
		e := old.Procs[i]
		if e.PID > 0 && e.Start != "" && procStart(e.PID) == e.Start {
			_ = syscall.Kill(e.PID, syscall.SIGKILL)
		}
	}
	for _, d := range old.Devices {
		removeDevice(d, old.AgentBin)
	}
	// Device processes in lab namespaces that no state file named.
	for _, ns := range netns.List() {
		if !strings.HasPrefix(ns, NSPrefix) {
			continue
		}
		out, _ := exec.Command("ip", "netns", "pids", ns).Output()
		for _, f := range strings.Fields(string(out)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			// Only the userspace WireGuard devices that lab agents
			// started (their interface names carry the lab prefix).
			if strings.Contains(string(cmdline), "wireguard-device") && strings.Contains(string(cmdline), "\x00"+NSPrefix) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		_ = netns.Delete(ns)
	}
	wireguard.RemoveStaleSockets(NSPrefix)
	if old.Dir != "" && strings.Contains(old.Dir, "archipelago-lab") {
		_ = os.RemoveAll(old.Dir)
	}
}

// removeDevice deletes a lab node's WireGuard device: with the agent's own
// cleanup when the agent binary is given and the namespace exists, else by
// stopping the device process that serves the lab interface's socket.
func removeDevice(d device, agentBin string) {
	if agentBin != "" && nsExists(d.NS) {
		_, _ = nsRun(d.NS, agentBin, "cleanup", "--interface", d.Iface, "--state-dir", d.StateDir)
	}
	if pid, err := wireguard.UserspaceDevicePID(d.Iface); err == nil && strings.HasPrefix(d.Iface, NSPrefix) {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) && syscall.Kill(pid, 0) == nil {
			time.Sleep(50 * time.Millisecond)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	_ = os.Remove(filepath.Join(wireguard.SocketDir, d.Iface+".sock"))
}

func nsExists(ns string) bool {
	_, err := os.Stat(filepath.Join("/run/netns", ns))
	return err == nil
}
