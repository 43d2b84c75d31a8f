package routing

import (
	"github.com/archipelago-mesh/archipelago/agent/desired"

	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Sysctl reads and writes kernel parameters by their dotted name
// ("net.ipv4.ip_forward"). ProcSys is the real implementation; package fake
// has one in memory.
type Sysctl interface {
	// Get returns the value without surrounding white space. A parameter
	// that does not exist yields an error wrapping fs.ErrNotExist.
	Get(name string) (string, error)
	Set(name, value string) error
}

// ProcSys implements Sysctl on /proc/sys. The net.* files there belong to
// the network namespace of the thread that opens them, so a caller that
// wants another namespace must run on a thread locked into it.
type ProcSys struct {
	// Root defaults to /proc/sys.
	Root string
}

var _ Sysctl = ProcSys{}

func (p ProcSys) path(name string) string {
	root := p.Root
	if root == "" {
		root = "/proc/sys"
	}
	// Interface names may contain dots ("eth0.100"); those are written with
	// "/" in sysctl(8) syntax, so only split on dots here and let callers
	// that need a dotted interface name use the slash form.
	return filepath.Join(root, strings.ReplaceAll(name, ".", "/"))
}

// Get implements Sysctl.
func (p ProcSys) Get(name string) (string, error) {
	b, err := os.ReadFile(p.path(name))
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Set implements Sysctl.
func (p ProcSys) Set(name, value string) error {
	if err := os.WriteFile(p.path(name), []byte(value), 0o644); err != nil {
		return fmt.Errorf("write sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// HostSettings says which kernel parameters a node needs (package desired).
type HostSettings = desired.HostSettings

// rpFilterStrict is rp_filter mode 1; 0 is off and 2 is loose.
const (
	rpFilterStrict = "1"
	rpFilterLoose  = "2"
)

// EnsureHostSettings turns on forwarding and makes rp_filter loose where it is
// strict, writing a parameter only when its value differs. It returns the
// parameters it wrote as "name=value".
//
// rp_filter: the kernel uses max(conf.all.rp_filter, conf.<if>.rp_filter), so
// with "all" at 1 (strict) nothing per interface can loosen it, and with the
// interface at 1 "all" cannot. Strict mode drops packets from remote pods
// whenever the reverse route points elsewhere (asymmetric paths during a
// gateway failover, ECMP). Only a value of 1 is changed to 2: a value of 0
// (off) is already more permissive and raising it to 2 would tighten other
// interfaces.
func EnsureHostSettings(s Sysctl, want HostSettings) (changed []string, _ error) {
	type param struct{ name, value string }
	var params []param
	if want.IPv4 {
		params = append(params, param{"net.ipv4.ip_forward", "1"})
	}
	if want.IPv6 {
		params = append(params, param{"net.ipv6.conf.all.forwarding", "1"})
	}
	var errs []error
	set := func(name, value string) {
		cur, err := s.Get(name)
		if err != nil {
			errs = append(errs, err)
			return
		}
		if cur == value {
			return
		}
		if err := s.Set(name, value); err != nil {
			errs = append(errs, err)
			return
		}
		changed = append(changed, name+"="+value)
	}
	for _, p := range params {
		set(p.name, p.value)
	}
	rp := []string{"net.ipv4.conf.all.rp_filter"}
	if want.TunnelInterface != "" {
		// A dotted interface name would be split into path components.
		if strings.Contains(want.TunnelInterface, ".") {
			errs = append(errs, fmt.Errorf("tunnel interface %q: names with dots are not supported for rp_filter", want.TunnelInterface))
		} else {
			rp = append(rp, "net.ipv4.conf."+want.TunnelInterface+".rp_filter")
		}
	}
	if want.IPv4 {
		for _, name := range rp {
			cur, err := s.Get(name)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) && name != rp[0] {
					errs = append(errs, fmt.Errorf("rp_filter of tunnel interface %q: %w (create the interface first)", want.TunnelInterface, err))
					continue
				}
				errs = append(errs, err)
				continue
			}
			if cur == rpFilterStrict {
				set(name, rpFilterLoose)
			}
		}
	}
	return changed, errors.Join(errs...)
}
