package coredns

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ClusterSetZone is the zone of multi-cluster service names (KEP-1645).
const ClusterSetZone = "clusterset.local"

// ErrOtherClusterSetDNS means the Corefile has a server block of its own for
// clusterset.local: another multi-cluster DNS (Submariner's Lighthouse
// forwards the zone this way) that Enable must not fight with.
var ErrOtherClusterSetDNS = errors.New("another DNS serves " + ClusterSetZone)

// line is one line of a Corefile with its tokens (comments dropped).
type line struct {
	text   string
	tokens []string
}

func tokenize(text string) []string {
	if i := strings.IndexByte(text, '#'); i >= 0 {
		text = text[:i]
	}
	return strings.Fields(strings.NewReplacer("{", " { ", "}", " } ").Replace(text))
}

// kubernetesDirective finds the kubernetes plugin of the server block that
// serves clusterDomain: the index of its line and of the line closing its
// block (-1 when it has no block).
func kubernetesDirective(lines []line, clusterDomain string) (at, end int, err error) {
	if err := otherClusterSetServer(lines); err != nil {
		return 0, 0, err
	}
	depth := 0
	found := -1
	for i, l := range lines {
		for j, tok := range l.tokens {
			switch tok {
			case "{":
				depth++
			case "}":
				depth--
				if depth == 1 && found >= 0 && i > found {
					return found, i, nil
				}
			default:
				if depth == 1 && j == 0 && tok == "kubernetes" && found < 0 {
					zones := zonesOf(l.tokens)
					if len(zones) == 0 {
						return 0, 0, fmt.Errorf("line %d: the kubernetes plugin has no zones of its own (it serves its server block's); list them (e.g. %q) and run again", i+1, "kubernetes "+clusterDomain+" in-addr.arpa ip6.arpa")
					}
					if slices.Contains(zones, clusterDomain) || slices.Contains(zones, clusterDomain+".") {
						found = i
						if l.tokens[len(l.tokens)-1] != "{" {
							return found, -1, nil
						}
					}
				}
			}
		}
	}
	if found >= 0 {
		return 0, 0, fmt.Errorf("line %d: the kubernetes plugin's block is not closed", found+1)
	}
	return 0, 0, fmt.Errorf("no kubernetes plugin for the cluster domain %s in the Corefile", clusterDomain)
}

// otherClusterSetServer fails when a server block's key is the clusterset zone.
func otherClusterSetServer(lines []line) error {
	depth := 0
	for i, l := range lines {
		for j, tok := range l.tokens {
			switch {
			case tok == "{":
				depth++
			case tok == "}":
				depth--
			case depth == 0 && j == 0:
				for _, key := range l.tokens {
					if key == "{" {
						break
					}
					host := strings.TrimPrefix(key, "dns://")
					if k := strings.IndexByte(host, ':'); k >= 0 {
						host = host[:k]
					}
					if strings.TrimSuffix(host, ".") == ClusterSetZone {
						return fmt.Errorf("%w: the Corefile has a server block for it (line %d: %q); remove it first", ErrOtherClusterSetDNS, i+1, strings.TrimSpace(l.text))
					}
				}
			}
		}
	}
	return nil
}

// zonesOf returns the zones of a `kubernetes ZONES... [{]` line.
func zonesOf(tokens []string) []string {
	var z []string
	for _, t := range tokens[1:] {
		if t == "{" {
			break
		}
		z = append(z, t)
	}
	return z
}

func split(corefile string) []line {
	var out []line
	for _, t := range strings.SplitAfter(corefile, "\n") {
		if t == "" {
			continue
		}
		out = append(out, line{text: t, tokens: tokenize(t)})
	}
	return out
}

func join(lines []line) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.text)
	}
	return b.String()
}

func indentOf(s string) string { return s[:len(s)-len(strings.TrimLeft(s, " \t"))] }

// Enable adds ClusterSetZone to the zones of the kubernetes plugin that
// serves clusterDomain and the option `multicluster clusterset.local` to its
// block. It is idempotent: changed is false when both are there already.
func Enable(corefile, clusterDomain string) (out string, changed bool, err error) {
	lines := split(corefile)
	at, end, err := kubernetesDirective(lines, clusterDomain)
	if err != nil {
		return "", false, err
	}
	k := &lines[at]
	if !slices.Contains(zonesOf(k.tokens), ClusterSetZone) {
		// After the cluster domain, so that the first zone (the one
		// CoreDNS uses for the cluster's own names) stays the same.
		i := strings.Index(k.text, "kubernetes") + len("kubernetes")
		rest := k.text[i:]
		j := strings.Index(rest, zonesOf(k.tokens)[0]) + len(zonesOf(k.tokens)[0])
		k.text = k.text[:i] + rest[:j] + " " + ClusterSetZone + rest[j:]
		k.tokens = tokenize(k.text)
		changed = true
	}
	if end < 0 {
		// A kubernetes line without a block: give it one.
		nl := strings.TrimRight(k.text, "\n")
		ind := indentOf(k.text)
		k.text = nl + " {\n"
		k.tokens = tokenize(k.text)
		block := []line{{text: ind + "   multicluster " + ClusterSetZone + "\n"}, {text: ind + "}\n"}}
		block[0].tokens, block[1].tokens = tokenize(block[0].text), tokenize(block[1].text)
		lines = slices.Insert(lines, at+1, block...)
		return join(lines), true, nil
	}
	for i := at + 1; i < end; i++ {
		if t := lines[i].tokens; len(t) > 0 && t[0] == "multicluster" {
			if slices.Contains(t[1:], ClusterSetZone) {
				return join(lines), changed, nil
			}
			lines[i].text = strings.TrimRight(lines[i].text, " \t\n") + " " + ClusterSetZone + "\n"
			lines[i].tokens = tokenize(lines[i].text)
			return join(lines), true, nil
		}
	}
	ind := indentOf(k.text) + "   "
	if at+1 < end {
		ind = indentOf(lines[at+1].text)
	}
	opt := line{text: ind + "multicluster " + ClusterSetZone + "\n"}
	opt.tokens = tokenize(opt.text)
	lines = slices.Insert(lines, at+1, opt)
	return join(lines), true, nil
}

// Disable removes what Enable added: ClusterSetZone from the plugin's zones
// and from its multicluster option (the option goes when it has no zone
// left). changed is false when neither was there.
func Disable(corefile, clusterDomain string) (out string, changed bool, err error) {
	lines := split(corefile)
	at, end, err := kubernetesDirective(lines, clusterDomain)
	if err != nil {
		if errors.Is(err, ErrOtherClusterSetDNS) {
			return corefile, false, nil // that zone is not ours to remove
		}
		return "", false, err
	}
	k := &lines[at]
	if slices.Contains(zonesOf(k.tokens), ClusterSetZone) {
		k.text = strings.Replace(k.text, " "+ClusterSetZone, "", 1)
		k.tokens = tokenize(k.text)
		changed = true
	}
	if end < 0 {
		return join(lines), changed, nil
	}
	for i := at + 1; i < end; i++ {
		t := lines[i].tokens
		if len(t) == 0 || t[0] != "multicluster" || !slices.Contains(t[1:], ClusterSetZone) {
			continue
		}
		changed = true
		if len(t) == 2 {
			lines = slices.Delete(lines, i, i+1)
		} else {
			lines[i].text = strings.Replace(lines[i].text, " "+ClusterSetZone, "", 1)
		}
		break
	}
	// A block Enable made for a bare kubernetes line stays, empty: it cannot
	// be told from a block the user wrote, and an empty block changes nothing.
	return join(lines), changed, nil
}
