package netns

import (
	"fmt"
	"os/exec"
	"runtime"
	"strings"

	vnetns "github.com/vishvananda/netns"
)

// Do runs fn on an OS thread switched into ns and returns fn's error.
// Sockets keep the namespace they were created in, so listeners and
// connections made in fn can be used from any goroutine afterwards. If
// switching back fails the goroutine exits still locked, which makes the
// runtime discard the thread instead of reusing it in the wrong namespace.
func Do(ns vnetns.NsHandle, fn func() error) error { return do(ns, ns.String(), fn) }

// DoNamed is Do in the namespace called name.
func DoNamed(name string, fn func() error) error {
	h, err := vnetns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer h.Close()
	return do(h, name, fn)
}

// do is Do; label names ns in the error of entering it.
func do(ns vnetns.NsHandle, label string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := vnetns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", label, err)
			return
		}
		err = fn()
		if serr := vnetns.Set(orig); serr == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Add creates namespace name with its loopback up and nothing else.
func Add(name string) error {
	if err := ip("netns", "add", name); err != nil {
		return err
	}
	return ip("-n", name, "link", "set", "lo", "up")
}

// Delete deletes namespace name.
func Delete(name string) error { return ip("netns", "del", name) }

// List returns the names of the namespaces "ip netns" knows.
func List() []string {
	out, _ := exec.Command("ip", "netns", "list").Output()
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		// A line is "name" or "name (id: N)".
		n, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if n != "" {
			names = append(names, n)
		}
	}
	return names
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
