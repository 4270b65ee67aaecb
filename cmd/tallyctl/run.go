package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/internal/tlsfiles"
	"github.com/tally-ledger/tally/ledger"
)

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1 // the request or the operation failed
	exitUsage = 2
)

const (
	defaultAddrs   = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"
	defaultTimeout = 5 * time.Second
	// defaultJournalLimit is the page size of "journal" without --limit.
	defaultJournalLimit = 20
	// keyRandomBytes of randomness make generated idempotency keys unique
	// without coordination (128 bits).
	keyRandomBytes = 16
)

// globals are the flags every command accepts, before or after its name.
type globals struct {
	addrs   string
	json    bool
	timeout time.Duration
	tls     tlsfiles.Files
}

func (g *globals) register(fs *flag.FlagSet) {
	g.tls.AddFlags(fs)
	fs.StringVar(&g.addrs, "addr", g.addrs, "comma-separated gRPC addresses of cluster nodes")
	fs.BoolVar(&g.json, "json", g.json, "print JSON instead of aligned text")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "bound on the whole command, retries included")
}

// args holds every command flag; each command registers the ones it uses.
type args struct {
	replicaShard           int // replicas --shard (-1: every shard)
	program, member, asset string
	key                    string
	keyGenerated           bool
	amount                 string
	memo                   string
	maxBalance             string
	ttl                    time.Duration
	holdKey                string
	scale                  uint
	limit                  int
	before                 uint64
	node                   string
	shard                  uint
	dir, hosts             string
	certOut, keyOut        string
	valid                  time.Duration
}

// command is one tallyctl command.
type command struct {
	name     string
	synopsis string
	// flags registers the command's flags; required names those that must
	// be set.
	flags    func(fs *flag.FlagSet, a *args)
	required []string
	mutating bool // takes --key, generated when absent
	// dial overrides the addresses to dial (state: the node asked).
	dial func(g globals, a *args) []string
	// prepare, if set, runs before the cluster is dialed: input that can
	// be checked without it (a batch file) is refused the same, with exit
	// 2, whether or not the cluster answers.
	prepare func(a *args) error
	do      func(ctx context.Context, c *client.Client, a *args) (view, error)
	// local, if set, is the command instead of do: it needs no cluster.
	local func(a *args) (view, error)
	// timeout, if set, replaces defaultTimeout when --timeout is not given
	// (backup and restore move whole shards).
	timeout time.Duration
}

func memberFlags(fs *flag.FlagSet, a *args) {
	fs.StringVar(&a.program, "program", "", "loyalty program")
	fs.StringVar(&a.member, "member", "", "member id")
	fs.StringVar(&a.asset, "asset", "", "asset code (POINTS, CNY, ...)")
}

func amountFlags(fs *flag.FlagSet, a *args) {
	memberFlags(fs, a)
	fs.StringVar(&a.amount, "amount", "", "decimal amount, e.g. 12.50")
}

func stateCommand(name, synopsis string, do func(c *client.Client) func(context.Context, string, string, string, string) (client.Result, error)) command {
	return command{
		name: name, synopsis: synopsis, flags: memberFlags, required: []string{"program", "member", "asset"}, mutating: true,
		do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
			r, err := do(c)(ctx, a.program, a.member, a.asset, a.key)
			return resultOf(a, r, err)
		},
	}
}

// moveFunc is the client call of a credit or a debit.
type moveFunc func(ctx context.Context, program, member, asset string, amount decimal.Decimal, key, memo string) (client.Result, error)

// moveCommand is a credit or a debit: an amount and an optional memo.
func moveCommand(name, synopsis string, call func(c *client.Client) moveFunc) command {
	return command{
		name: name, synopsis: synopsis,
		flags: func(fs *flag.FlagSet, a *args) {
			amountFlags(fs, a)
			fs.StringVar(&a.memo, "memo", "", "free text stored in the journal")
		},
		required: []string{"program", "member", "asset", "amount"}, mutating: true,
		do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
			amount, err := parseDecimal("amount", a.amount)
			if err != nil {
				return nil, err
			}
			r, err := call(c)(ctx, a.program, a.member, a.asset, amount, a.key, a.memo)
			return resultOf(a, r, err)
		},
	}
}

func commands() []command {
	return commandsWith(os.Stdin)
}

