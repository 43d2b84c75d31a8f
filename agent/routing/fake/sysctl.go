package fake

import (
	"fmt"
	"io/fs"
	"sync"
)

// Sysctl is an in-memory routing.Sysctl. Parameters that were never set do
// not exist, as on a host where the kernel lacks them.
type Sysctl struct {
	mu     sync.Mutex
	values map[string]string
	writes []string
}

// NewSysctl returns a fake holding the given parameters.
func NewSysctl(values map[string]string) *Sysctl {
	s := &Sysctl{values: map[string]string{}}
	for k, v := range values {
		s.values[k] = v
	}
	return s
}

// Get implements routing.Sysctl.
func (s *Sysctl) Get(name string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.values[name]
	if !ok {
		return "", fmt.Errorf("read sysctl %s: %w", name, fs.ErrNotExist)
	}
	return v, nil
}

// Set implements routing.Sysctl. Like /proc/sys, it cannot create parameters.
func (s *Sysctl) Set(name, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.values[name]; !ok {
		return fmt.Errorf("write sysctl %s: %w", name, fs.ErrNotExist)
	}
	s.values[name] = value
	s.writes = append(s.writes, name+"="+value)
	return nil
}

// Writes returns every successful Set as "name=value", in order.
func (s *Sysctl) Writes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.writes...)
}

// Value returns a parameter's value and whether it exists.
func (s *Sysctl) Value(name string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.values[name]
	return v, ok
}

// Define creates a parameter, as the kernel does when an interface appears;
// it is not counted as a write.
func (s *Sysctl) Define(name, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.values[name]; !ok {
		s.values[name] = value
	}
}
