package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
)

// Exit codes of kubectl archipelago. Scripts rely on them: keep them stable
// and in step with docs/cli.md.
const (
	// ExitOK: the command did what was asked and found nothing wrong.
	ExitOK = 0
	// ExitFinding: the command ran, and the archipelago said no or is not
	// healthy (a check failed, the hub refused a join, a probe failed).
	ExitFinding = 1
	// ExitError: bad usage, or a cluster could not be reached or asked.
	ExitError = 2
)

// exitError carries an exit code with a user-facing error.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// finding marks err as "the archipelago said no" (exit 1).
func finding(format string, a ...any) error {
	return &exitError{code: ExitFinding, err: fmt.Errorf(format, a...)}
}

// usageError marks a wrong invocation (exit 2).
func usageError(format string, a ...any) error {
	return &exitError{code: ExitError, err: fmt.Errorf(format, a...)}
}

// errSilentFinding is returned when the output already shows what failed.
var errSilentFinding = &exitError{code: ExitFinding, err: errors.New("")}

// ExitCode maps an error returned by a command to the process exit code.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return ExitError
}

// Options are what the commands share.
type Options struct {
	Streams genericiooptions.IOStreams
	Flags   *genericclioptions.ConfigFlags
	// Output is -o: table, wide, yaml or json.
	Output string
	// Now is the clock for ages; tests inject a fixed one.
	Now func() time.Time
}

func (o *Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// Main runs kubectl archipelago with args (without the program name) and
// returns the exit code. Errors are printed to streams.ErrOut.
func Main(ctx context.Context, args []string, streams genericiooptions.IOStreams) int {
	return MainWithOptions(ctx, args, &Options{Streams: streams})
}

// MainWithOptions is Main with a chosen clock.
func MainWithOptions(ctx context.Context, args []string, o *Options) int {
	root := NewRootCommand(o)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err != nil && err.Error() != "" {
		fmt.Fprintf(o.Streams.ErrOut, "Error: %v\n", err)
	}
	return ExitCode(err)
}

// NewRootCommand builds the command tree.
func NewRootCommand(o *Options) *cobra.Command {
	if o.Flags == nil {
		o.Flags = genericclioptions.NewConfigFlags(true)
	}
	root := &cobra.Command{
		Use:   "kubectl-archipelago",
		Short: "Join clusters to an archipelago and check its flat pod network",
		Long: `kubectl archipelago manages member clusters of an archipelago: several
Kubernetes clusters that share one flat pod network. The hub cluster assigns
every member a pod range; the agents in each member build the tunnels.

Exit codes: 0 ok; 1 a check failed or the hub refused (see the output);
2 usage error, or a cluster could not be reached or asked.`,
		Example: `  # Join the cluster of the current context to ClusterSet "demo" on the hub
  kubectl archipelago join c1 --clusterset demo --hub-context kind-hub

  # Health of the whole archipelago, from the hub
  kubectl archipelago status --hub-context kind-hub

  # What is wrong in one member, with fixes
  kubectl archipelago diagnose --context kind-c1`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.SetOut(o.Streams.Out)
	root.SetErr(o.Streams.ErrOut)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError("%v\nSee '%s --help'", err, c.CommandPath())
	})
	o.Flags.AddFlags(root.PersistentFlags())
	root.PersistentFlags().StringVarP(&o.Output, "output", "o", "table", "Output format: table, wide, yaml or json")

	root.AddCommand(
		newJoinCommand(o),
		newLeaveCommand(o),
		newStatusCommand(o),
		newDiagnoseCommand(o),
		newVerifyCommand(o),
	)
	return root
}

// checkOutput validates -o for commands that print reports.
func (o *Options) checkOutput() error {
	switch o.Output {
	case "table", "wide", "yaml", "json":
		return nil
	}
	return usageError("unknown output format %q: use table, wide, yaml or json", o.Output)
}

// exactArgs is cobra.ExactArgs with exit code 2 and a hint.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError("%s takes %s; see '%s --help'", c.CommandPath(), what, c.CommandPath())
		}
		return nil
	}
}