// commandsWith builds the command table; stdin feeds "batch --file -".
func commandsWith(stdin io.Reader) []command {
	return []command{
		{
			name: "define-asset", synopsis: "define an asset of a program on every shard",
			flags: func(fs *flag.FlagSet, a *args) {
				fs.StringVar(&a.program, "program", "", "loyalty program")
				fs.StringVar(&a.asset, "asset", "", "asset code")
				fs.UintVar(&a.scale, "scale", 0, "decimal places of the asset's amounts (required: an asset never changes)")
			},
			required: []string{"program", "asset", "scale"}, mutating: true,
			do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
				if a.scale > ledger.MaxScale {
					return nil, usageErr("--scale %d is above the maximum %d", a.scale, ledger.MaxScale)
				}
				r, err := c.DefineAsset(ctx, a.program, a.asset, uint8(a.scale), a.key)
				return resultOf(a, r, err)
			},
		},
		{
			name: "open", synopsis: "open a member's account of an asset",
			flags: func(fs *flag.FlagSet, a *args) {
				memberFlags(fs, a)
				fs.StringVar(&a.maxBalance, "max-balance", "", "upper bound of the posted balance (default none)")
			},
			required: []string{"program", "member", "asset"}, mutating: true,
			do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
				var maxBal *decimal.Decimal
				if a.maxBalance != "" {
					d, err := parseDecimal("max-balance", a.maxBalance)
					if err != nil {
						return nil, err
					}
					maxBal = &d
				}
				r, err := c.OpenAccount(ctx, a.program, a.member, a.asset, maxBal, a.key)
				return resultOf(a, r, err)
			},
		},
		moveCommand("credit", "add to an account (earn, top-up, refund)", func(c *client.Client) moveFunc { return c.Credit }),
		moveCommand("debit", "take from an account's available balance (redeem, pay)", func(c *client.Client) moveFunc { return c.Debit }),
		{
			name: "hold", synopsis: "reserve part of the available balance; the hold is named by --key",
			flags: func(fs *flag.FlagSet, a *args) {
				amountFlags(fs, a)
				fs.DurationVar(&a.ttl, "ttl", 15*time.Minute, "lifetime of the hold")
			},
			required: []string{"program", "member", "asset", "amount"}, mutating: true,
			do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
				amount, err := parseDecimal("amount", a.amount)
				if err != nil {
					return nil, err
				}
				r, err := c.Hold(ctx, a.program, a.member, a.asset, amount, a.ttl, a.key)
				return resultOf(a, r, err)
			},
		},
		{
			name: "capture", synopsis: "debit a hold (all of it without --amount) and release the rest",
			flags: func(fs *flag.FlagSet, a *args) {
				fs.StringVar(&a.program, "program", "", "loyalty program")
				fs.StringVar(&a.member, "member", "", "member id")
				fs.StringVar(&a.holdKey, "hold-key", "", "idempotency key of the hold")
				fs.StringVar(&a.amount, "amount", "", "amount to capture (default: the whole hold)")
			},
			required: []string{"program", "member", "hold-key"}, mutating: true,
			do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
				if a.amount == "" {
					r, err := c.CaptureHoldAll(ctx, a.program, a.member, a.holdKey, a.key)
					return resultOf(a, r, err)
				}
				amount, err := parseDecimal("amount", a.amount)
				if err != nil {
					return nil, err
				}
				// An explicit amount must be one: "--amount 0" (a script's
				// computed amount, say) must not capture the whole hold.
				if !amount.IsPositive() {
					return nil, usageErr("%s: --amount %s is not positive (leave --amount out to capture the whole hold)", ledger.CodeInvalidAmount, a.amount)
				}
				r, err := c.CaptureHold(ctx, a.program, a.member, a.holdKey, amount, a.key)
				return resultOf(a, r, err)
			},
		},
		{
			name: "release", synopsis: "release a hold",
			flags: func(fs *flag.FlagSet, a *args) {
				fs.StringVar(&a.program, "program", "", "loyalty program")
				fs.StringVar(&a.member, "member", "", "member id")
				fs.StringVar(&a.holdKey, "hold-key", "", "idempotency key of the hold")
			},
			required: []string{"program", "member", "hold-key"}, mutating: true,
			do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
				r, err := c.ReleaseHold(ctx, a.program, a.member, a.holdKey, a.key)
				return resultOf(a, r, err)
			},
		},
		stateCommand("freeze", "freeze an account (fraud, dispute)", func(c *client.Client) func(context.Context, string, string, string, string) (client.Result, error) {
			return c.Freeze
		}),
		stateCommand("unfreeze", "make a frozen account active again", func(c *client.Client) func(context.Context, string, string, string, string) (client.Result, error) {
			return c.Unfreeze
		}),
		stateCommand("lost", "report an account's card lost", func(c *client.Client) func(context.Context, string, string, string, string) (client.Result, error) {
			return c.ReportLost
		}),
		stateCommand("found", "report a lost card found", func(c *client.Client) func(context.Context, string, string, string, string) (client.Result, error) {
			return c.ReportFound
		}),
		stateCommand("close", "close an account for good (zero balance)", func(c *client.Client) func(context.Context, string, string, string, string) (client.Result, error) {
			return c.CloseAccount
		}),
		{
			name: "get", synopsis: "show an account (linearizable read)",
			flags: memberFlags, required: []string{"program", "member", "asset"},
			do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
				acct, err := c.GetAccount(ctx, a.program, a.member, a.asset)
				if err != nil {
					return nil, err
				}
				return accountView{acct}, nil
			},
		},
		{
			name: "journal", synopsis: "list a member's operations, newest first",
			flags: func(fs *flag.FlagSet, a *args) {
				memberFlags(fs, a)
				fs.IntVar(&a.limit, "limit", defaultJournalLimit, "entries per page")
				fs.Uint64Var(&a.before, "before", 0, "list entries with seq below this (the next page's --before is printed)")
			},
			required: []string{"program", "member"},
			do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
				if a.limit <= 0 {
					return nil, usageErr("--limit must be positive, got %d", a.limit)
				}
				entries, next, err := c.ListJournal(ctx, a.program, a.member, a.asset, a.limit, a.before)
				if err != nil {
					return nil, err
				}
				return journalView{Entries: entries, NextBeforeSeq: next}, nil
			},
		},
		{
			name: "op", synopsis: "show the stored outcome of an operation by its idempotency key",
			flags: func(fs *flag.FlagSet, a *args) {
				fs.StringVar(&a.program, "program", "", "loyalty program")
				fs.StringVar(&a.member, "member", "", "member id (routes to the member's shard)")
				fs.StringVar(&a.key, "key", "", "idempotency key of the operation")
			},
			required: []string{"program", "member", "key"},
			do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
				found, entry, err := c.GetOperation(ctx, a.program, a.member, a.key)
				if err != nil {
					return nil, err
				}
				return opView{Key: a.key, Found: found, Entry: entry}, nil
			},
		},
		{
			name: "cluster", synopsis: "show nodes and shard leaders",
			flags: func(*flag.FlagSet, *args) {},
			do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
				info, err := c.ClusterInfo(ctx)
				if err != nil {
					return nil, err
				}
				return clusterView{info}, nil
			},
		},
		{
			name: "state", synopsis: "show one node's local view of a shard (applied index, state hash, rules version)",
			flags: func(fs *flag.FlagSet, a *args) {
				fs.StringVar(&a.node, "node", "", "gRPC address of the node to ask")
				fs.UintVar(&a.shard, "shard", 0, "shard number")
			},
			required: []string{"node", "shard"},
			dial:     func(_ globals, a *args) []string { return []string{a.node} },
			do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
				st, err := c.ShardState(ctx, a.node, uint32(a.shard))
				if err != nil {
					return nil, err
				}
				return stateView{Node: a.node, ShardState: st}, nil
			},
		},
		replicasCommand(),
		batchCommand(stdin),
		backupCommand(),
		restoreCommand(),
		verifyBackupCommand(),
		{
			name: "certs", synopsis: "write a development CA, a node certificate and a client certificate for mutual TLS (--tls-cert/--tls-key/--tls-ca)",
			flags: func(fs *flag.FlagSet, a *args) {
				fs.StringVar(&a.dir, "dir", "", "directory to write ca.pem, node.pem, client.pem and their keys into")
				fs.StringVar(&a.hosts, "hosts", "127.0.0.1,localhost", "IP addresses and DNS names the nodes are reached by, comma-separated")
				fs.DurationVar(&a.valid, "valid", 365*24*time.Hour, "validity of the certificates")
			},
			required: []string{"dir"},
			local: func(a *args) (view, error) {
				if a.valid <= 0 {
					return nil, usageErr("--valid must be positive, got %v", a.valid)
				}
				g, err := tlsfiles.Generate(a.dir, splitAddrs(a.hosts), a.valid)
				if err != nil {
					return nil, err
				}
				return certsView(g), nil
			},
		},
		{
			name: "issue-cert", synopsis: "write a new certificate and key signed by the CA that certs wrote (a node's with --hosts, else a client's); replacing a node's files in place rotates its certificate without a restart",
			flags: func(fs *flag.FlagSet, a *args) {
				fs.StringVar(&a.dir, "ca-dir", "", "directory holding ca.pem and ca-key.pem")
				fs.StringVar(&a.certOut, "cert", "", "certificate file to write (replaced through a rename)")
				fs.StringVar(&a.keyOut, "key", "", "private key file to write (0600, replaced through a rename)")
				fs.StringVar(&a.hosts, "hosts", "", "a node certificate's IP addresses and DNS names, comma-separated; empty: a client certificate")
				fs.DurationVar(&a.valid, "valid", 365*24*time.Hour, "validity of the certificate")
			},
			required: []string{"ca-dir", "cert", "key"},
			local: func(a *args) (view, error) {
				if a.valid <= 0 {
					return nil, usageErr("--valid must be positive, got %v", a.valid)
				}
				out := tlsfiles.Files{Cert: a.certOut, Key: a.keyOut}
				if err := tlsfiles.Issue(a.dir, out, splitAddrs(a.hosts), a.valid); err != nil {
					return nil, err
				}
				return issuedView{Files: out, node: a.hosts != ""}, nil
			},
		},
	}
}

