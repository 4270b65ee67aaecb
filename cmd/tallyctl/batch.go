package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

// batchOp is one line of a batch file: JSON, one object per line (or one
// JSON array). Kinds are the API's names: CREDIT, DEBIT, HOLD, ...
type batchOp struct {
	Kind       string `json:"kind"`
	Program    string `json:"program"`
	Member     string `json:"member"`
	Asset      string `json:"asset"`
	Key        string `json:"key"`
	Amount     string `json:"amount"`
	HoldKey    string `json:"hold_key"`
	TTL        string `json:"ttl"`
	MaxBalance string `json:"max_balance"`
	Memo       string `json:"memo"`
}

func kindOf(name string) (ledger.OpKind, bool) {
	for k := ledger.OpOpenAccount; k <= ledger.OpClose; k++ {
		if k.String() == strings.ToUpper(name) {
			return k, true
		}
	}
	return ledger.OpUnknown, false
}

func toClientOps(raw []batchOp) ([]client.Op, error) {
	if len(raw) == 0 {
		return nil, usageErr("batch file has no operations")
	}
	if len(raw) > ledger.MaxBatchOps {
		return nil, usageErr("batch has %d operations, at most %d", len(raw), ledger.MaxBatchOps)
	}
	ops := make([]client.Op, len(raw))
	for i, b := range raw {
		kind, ok := kindOf(b.Kind)
		if !ok {
			return nil, usageErr("op %d: unknown kind %q", i, b.Kind)
		}
		if b.Key == "" {
			return nil, usageErr("op %d: \"key\" (idempotency key) is required in a batch", i)
		}
		op := client.Op{Kind: kind, Program: b.Program, Member: b.Member, Asset: b.Asset, IdempotencyKey: b.Key,
			HoldKey: b.HoldKey, Memo: b.Memo}
		if b.Amount != "" {
			d, err := parseDecimal(fmt.Sprintf("op %d amount", i), b.Amount)
			if err != nil {
				return nil, err
			}
			op.Amount = d
		}
		if b.MaxBalance != "" {
			d, err := parseDecimal(fmt.Sprintf("op %d max_balance", i), b.MaxBalance)
			if err != nil {
				return nil, err
			}
			op.MaxBalance = &d
		}
		if b.TTL != "" {
			ttl, err := time.ParseDuration(b.TTL)
			if err != nil {
				return nil, usageErr("op %d: ttl %q: %v", i, b.TTL, err)
			}
			op.HoldTTL = ttl
		}
		ops[i] = op
	}
	return ops, nil
}

// readBatchFile reads a batch: JSON objects one per line, or one JSON array,
// from path ("-" = stdin). Every op needs its own key: a batch is retried as
// a whole, so generated keys would defeat dedup.
func readBatchFile(path string, stdin io.Reader) ([]client.Op, error) {
	var r io.Reader = stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, usageErr("%v", err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, 64<<20))
	if err != nil {
		return nil, usageErr("%v", err)
	}
	trimmed := strings.TrimSpace(string(data))
	var raw []batchOp
	// Unknown fields are refused: a misspelt "amout" would otherwise send
	// an operation without the amount meant.
	dec := json.NewDecoder(strings.NewReader(trimmed))
	dec.DisallowUnknownFields()
	if strings.HasPrefix(trimmed, "[") {
		if err := dec.Decode(&raw); err != nil {
			return nil, usageErr("batch file: %v", err)
		}
		if dec.More() {
			return nil, usageErr("batch file: data after the array")
		}
		return toClientOps(raw)
	}
	for dec.More() {
		var b batchOp
		if err := dec.Decode(&b); err != nil {
			return nil, usageErr("batch file: %v", err)
		}
		raw = append(raw, b)
	}
	return toClientOps(raw)
}

type batchView struct {
	ops     []client.Op
	results []client.Result
}

func (v batchView) jsonValue() any {
	out := make([]resultJSON, len(v.results))
	for i, r := range v.results {
		out[i] = toResultJSON(v.ops[i].IdempotencyKey, r)
	}
	return out
}

func (v batchView) text(w io.Writer) {
	fmt.Fprintf(w, "#\tKEY\tKIND\tCODE\tREPLAYED\tPOSTED\tAVAILABLE\n")
	for i, r := range v.results {
		posted, avail := "-", "-"
		if r.Account != nil {
			posted = r.Account.Posted.StringFixed(int32(r.Account.Scale))
			avail = r.Account.Available.StringFixed(int32(r.Account.Scale))
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%v\t%s\t%s\n", i, v.ops[i].IdempotencyKey, v.ops[i].Kind, r.Code, r.Replayed, posted, avail)
	}
}

func batchCommand(stdin io.Reader) command {
	var file string
	var linked bool
	return command{
		name: "batch", synopsis: "submit many operations at once (JSON lines or array; --linked: one member, all or none)",
		flags: func(fs *flag.FlagSet, a *args) {
			fs.StringVar(&file, "file", "-", "batch file, - for standard input")
			fs.BoolVar(&linked, "linked", false, "apply all or none (all ops on one member)")
		},
		do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
			ops, err := readBatchFile(file, stdin)
			if err != nil {
				return nil, err
			}
			results, err := c.Submit(ctx, ops, linked)
			if len(results) != len(ops) {
				return nil, err
			}
			if err == nil {
				// Exit 1, as a single refused operation does: a script
				// must not read a batch with refusals (or a linked batch
				// that applied nothing) as a success.
				failed, first := 0, -1
				for i, r := range results {
					if r.Code != ledger.CodeOK {
						failed++
						if first < 0 {
							first = i
						}
					}
				}
				if failed > 0 {
					err = fmt.Errorf("%d of %d operations did not apply (first: op %d, %s)", failed, len(ops), first, results[first].Code)
				}
			}
			return batchView{ops: ops, results: results}, err
		},
	}
}
