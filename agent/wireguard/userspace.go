package wireguard

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

// SocketDir is where wireguard-go, wgctrl and the wg CLI expect UAPI sockets.
const SocketDir = "/var/run/wireguard"

// SocketPath is the UAPI socket of the userspace device name.
func SocketPath(name string) string { return filepath.Join(SocketDir, name+".sock") }

// DeviceOption tunes RunUserspaceDevice.
type DeviceOption func(*deviceOptions)

type deviceOptions struct {
	disableOffloads bool
}

// WithoutOffloads creates the TUN without IFF_VNET_HDR, which turns off TSO,
// checksum offload and wireguard-go's GRO coalescing on the TUN side (batch
// size 1). It exists for benchmarks that compare with and without offloads.
// The UDP socket's own GSO/GRO is still chosen by wireguard-go's bind.
func WithoutOffloads() DeviceOption {
	return func(o *deviceOptions) { o.disableOffloads = true }
}

// Offloads is what the TUN device negotiated with the kernel.
type Offloads struct {
	// TCP is TSO4/TSO6 plus checksum offload; with it wireguard-go reads
	// and writes up to 64 KiB super-packets and coalesces (GRO) on write.
	TCP bool
	// UDP is USO4/USO6 (Linux 6.2+).
	UDP bool
	// BatchSize is how many packets wireguard-go moves per TUN read.
	BatchSize int
}

