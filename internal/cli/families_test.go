package cli

import (
	"slices"
	"strings"
	"testing"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// --ip-family sets spec.ipFamilies; left out, the field stays empty (every
// family of the ClusterSet). A value it does not know, or a --pod-cidr of a
// family it leaves out, is a usage error.
func TestJoinIPFamilyFlag(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    []meshv1.IPFamily
		wantErr string
	}{
		{args: nil, want: nil},
		{args: []string{"--ip-family", "ipv4"}, want: []meshv1.IPFamily{meshv1.IPv4}},
		{args: []string{"--ip-family", "IPv6"}, want: []meshv1.IPFamily{meshv1.IPv6}},
		{args: []string{"--ip-family", "dual"}, want: []meshv1.IPFamily{meshv1.IPv4, meshv1.IPv6}},
		{args: []string{"--ip-family", "ipv5"}, wantErr: `--ip-family "ipv5": use ipv4, ipv6 or dual`},
		{args: []string{"--ip-family", "ipv6", "--pod-cidr", "10.1.0.0/16"}, wantErr: "--pod-cidr 10.1.0.0/16 is an IPv4 range, but --ip-family ipv6 has no IPv4"},
		{args: []string{"--ip-family", "dual", "--pod-cidr", "10.1.0.0/16,fd00:1::/48"}, want: []meshv1.IPFamily{meshv1.IPv4, meshv1.IPv6}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			o := &Options{Output: "table"}
			cmd := newJoinCommand(o)
			if err := cmd.Flags().Parse(append([]string{"--clusterset", "demo", "--hub-context", "hub"}, tc.args...)); err != nil {
				t.Fatal(err)
			}
			// The command's RunE holds its options; rebuild them from the flags.
			j := &joinOptions{Options: o, name: "c1", clusterSet: "demo", hubContext: "hub", tokenTTL: DefaultTokenTTL}
			j.ipFamily, _ = cmd.Flags().GetString("ip-family")
			j.podCIDRs, _ = cmd.Flags().GetStringSlice("pod-cidr")
			err := j.validate()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || ExitCode(err) != ExitError {
					t.Fatalf("validate: %v, want a usage error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("validate: %v", err)
			}
			if !slices.Equal(j.ipFamilies, tc.want) {
				t.Errorf("spec.ipFamilies %v, want %v", j.ipFamilies, tc.want)
			}
		})
	}
}

func TestPoolFamiliesMissing(t *testing.T) {
	pools := []string{"10.0.0.0/8"}
	if got := poolFamiliesMissing([]meshv1.IPFamily{meshv1.IPv4, meshv1.IPv6}, pools); !slices.Equal(got, []string{"IPv6"}) {
		t.Errorf("missing %v, want [IPv6]", got)
	}
	if got := poolFamiliesMissing(nil, pools); len(got) != 0 {
		t.Errorf("no family asked: missing %v", got)
	}
}

// status lists the pairs of members whose pods cannot reach each other,
// and why; diagnose the peers of this member.
func TestFamilyGaps(t *testing.T) {
	members := []MemberReport{
		{Name: "alpha", IPFamilies: []string{"IPv4"}},
		{Name: "bravo", IPFamilies: []string{"IPv6"}},
		{Name: "charlie", IPFamilies: []string{"IPv4", "IPv6"}},
		{Name: "delta", IPFamilies: []string{"IPv4", "IPv6"}},
		{Name: "pending"},
	}
	got := familyGaps(members)
	want := []string{
		"alpha and bravo: no common IP family (alpha has IPv4 only, bravo IPv6 only): their pods cannot reach each other",
		"charlie's IPv6 pods cannot reach alpha: alpha has no IPv6 range (they talk over IPv4)",
		"delta's IPv6 pods cannot reach alpha: alpha has no IPv6 range (they talk over IPv4)",
		"charlie's IPv4 pods cannot reach bravo: bravo has no IPv4 range (they talk over IPv6)",
		"delta's IPv4 pods cannot reach bravo: bravo has no IPv4 range (they talk over IPv6)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("gaps:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := familyGaps(members[2:]); len(got) != 0 {
		t.Errorf("dual-stack members only: %q", got)
	}

	d := &diagnosis{report: &DiagnoseReport{}}
	d.checkFamilies(&meshv1.ClusterSetMembership{Status: meshv1.ClusterSetMembershipStatus{
		PodCIDRs: []string{"fd00:1::/64"},
		Peers: []meshv1.MembershipPeer{
			{Cluster: "bravo", PodCIDRs: []string{"10.2.0.0/16"}},
			{Cluster: "charlie", PodCIDRs: []string{"10.3.0.0/16", "fd00:3::/64"}},
			{Cluster: "six", PodCIDRs: []string{"fd00:6::/64"}},
		},
	}})
	if len(d.report.Findings) != 1 {
		t.Fatalf("findings %+v, want one", d.report.Findings)
	}
	f := d.report.Findings[0]
	for _, w := range []string{"This member has IPv6;", "this member and bravo: no common IP family (this member has IPv6 only, bravo IPv4 only)",
		"charlie's IPv4 pods cannot reach this member: this member has no IPv4 range"} {
		if !strings.Contains(f.Detail, w) {
			t.Errorf("detail %q does not contain %q", f.Detail, w)
		}
	}
	if f.Status != StatusWarn || strings.Contains(f.Detail, "six") {
		t.Errorf("finding %+v", f)
	}
}