// usageError is a mistake in the command line (exit status 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErr(format string, v ...any) error { return &usageError{fmt.Sprintf(format, v...)} }

// precheck checks the set flags that need no cluster to check.
func precheck(a *args, set map[string]bool) error {
	if set["amount"] {
		if _, err := parseDecimal("amount", a.amount); err != nil {
			return err
		}
	}
	if set["max-balance"] {
		if _, err := parseDecimal("max-balance", a.maxBalance); err != nil {
			return err
		}
	}
	if set["scale"] && a.scale > ledger.MaxScale {
		return usageErr("--scale %d is above the maximum %d", a.scale, ledger.MaxScale)
	}
	if set["limit"] && a.limit <= 0 {
		return usageErr("--limit must be positive, got %d", a.limit)
	}
	if set["ttl"] {
		if ms := a.ttl.Milliseconds(); ms <= 0 || ms > ledger.MaxHoldTTLMs {
			return usageErr("--ttl %s is outside (0, %s]", a.ttl, time.Duration(ledger.MaxHoldTTLMs)*time.Millisecond)
		}
	}
	return nil
}

func parseDecimal(flagName, s string) (decimal.Decimal, error) {
	d, err := decimal.NewFromString(s)
	if err != nil || strings.ContainsAny(s, "eE") {
		return decimal.Zero, usageErr("%s: --%s %q is not a decimal number", ledger.CodeInvalidAmount, flagName, s)
	}
	return d, nil
}

