package wireguard

import (
	"github.com/archipelago-mesh/archipelago/agent/desired"

	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// KeyFileName is the name of the private key file inside the key directory.
const KeyFileName = "private.key"

// LoadOrCreateKey returns the gateway's WireGuard private key, stored base64
// encoded in dir/private.key. The key is generated on first use and reused on
// every later start, so the public key that other clusters know stays valid
// across agent restarts and node reboots.
//
// A key file that is readable by others, or whose content is not a key, is an
// error and is never replaced: silently regenerating would change the public
// key and cut every tunnel until the hub has republished it, and a
// world-readable private key must be treated as leaked.
func LoadOrCreateKey(dir string) (wgtypes.Key, error) {
	if dir == "" {
		return wgtypes.Key{}, errors.New("load WireGuard key: empty key directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return wgtypes.Key{}, fmt.Errorf("create WireGuard key directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, KeyFileName)

	key, err := readKey(path)
	if err == nil {
		return key, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return wgtypes.Key{}, err
	}

	key, err = wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("generate WireGuard private key: %w", err)
	}
	// Write to a temporary file and link it into place: O_EXCL on the final
	// name would leave a truncated key behind if we crashed mid-write, and a
	// plain rename could overwrite a key another agent instance created
	// concurrently.
	tmp, err := os.CreateTemp(dir, ".private.key-*")
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("create temporary key file in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return wgtypes.Key{}, fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if _, err := tmp.WriteString(key.String() + "\n"); err != nil {
		tmp.Close()
		return wgtypes.Key{}, fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return wgtypes.Key{}, fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return wgtypes.Key{}, fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Lost a race with another instance: use its key.
			return readKey(path)
		}
		return wgtypes.Key{}, fmt.Errorf("install key file %s: %w", path, err)
	}
	return key, nil
}

func readKey(path string) (wgtypes.Key, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return wgtypes.Key{}, err
		}
		return wgtypes.Key{}, fmt.Errorf("stat WireGuard key file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return wgtypes.Key{}, fmt.Errorf("WireGuard key file %s is not a regular file (%s); remove it to generate a new key", path, fi.Mode().Type())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return wgtypes.Key{}, fmt.Errorf("WireGuard key file %s has mode %#o, want 0600; the key may have leaked: remove the file to generate a new key, or chmod 0600 it to keep it", path, perm)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("read WireGuard key file %s: %w", path, err)
	}
	key, err := wgtypes.ParseKey(strings.TrimSpace(string(raw)))
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("WireGuard key file %s does not hold a base64 key (%v); restore it or remove it to generate a new key", path, err)
	}
	if key == (wgtypes.Key{}) {
		return wgtypes.Key{}, fmt.Errorf("WireGuard key file %s holds an all-zero key; remove it to generate a new key", path)
	}
	return key, nil
}

// PublicKey returns private.PublicKey(), remembering the last result (see
// desired.PublicKey).
func PublicKey(private wgtypes.Key) wgtypes.Key { return desired.PublicKey(private) }