// RunUserspaceDevice runs a wireguard-go device named name with a UAPI socket
// at SocketPath(name) until ctx is done or the device closes. The device
// closes when its interface is deleted (Teardown does that), which is
// wireguard-go's documented way to stop a userspace device from outside.
//
// It is meant to run in its own long-lived process (the agent's
// "wireguard-device" subcommand, a separate container, or a detached process
// started by EnsureUserspaceDevice): keys, peers and sessions live in this
// process's memory, so the agent can restart without dropping a tunnel.
func RunUserspaceDevice(ctx context.Context, name string, mtu int, log logr.Logger, opts ...DeviceOption) error {
	var o deviceOptions
	for _, opt := range opts {
		opt(&o)
	}
	if mtu == 0 {
		mtu = DefaultMTU
	}
	log = log.WithValues("device", name)

	// wireguard-go would fail later with "unix socket in use" or EBUSY on
	// the TUN; say plainly that the device is already running instead.
	if pid, err := UserspaceDevicePID(name); err == nil {
		return fmt.Errorf("userspace WireGuard device %s is already running (pid %d)", name, pid)
	}

	tdev, err := createTUN(name, mtu, o.disableOffloads)
	if err != nil {
		return fmt.Errorf("create TUN %s: %w", name, err)
	}
	off := tunOffloads(tdev)
	log.Info("Created TUN device", "mtu", mtu, "tcpOffload", off.TCP, "udpOffload", off.UDP,
		"batchSize", off.BatchSize, "offloadsDisabled", o.disableOffloads)

	logger := &device.Logger{
		Verbosef: func(format string, args ...any) { log.V(1).Info(fmt.Sprintf(format, args...)) },
		Errorf:   func(format string, args ...any) { log.Error(nil, fmt.Sprintf(format, args...)) },
	}
	// NewDevice takes ownership of tdev: Close closes it.
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), logger)
	defer dev.Close()

	uapiFile, err := ipc.UAPIOpen(name)
	if err != nil {
		return fmt.Errorf("open UAPI socket %s: %w", SocketPath(name), err)
	}
	uapi, err := ipc.UAPIListen(name, uapiFile)
	uapiFile.Close() // UAPIListen dup'ed it.
	if err != nil {
		return fmt.Errorf("listen on UAPI socket %s: %w", SocketPath(name), err)
	}
	// Closing the listener unlinks the socket, so no stale socket is left
	// for the next EnsureUserspaceDevice to trip over.
	defer uapi.Close()

	uapiErr := make(chan error, 1)
	go func() {
		for {
			c, err := uapi.Accept()
			if err != nil {
				uapiErr <- err
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	log.Info("Userspace WireGuard device running", "socket", SocketPath(name), "pid", os.Getpid())

	select {
	case <-ctx.Done():
		log.Info("Stopping userspace WireGuard device", "reason", context.Cause(ctx))
		return nil
	case <-dev.Wait():
		log.Info("Userspace WireGuard device closed (interface deleted)")
		return nil
	case err := <-uapiErr:
		// The listener fails when someone deletes the socket file: without
		// a socket the device cannot be configured any more, so stop rather
		// than run unmanaged.
		return fmt.Errorf("UAPI socket %s: %w", SocketPath(name), err)
	}
}

func createTUN(name string, mtu int, disableOffloads bool) (tun.Device, error) {
	if !disableOffloads {
		// CreateTUN asks for IFF_VNET_HDR and then enables TSO/CSUM (and USO
		// where the kernel has it), falling back to no offloads if the
		// kernel refuses IFF_VNET_HDR.
		return tun.CreateTUN(name, mtu)
	}
	// Same as tun.CreateTUN minus IFF_VNET_HDR: without a virtio header the
	// kernel cannot hand over segmentation work, so initFromFlags leaves
	// offloads off and the batch size at 1.
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return tun.CreateTUNFromFile(os.NewFile(uintptr(fd), "/dev/net/tun"), mtu)
}

// tunOffloads reports the offloads wireguard-go negotiated. wireguard-go keeps
// them private; the batch size reveals TCP offloads (it is raised above 1 only
// after TUNSETOFFLOAD with TSO succeeded), and repeating the TSO+USO request
// reveals USO: the kernel validates the whole flag set before applying it, so
// an unsupported bit fails without changing anything, and a supported set is
// exactly what wireguard-go already set.
func tunOffloads(d tun.Device) Offloads {
	off := Offloads{BatchSize: d.BatchSize()}
	off.TCP = off.BatchSize > 1
	nt, ok := d.(interface{ File() *os.File })
	if !off.TCP || !ok {
		return off
	}
	sc, err := nt.File().SyscallConn()
	if err != nil {
		return off
	}
	_ = sc.Control(func(fd uintptr) {
		const tcpUDP = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_USO4 | unix.TUN_F_USO6
		if unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, tcpUDP) == nil {
			off.UDP = true
		}
	})
	return off
}

// UserspaceProcess says how to start the device process.
type UserspaceProcess struct {
	// Path and Args run RunUserspaceDevice for the device, for example
	// os.Executable() with "wireguard-device --name wg0 --mtu 1420".
	Path string
	Args []string
	// Env is appended to the agent's environment.
	Env []string
	// LogPath receives the process's stdout and stderr (appended, 0600).
	// Empty discards them.
	LogPath string
	// StartTimeout bounds the wait for the UAPI socket; default 10s.
	StartTimeout time.Duration
	// Request, used when Path is empty, asks someone else to start the
	// device (a "wireguard-device --supervise" sidecar container watching a
	// file) instead of starting a process; EnsureUserspaceDevice then waits
	// for the socket to answer.
	Request func() error
}

// EnsureUserspaceDevice makes sure the userspace device name is running and
// returns the PID of the process serving its socket. If the UAPI socket
// answers, the running device is reused as it is (keys, peers, sessions).
// Otherwise it starts p detached, in its own session, so that the device is
// not killed with the agent's process group and keeps forwarding across agent
// restarts, and waits until the socket answers.
//
// Kubernetes kills the whole container cgroup when the agent container
// stops, so a detached process only survives agent process restarts inside a
// running container; across container restarts run the device in its own
// container (a sidecar running the wireguard-device subcommand) instead.
func EnsureUserspaceDevice(ctx context.Context, name string, p UserspaceProcess, log logr.Logger) (int, error) {
	log = log.WithValues("device", name)
	if pid, err := UserspaceDevicePID(name); err == nil {
		log.Info("Reusing running userspace WireGuard device", "pid", pid)
		return pid, nil
	}
	if p.Path == "" && p.Request != nil {
		return requestUserspaceDevice(ctx, name, p, log)
	}
	if p.Path == "" {
		return 0, fmt.Errorf("userspace WireGuard device %s is not running and no device command was given", name)
	}

	cmd := exec.Command(p.Path, p.Args...)
	cmd.Env = append(os.Environ(), p.Env...)
	// Setsid: a new session and process group, so signals to the agent's
	// group (Ctrl-C, a supervisor's group kill) do not reach the device.
	// No Pdeathsig, on purpose.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Dir = "/"
	if p.LogPath != "" {
		f, err := os.OpenFile(p.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return 0, fmt.Errorf("open device log %s: %w", p.LogPath, err)
		}
		defer f.Close() // the child has its own copy after Start
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start userspace WireGuard device %s (%s): %w", name, p.Path, err)
	}
	pid := cmd.Process.Pid
	log.Info("Started userspace WireGuard device process", "pid", pid, "path", p.Path, "args", p.Args)
	// Reap the child if it exits while we run, so that it does not linger as
	// a zombie; after an agent restart init (or the container's subreaper)
	// reaps it.
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	timeout := p.StartTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if got, err := UserspaceDevicePID(name); err == nil {
			if got != pid {
				// ip netns exec and similar wrappers exec in place, so
				// the PIDs match; a mismatch means someone else won a race.
				log.Info("UAPI socket is served by another process", "started", pid, "serving", got)
			}
			return got, nil
		}
		select {
		case err := <-exited:
			hint := ""
			if p.LogPath != "" {
				hint = " (see " + p.LogPath + ")"
			}
			return 0, fmt.Errorf("userspace WireGuard device %s exited before its socket answered: %v%s", name, err, hint)
		case <-ctx.Done():
			// Do not leave a half-started device behind.
			_ = cmd.Process.Signal(unix.SIGTERM)
			return 0, fmt.Errorf("wait for UAPI socket %s: %w", SocketPath(name), ctx.Err())
		case <-tick.C:
		}
	}
}

