package wireguard

import (
	"fmt"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Client is the subset of *wgctrl.Client the agent calls. It reads and
// configures kernel and userspace devices alike: wgctrl speaks generic netlink
// to the kernel module and the UAPI protocol to the sockets in SocketDir.
type Client interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
	Close() error
}

var _ Client = (*wgctrl.Client)(nil)

// NewClient returns a wgctrl-backed Client.
func NewClient() (Client, error) {
	c, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("open wgctrl client: %w", err)
	}
	return c, nil
}