func newKey() string {
	var b [keyRandomBytes]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return "ctl-" + hex.EncodeToString(b[:])
}

// run is tallyctl: args without the program name; it returns the exit status.
func run(argv []string, stdout, stderr io.Writer) int {
	g := globals{addrs: defaultAddrs, timeout: defaultTimeout}
	g.tls.FromEnv()
	top := flag.NewFlagSet("tallyctl", flag.ContinueOnError)
	top.SetOutput(stderr)
	g.register(top)
	top.Usage = func() { usage(stderr, top) }
	if err := top.Parse(argv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	rest := top.Args()
	if len(rest) == 0 {
		usage(stderr, top)
		return exitUsage
	}
	if rest[0] == "help" {
		usage(stdout, top)
		return exitOK
	}
	var cmd *command
	for _, c := range commands() {
		if c.name == rest[0] {
			cmd = &c
			break
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "tallyctl: unknown command %q (see tallyctl help)\n", rest[0])
		return exitUsage
	}

	var a args
	fs := flag.NewFlagSet("tallyctl "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cmd.flags(fs, &a)
	if cmd.mutating {
		fs.StringVar(&a.key, "key", "", "idempotency key (default: a random one, printed)")
	}
	g.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: tallyctl [global flags] %s [flags]\n%s\n\nflags:\n", cmd.name, cmd.synopsis)
		fs.PrintDefaults()
	}
	if err := fs.Parse(rest[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tallyctl %s: unexpected arguments %q\n", cmd.name, fs.Args())
		return exitUsage
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	timeoutSet := set["timeout"]
	top.Visit(func(f *flag.Flag) { timeoutSet = timeoutSet || f.Name == "timeout" })
	// Finding the cluster is bounded as for any command: a long command's
	// own bound is for its transfer, not for a node that is down or a
	// certificate that is refused (found by review: backup waited 30 min).
	dialTimeout := g.timeout
	if cmd.timeout > 0 && !timeoutSet {
		g.timeout = cmd.timeout
	}
	var missing []string
	for _, name := range cmd.required {
		if !set[name] {
			missing = append(missing, "--"+name)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(stderr, "tallyctl %s: missing %s\n", cmd.name, strings.Join(missing, ", "))
		return exitUsage
	}
	if g.timeout <= 0 {
		fmt.Fprintf(stderr, "tallyctl: --timeout must be positive\n")
		return exitUsage
	}
	// The commands check their flags again; checking the common ones before
	// dialing makes bad input exit 2 with its own message even when the
	// cluster is down, instead of UNAVAILABLE and a retry hint.
	if err := precheck(&a, set); err != nil {
		fmt.Fprintf(stderr, "tallyctl %s: %v\n", cmd.name, err)
		return exitUsage
	}
	if cmd.mutating && a.key == "" {
		a.key, a.keyGenerated = newKey(), true
	}

	if err := g.tls.Check(); err != nil {
		fmt.Fprintf(stderr, "tallyctl %s: %v\n", cmd.name, err)
		return exitUsage
	}

	addrs := splitAddrs(g.addrs)
	if cmd.dial != nil {
		addrs = cmd.dial(g, &a)
	}
	if len(addrs) == 0 && cmd.local == nil {
		fmt.Fprintf(stderr, "tallyctl: --addr names no address\n")
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	defer cancel()

	var v view
	var err error
	if cmd.prepare != nil {
		err = cmd.prepare(&a)
	}
	if cmd.local != nil {
		v, err = cmd.local(&a)
	} else if err == nil {
		var c *client.Client
		var tlsCfg *tls.Config
		if tlsCfg, err = g.tls.Client(); err == nil {
			c, err = client.Dial(ctx, client.Config{Addrs: addrs, DialTimeout: dialTimeout,
				RequestTimeout: min(g.timeout, client.DefaultRequestTimeout), TLS: tlsCfg})
		}
		if err == nil {
			v, err = cmd.do(ctx, c, &a)
			_ = c.Close()
		}
	}
	if v != nil {
		if perr := printView(stdout, v, g.json); perr != nil {
			fmt.Fprintf(stderr, "tallyctl: writing output: %v\n", perr)
			return exitError
		}
	}
	if err == nil {
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "tallyctl %s: %v\n", cmd.name, err)
		return exitUsage
	}
	if v == nil && g.json {
		_ = printView(stdout, newErrorView(err, &a), true)
	}
	fmt.Fprintf(stderr, "tallyctl: %v\n", err)
	if client.IsIndeterminate(err) && cmd.name == "batch" {
		// Every line has its own key: the same file settles it.
		fmt.Fprintf(stderr, "tallyctl: operations marked unknown may or may not have applied; re-run the same batch file unchanged to settle them (each applies once, or replays its stored outcome; an UNAVAILABLE answer settles nothing: run it again)\n")
	} else if client.IsIndeterminate(err) {
		// Not "tallyctl op": its "not found" is not final while an attempt
		// may still apply; a re-send with the key settles it either way.
		fmt.Fprintf(stderr, "tallyctl: the operation may or may not have applied; re-run the same command with --key %s to settle it (it applies once, or replays the stored outcome; an UNAVAILABLE answer settles nothing: run it again)\n",
			a.key)
	} else if a.keyGenerated && worthRetrying(err) {
		fmt.Fprintf(stderr, "tallyctl: idempotency key was %s; re-run with --key %s to retry safely\n", a.key, a.key)
	}
	return exitError
}

// worthRetrying reports whether re-running the command with the same key
// could succeed: the cluster was unreachable, the outcome is unknown, or the
// ledger deferred the operation (an op answered UNAVAILABLE, not recorded,
// while its shard releases expired holds), as opposed to a request or an
// operation the ledger refused.
func worthRetrying(err error) bool {
	if client.IsIndeterminate(err) {
		return true
	}
	switch client.CodeOf(err) {
	case ledger.CodeUnavailable:
		return true
	case ledger.CodeNotLeader, ledger.CodeInternal:
		return isRequestError(err)
	}
	return false
}

// isRequestError tells a failed request (worth a retry with the same key)
// from an operation the ledger refused (its result was printed).
func isRequestError(err error) bool {
	var e *client.Error
	return errors.As(err, &e)
}

func splitAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

func usage(w io.Writer, top *flag.FlagSet) {
	fmt.Fprintf(w, "usage: tallyctl [--addr A,B,C] [--json] [--timeout 5s] <command> [flags]\n\ncommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-13s %s\n", c.name, c.synopsis)
	}
	fmt.Fprintf(w, "\nRun \"tallyctl <command> --help\" for a command's flags. Mutating commands take\n--key (idempotency key; a random one is generated and printed when absent).\n\nglobal flags:\n")
	top.SetOutput(w)
	top.PrintDefaults()
}
