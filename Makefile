# archipelago — make help lists the targets.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

ROOT        := $(shell pwd)
BIN         := $(ROOT)/bin
K8S_BIN     := $(BIN)/k8s
DEV_TOOLS   := cd $(ROOT)/hack/tools/dev && go tool
CONTROLLER_GEN := $(DEV_TOOLS) controller-gen
GOLANGCI_LINT  := $(BIN)/golangci-lint
export KUBEBUILDER_ASSETS ?= $(K8S_BIN)

FUZZTIME ?= 15s

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z0-9_-]+:.*##/ {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Development

.PHONY: generate
generate: ## Generate deepcopy code (controller-gen).
	$(CONTROLLER_GEN) object paths=$(ROOT)/api/...

.PHONY: manifests
manifests: ## Generate CRDs and RBAC into config/ (controller-gen), and copy the MCS API CRDs into config/mcs.
	$(CONTROLLER_GEN) crd paths=$(ROOT)/api/... output:crd:artifacts:config=$(ROOT)/config/crd/bases
	go run ./hack/mcscrds -out $(ROOT)/config/mcs
	$(CONTROLLER_GEN) rbac:roleName=archipelago-hub paths=$(ROOT)/controllers/... output:rbac:artifacts:config=$(ROOT)/config/rbac
	$(CONTROLLER_GEN) rbac:roleName=archipelago-agent paths=$(ROOT)/agent/... output:rbac:artifacts:config=$(ROOT)/config/agent/rbac
	$(CONTROLLER_GEN) rbac:roleName=archipelago-mcs paths=$(ROOT)/internal/mcs/... output:rbac:artifacts:config=$(ROOT)/config/mcs/rbac

.PHONY: verify-generated
verify-generated: generate manifests ## Fail when generated files are not committed.
	@if [ -n "$$(git status --porcelain -- api config)" ]; then \
	  echo "generated files are stale; run 'make generate manifests' and commit:"; \
	  git status --porcelain -- api config; git diff --stat -- api config; exit 1; fi
	@echo "==> generated files are up to date"

.PHONY: fmt
fmt: ## Run gofmt.
	gofmt -s -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet (all build tags).
	go vet ./...
	go vet -tags privileged,e2e ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint (pinned in hack/tools/lint).
	$(GOLANGCI_LINT) run --config $(ROOT)/.golangci.yml ./...

$(GOLANGCI_LINT): hack/tools/lint/go.mod hack/tools/lint/go.sum
	@echo "==> building golangci-lint (a few minutes the first time)"
	cd $(ROOT)/hack/tools/lint && go build -o $(GOLANGCI_LINT) github.com/golangci/golangci-lint/v2/cmd/golangci-lint

##@ Build

.PHONY: build
build: lab-binaries ## Build every binary into bin/ (archipelago-hub, -agent, -probe, -lab, kubectl-archipelago).
	CGO_ENABLED=0 go build -trimpath -o $(BIN)/archipelago-probe ./cmd/archipelago-probe

.PHONY: test-binaries
test-binaries: ## Build kube-apiserver, kube-controller-manager, etcd and kubectl for tests into bin/k8s (minutes the first time).
	hack/build-test-binaries.sh $(K8S_BIN)

.PHONY: packages
packages: ## Install the Debian packages privileged tests use (root).
	hack/install-packages.sh

##@ Test

.PHONY: test
test: test-binaries ## Run all tests: unit, fuzz (short), API integration, and privileged ones when root.
	hack/test.sh

.PHONY: test-unit
test-unit: ## Run unit tests only (no root, no apiserver).
	go test ./... -short

.PHONY: bench
bench: test-binaries ## Run the benchmarks and print a table.
	hack/bench.sh

.PHONY: bench-scale
bench-scale: test-binaries ## Run the hub scale harness: the real hub with SCALE_MEMBERS (1000) simulated members; prints one line.
	go test -count=1 -timeout 60m -run '^$$' -bench BenchmarkHubScale -benchtime 1x -v ./test/scale/

.PHONY: lab-binaries
lab-binaries: ## Build the binaries the lab runs (hub, agent, kubectl plugin, lab) into bin/.
	@echo "==> building archipelago-hub, archipelago-agent, kubectl-archipelago, archipelago-lab into $(BIN)"
	CGO_ENABLED=0 go build -trimpath -o $(BIN)/archipelago-hub ./cmd/hub
	CGO_ENABLED=0 go build -trimpath -o $(BIN)/archipelago-agent ./cmd/agent
	CGO_ENABLED=0 go build -trimpath -o $(BIN)/kubectl-archipelago ./cmd/kubectl-archipelago
	CGO_ENABLED=0 go build -trimpath -o $(BIN)/archipelago-lab ./cmd/lab

.PHONY: demo
demo: ## Show archipelago working end to end: a hub and three member clusters on this machine (root). DEMO_FLAGS=--once exits after the matrix.
	@if [ "$$(id -u)" -ne 0 ]; then echo "make demo needs root (network namespaces, nftables, TUN devices): run 'sudo make demo'"; exit 1; fi
	hack/install-packages.sh
	$(MAKE) --no-print-directory test-binaries lab-binaries
	$(BIN)/archipelago-lab $(DEMO_FLAGS)

.PHONY: e2e
e2e: ## Run the lab end-to-end suite (root; builds what it needs). Dual-stack; ARCHIPELAGO_LAB_IP_FAMILY=ipv4|ipv6 for one family.
	hack/install-packages.sh
	$(MAKE) --no-print-directory test-binaries lab-binaries
	go test -tags e2e -count=1 -timeout 20m -v ./test/e2e/lab/

.PHONY: bench-lab
bench-lab: ## Run the lab benchmarks: join -> first packet, tunnel throughput, power-loss failover, rollout loss, API writes idle vs traffic (root).
	hack/install-packages.sh
	$(MAKE) --no-print-directory test-binaries lab-binaries
	go test -tags e2e -count=1 -timeout 20m -run '^$$' -bench . -benchtime 1x -v ./test/e2e/lab/

##@ kind (tier 5; see docs/kind.md)

.PHONY: docker-build
docker-build: ## Build the hub, agent and probe images (FROM scratch; nothing is pulled).
	hack/kind/docker-build.sh

.PHONY: kind-images
kind-images: ## Build or load the kind node image, tools and project images into bin/kind (KIND_OFFLINE=0: stock kind images).
	hack/kind/e2e.sh --images-only

.PHONY: e2e-kind
e2e-kind: ## Run the kind e2e suite: a hub and two member kind clusters (cold: ~30 min of builds first; see docs/kind.md).
	hack/kind/e2e.sh
