package mcs

import (
	"context"
	"testing"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/mcs"
	"github.com/archipelago-mesh/archipelago/internal/mcs/records"
)

func TestRecordsPublisherAndCollect(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	eastNS, westNS := hubNamespace(t, c), hubNamespace(t, c)
	pub := &records.Publisher{Client: c, Namespace: eastNS}

	spec := validExport(eastNS).Spec // cluster east, shop/api
	if err := pub.Publish(ctx, &spec); err != nil {
		t.Fatalf("publish: %v", err)
	}
	rec := &meshv1.ExportedService{}
	if err := c.Get(ctx, objectKey(eastNS, "shop.api"), rec); err != nil {
		t.Fatalf("the record is not on the hub: %v", err)
	}
	rv := rec.ResourceVersion
	if err := pub.Publish(ctx, &spec); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, objectKey(eastNS, "shop.api"), rec); err != nil || rec.ResourceVersion != rv {
		t.Errorf("publishing the same spec wrote the record (resourceVersion %s -> %s, %v)", rv, rec.ResourceVersion, err)
	}
	spec.Ports[0].Port = 8080
	if err := pub.Publish(ctx, &spec); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, objectKey(eastNS, "shop.api"), rec); err != nil || rec.Spec.Ports[0].Port != 8080 {
		t.Errorf("update not written: %+v %v", rec.Spec.Ports, err)
	}
	if keys, err := pub.Published(ctx); err != nil || len(keys) != 1 || keys[0] != (mcs.Key{Namespace: "shop", Name: "api"}) {
		t.Errorf("published = %v %v", keys, err)
	}

	// A record in west's namespace that claims to be east's is not read.
	spoof := validExport(westNS)
	if err := c.Create(ctx, spoof); err != nil {
		t.Fatal(err)
	}
	got, err := records.Collect(ctx, c, map[string]string{eastNS: "east", westNS: "west"})
	if err != nil || len(got) != 1 || got[0].Ports[0].Port != 8080 {
		t.Errorf("collect = %+v %v, want east's record only", got, err)
	}

	if err := pub.Withdraw(ctx, mcs.Key{Namespace: "shop", Name: "api"}); err != nil {
		t.Fatal(err)
	}
	if err := pub.Withdraw(ctx, mcs.Key{Namespace: "shop", Name: "api"}); err != nil {
		t.Errorf("withdrawing twice: %v", err)
	}
	if keys, _ := pub.Published(ctx); len(keys) != 0 {
		t.Errorf("published after withdraw = %v", keys)
	}
}
