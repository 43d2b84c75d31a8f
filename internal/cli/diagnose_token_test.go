package cli

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// fakeJWT is a token with the claims diagnose reads (unsigned: diagnose
// never verifies, the hub does).
func fakeJWT(iat, exp time.Time, bound string) string {
	secret := ""
	if bound != "" {
		secret = fmt.Sprintf(`,"secret":{"name":%q,"uid":"u"}`, bound)
	}
	payload := fmt.Sprintf(`{"iat":%d,"exp":%d,"kubernetes.io":{"namespace":"member-a","serviceaccount":{"name":"archipelago-agent"}%s}}`, iat.Unix(), exp.Unix(), secret)
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(payload)) + ".c2ln"
}

func TestDiagnoseHubToken(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for name, tc := range map[string]struct {
		token      string
		condition  *metav1.Condition
		wantStatus string
		wantDetail string
	}{
		"fresh bound token": {token: fakeJWT(now.Add(-time.Hour), now.Add(23*time.Hour), "hub-credential-x"), wantStatus: StatusOK},
		"renewal overdue":   {token: fakeJWT(now.Add(-20*time.Hour), now.Add(4*time.Hour), "hub-credential-x"), wantStatus: StatusWarn, wantDetail: "due for renewal"},
		"expired":           {token: fakeJWT(now.Add(-25*time.Hour), now.Add(-time.Hour), "hub-credential-x"), wantStatus: StatusFail, wantDetail: "expired"},
		"unbound":           {token: fakeJWT(now.Add(-time.Hour), now.Add(8000*time.Hour), ""), wantStatus: StatusWarn, wantDetail: "not bound"},
		"renewal failing":   {token: fakeJWT(now.Add(-time.Hour), now.Add(23*time.Hour), "hub-credential-x"), condition: &metav1.Condition{Type: meshv1.MembershipHubCredentials, Status: metav1.ConditionFalse, Reason: "RenewalFailed", Message: "hub down"}, wantStatus: StatusWarn, wantDetail: "RenewalFailed"},
		"opaque token, far": {token: "t", wantStatus: StatusOK},
	} {
		t.Run(name, func(t *testing.T) {
			m := &meshv1.ClusterSetMembership{ObjectMeta: metav1.ObjectMeta{Name: MembershipName},
				Spec: meshv1.ClusterSetMembershipSpec{ClusterName: "a", ClusterSet: "s", Hub: meshv1.HubConnection{Server: "https://hub:6443",
					SecretRef: meshv1.SecretReference{Name: HubSecretName, Namespace: SystemNamespace}}}}
			if tc.condition != nil {
				m.Status.Conditions = []metav1.Condition{*tc.condition}
			}
			s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: HubSecretName, Namespace: SystemNamespace,
				Annotations: map[string]string{AnnotationTokenExpires: now.Add(300 * 24 * time.Hour).Format(time.RFC3339)}},
				Data: map[string][]byte{SecretKeyToken: []byte(tc.token), SecretKeyCA: []byte("ca")}}
			d := &diagnosis{report: &DiagnoseReport{}, now: now}
			if err := d.checkSecret(context.Background(), fakeClient(s), m); err != nil {
				t.Fatal(err)
			}
			if len(d.report.Findings) != 1 {
				t.Fatalf("findings %+v", d.report.Findings)
			}
			f := d.report.Findings[0]
			if f.Status != tc.wantStatus || !strings.Contains(f.Detail, tc.wantDetail) {
				t.Errorf("finding %+v, want %s containing %q", f, tc.wantStatus, tc.wantDetail)
			}
		})
	}
}
