package dataplane_test

import "github.com/google/nftables"

func tableFamily(b byte) nftables.TableFamily { return nftables.TableFamily(b) }