func requestUserspaceDevice(ctx context.Context, name string, p UserspaceProcess, log logr.Logger) (int, error) {
	if err := p.Request(); err != nil {
		return 0, fmt.Errorf("request userspace WireGuard device %s: %w", name, err)
	}
	log.Info("Requested userspace WireGuard device from its supervisor")
	timeout := p.StartTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if pid, err := UserspaceDevicePID(name); err == nil {
			return pid, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("wait for UAPI socket %s (is the wireguard-device container running?): %w", SocketPath(name), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// UserspaceDevicePID returns the PID of the process serving the UAPI socket
// of name, after checking that it answers a UAPI "get". The PID comes from
// the socket's peer credentials (SO_PEERCRED), so it is right even when the
// device was started by an earlier agent; it is 0 when that process is in a
// PID namespace we cannot see.
func UserspaceDevicePID(name string) (int, error) {
	path := SocketPath(name)
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return 0, fmt.Errorf("dial UAPI socket %s: %w", path, err)
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	_ = uc.SetDeadline(time.Now().Add(2 * time.Second))

	var cred *unix.Ucred
	sc, err := uc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("UAPI socket %s: %w", path, err)
	}
	var credErr error
	if err := sc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("UAPI socket %s: %w", path, err)
	}
	if credErr != nil {
		return 0, fmt.Errorf("peer credentials of %s: %w", path, credErr)
	}

	if _, err := uc.Write([]byte("get=1\n\n")); err != nil {
		return 0, fmt.Errorf("query UAPI socket %s: %w", path, err)
	}
	r := bufio.NewReader(uc)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return 0, fmt.Errorf("read UAPI socket %s: %w", path, err)
		}
		line = strings.TrimSuffix(line, "\n")
		if v, ok := strings.CutPrefix(line, "errno="); ok {
			if v != "0" {
				return 0, fmt.Errorf("UAPI socket %s answered errno=%s", path, v)
			}
			return int(cred.Pid), nil
		}
		if line == "" {
			return 0, fmt.Errorf("UAPI socket %s: reply without errno", path)
		}
	}
}

// RemoveStaleSockets removes the UAPI sockets of devices whose name starts
// with prefix and whose process no longer answers: what a device process
// killed with SIGKILL leaves behind. Sockets of running devices are kept.
func RemoveStaleSockets(prefix string) {
	socks, _ := filepath.Glob(filepath.Join(SocketDir, prefix+"*.sock"))
	for _, s := range socks {
		if _, err := UserspaceDevicePID(strings.TrimSuffix(filepath.Base(s), ".sock")); err != nil {
			_ = os.Remove(s)
		}
	}
}

// stopUserspaceDevice waits for the device process behind name to exit after
// its interface was deleted, signals it if it does not, and removes a stale
// socket file.
func stopUserspaceDevice(ctx context.Context, name string, log logr.Logger) error {
	deadline := time.Now().Add(3 * time.Second)
	signalled := false
	for {
		pid, err := UserspaceDevicePID(name)
		if err != nil {
			break // socket gone or dead
		}
		if time.Now().After(deadline) {
			if signalled || pid <= 0 {
				return fmt.Errorf("userspace WireGuard device %s (pid %d) still answers after stop", name, pid)
			}
			// Only the process that serves this device's socket is
			// signalled, by PID.
			log.Info("Device process did not exit after its interface was deleted; sending SIGTERM", "pid", pid)
			if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("signal device process %d: %w", pid, err)
			}
			signalled = true
			deadline = time.Now().Add(3 * time.Second)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stop userspace WireGuard device %s: %w", name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	// A crashed process leaves its socket file; nobody answers on it.
	if err := os.Remove(SocketPath(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale UAPI socket %s: %w", SocketPath(name), err)
	}
	return nil
}
