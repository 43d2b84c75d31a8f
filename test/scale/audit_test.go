package scale

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/archipelago-mesh/archipelago/test/framework"
)

// auditPolicy logs every write the apiserver serves, with its request body
// (a patch says what changed), and nothing else.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Request
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
`

// auditLog is the apiserver's audit log of writes: who wrote what.
type auditLog struct {
	b    *testing.B
	path string
}

// newAuditLog writes the audit policy into dir and returns the log and the
// kube-apiserver flags that turn it on.
func newAuditLog(b *testing.B, dir string) (*auditLog, framework.APIServerArgs) {
	policy := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		b.Fatal(err)
	}
	a := &auditLog{b: b, path: filepath.Join(dir, "audit.log")}
	return a, framework.APIServerArgs{
		"audit-policy-file": policy,
		"audit-log-path":    a.path,
		"audit-log-format":  "json",
		"audit-log-mode":    "blocking",
	}
}

// offset is where the log ends now, after its last complete line.
func (a *auditLog) offset() int64 {
	f, err := os.Open(a.path)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		a.b.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		a.b.Fatal(err)
	}
	size := st.Size()
	from := max(0, size-1<<20)
	tail := make([]byte, size-from)
	if _, err := f.ReadAt(tail, from); err != nil && err != io.EOF {
		a.b.Fatal(err)
	}
	return from + int64(bytes.LastIndexByte(tail, '\n')+1)
}

// auditEvent is the part of an audit.k8s.io/v1 Event the summary reads.
type auditEvent struct {
	Verb string `json:"verb"`
	User struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
	} `json:"objectRef"`
	ResponseStatus struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	RequestObject json.RawMessage `json:"requestObject"`
}

// writeKind groups the writes of one user: verb, resource and response code.
type writeKind struct {
	user, what string
}

type writeGroup struct {
	count    int
	objects  map[string]int
	examples []string
}

// summary tells, per user, which writes the apiserver served between two
// offsets: verb, resource, response code, rate, how many objects, and an
// example request body of each kind.
func (a *auditLog) summary(from, to int64, seconds float64) string {
	f, err := os.Open(a.path)
	if err != nil {
		return fmt.Sprintf("  (no audit log: %v)", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(io.NewSectionReader(f, from, to-from))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	groups := map[writeKind]*writeGroup{}
	users := map[string]int{}
	for sc.Scan() {
		var e auditEvent
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		res := e.ObjectRef.Resource
		if e.ObjectRef.Subresource != "" {
			res += "/" + e.ObjectRef.Subresource
		}
		k := writeKind{user: e.User.Username, what: fmt.Sprintf("%s %s %d", e.Verb, res, e.ResponseStatus.Code)}
		g := groups[k]
		if g == nil {
			g = &writeGroup{objects: map[string]int{}}
			groups[k] = g
		}
		g.count++
		users[k.user]++
		name := e.ObjectRef.Name
		if e.ObjectRef.Namespace != "" {
			name = e.ObjectRef.Namespace + "/" + name
		}
		g.objects[name]++
		if len(g.examples) < 2 {
			body := string(e.RequestObject)
			if len(body) > 600 {
				body = body[:600] + "…"
			}
			g.examples = append(g.examples, name+": "+body)
		}
	}
	if len(users) == 0 {
		return "  no writes"
	}
	var out strings.Builder
	names := make([]string, 0, len(users))
	for u := range users {
		names = append(names, u)
	}
	slices.SortFunc(names, func(x, y string) int { return users[y] - users[x] })
	for _, u := range names {
		fmt.Fprintf(&out, "  %s: %d writes, %.2f/s\n", u, users[u], float64(users[u])/seconds)
		var kinds []writeKind
		for k := range groups {
			if k.user == u {
				kinds = append(kinds, k)
			}
		}
		slices.SortFunc(kinds, func(x, y writeKind) int { return groups[y].count - groups[x].count })
		for _, k := range kinds {
			g := groups[k]
			fmt.Fprintf(&out, "    %s: %d (%.2f/s) on %d objects\n", k.what, g.count, float64(g.count)/seconds, len(g.objects))
			if u == "scale-hub" {
				for _, ex := range g.examples {
					fmt.Fprintf(&out, "      e.g. %s\n", ex)
				}
			}
		}
	}
	return strings.TrimRight(out.String(), "\n")
}
