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
	Kind       string  `json:"kind"`
	Program    string  `json:"program"`
	Member     string  `json:"member"`
	Asset      string  `json:"asset"`
	Key        string  `json:"key"`
	Amount     *string `json:"amount"` // nil: absent (a capture of the whole hold)
	HoldKey    string  `json:"hold_key"`
	TTL        string  `json:"ttl"`
	MaxBalance string  `json:"max_balance"`
	Memo       string  `json:"memo"`
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
	seen := make(map[string]bool, len(raw))
	for i, b := range raw {
		kind, ok := kindOf(b.Kind)
		if !ok {
			return nil, usageErr("op %d: unknown kind %q", i, b.Kind)
		}
		if b.Key == "" {
			return nil, usageErr("op %d: \"key\" (idempotency key) is required in a batch", i)
		}
		if seen[b.Key] {
			return nil, usageErr("op %d: key %q is used twice in the batch", i, b.Key)
		}
		seen[b.Key] = true
		op := client.Op{Kind: kind, Program: b.Program, Member: b.Member, Asset: b.Asset, IdempotencyKey: b.Key,
			HoldKey: b.HoldKey, Memo: b.Memo}
		if kind == ledger.OpCaptureHold && b.Amount != nil {
			// A zero amount on the wire means the whole hold: a "0",
			// "0.00" or "" written here must not capture all of it.
			d, err := parseDecimal(fmt.Sprintf("op %d amount", i), *b.Amount)
			if err != nil {
				return nil, err
			}
			if !d.IsPositive() {
				return nil, usageErr("op %d: a capture's amount must be positive; leave \"amount\" out to capture the whole hold", i)
			}
			op.Amount = d
		} else if b.Amount != nil && *b.Amount != "" {
			d, err := parseDecimal(fmt.Sprintf("op %d amount", i), *b.Amount)
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
			if ms := ttl.Milliseconds(); ms <= 0 || ms > ledger.MaxHoldTTLMs {
				return nil, usageErr("op %d: ttl %s is outside (0, %s]", i, ttl, time.Duration(ledger.MaxHoldTTLMs)*time.Millisecond)
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
	// Each object is read as raw JSON until the end of the input (a
	// decoder's More stops quietly at a stray "]" or "}", which cut the
	// rest of a file off), then checked field by field before decoding.
	var objs []json.RawMessage
	dec := json.NewDecoder(strings.NewReader(trimmed))
	if strings.HasPrefix(trimmed, "[") {
		if _, err := dec.Token(); err != nil {
			return nil, usageErr("batch file: %v", err)
		}
		for dec.More() {
			var m json.RawMessage
			if err := dec.Decode(&m); err != nil {
				return nil, usageErr("batch file: %v", err)
			}
			objs = append(objs, m)
		}
		if _, err := dec.Token(); err != nil { // the closing "]"
			return nil, usageErr("batch file: %v", err)
		}
		if _, err := dec.Token(); err != io.EOF {
			return nil, usageErr("batch file: data after the array")
		}
	} else {
		for {
			var m json.RawMessage
			err := dec.Decode(&m)
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, usageErr("batch file: %v", err)
			}
			objs = append(objs, m)
		}
	}
	raw := make([]batchOp, len(objs))
	for i, m := range objs {
		if err := decodeBatchOp(m, &raw[i]); err != nil {
			return nil, usageErr("batch file: op %d: %v", i, err)
		}
	}
	return toClientOps(raw)
}

// batchFields are the names a batch line may use, exactly as written.
var batchFields = map[string]bool{"kind": true, "program": true, "member": true, "asset": true, "key": true,
	"amount": true, "hold_key": true, "ttl": true, "max_balance": true, "memo": true}

// decodeBatchOp decodes one batch object strictly. encoding/json matches
// names case-insensitively and keeps the last of repeated ones, and takes
// null as "absent": so "amount":"1.00","AMOUNT":"100.00" credited 100, and
// "amount":null on a capture took the whole hold. Here a name must be one
// of batchFields exactly, once, and no value may be null; so unknown names
// are refused too (a misspelt "amout" would send an op without its amount).
func decodeBatchOp(m json.RawMessage, b *batchOp) error {
	dec := json.NewDecoder(strings.NewReader(string(m)))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return fmt.Errorf("not a JSON object")
	}
	seen := make(map[string]bool, len(batchFields))
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		name, _ := t.(string)
		switch {
		case !batchFields[name]:
			return fmt.Errorf("unknown field %q", name)
		case seen[name]:
			return fmt.Errorf("field %q given twice", name)
		}
		seen[name] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return err
		}
		if string(v) == "null" {
			return fmt.Errorf("field %q is null (leave it out instead)", name)
		}
	}
	return json.Unmarshal(m, b)
}

type batchView struct {
	ops     []client.Op
	results []client.Result
	unknown []bool // per op: its outcome is unknown (nil: none is)
}

func (v batchView) isUnknown(i int) bool { return v.unknown != nil && v.unknown[i] }

func (v batchView) jsonValue() any {
	out := make([]resultJSON, len(v.results))
	for i, r := range v.results {
		out[i] = toResultJSON(v.ops[i].IdempotencyKey, r)
		out[i].Indeterminate = v.isUnknown(i)
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
		code := string(r.Code)
		if v.isUnknown(i) {
			code += " (outcome unknown)"
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%v\t%s\t%s\n", i, v.ops[i].IdempotencyKey, v.ops[i].Kind, code, r.Replayed, posted, avail)
	}
}

func batchCommand(stdin io.Reader) command {
	var file string
	var linked bool
	var ops []client.Op // read by prepare, before the cluster is dialed
	return command{
		name: "batch", synopsis: "submit many operations at once (JSON lines or array; --linked: one member, all or none)",
		flags: func(fs *flag.FlagSet, a *args) {
			fs.StringVar(&file, "file", "-", "batch file, - for standard input")
			fs.BoolVar(&linked, "linked", false, "apply all or none (all ops on one member)")
		},
		prepare: func(a *args) error {
			var err error
			if ops, err = readBatchFile(file, stdin); err != nil {
				return err
			}
			if linked {
				for i, op := range ops {
					if op.Program != ops[0].Program || op.Member != ops[0].Member {
						return usageErr("op %d: a linked batch is on one member (%s/%s), not %s/%s", i, ops[0].Program, ops[0].Member, op.Program, op.Member)
					}
				}
			}
			return nil
		},
		do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
			results, err := c.Submit(ctx, ops, linked)
			if len(results) != len(ops) {
				return nil, err
			}
			unknown := unknownOps(err, ops, c.Shards())
			// The results say it per op too (Result.Indeterminate): an op
			// whose result could not be read is one.
			for i, r := range results {
				if r.Indeterminate {
					if unknown == nil {
						unknown = make([]bool, len(ops))
					}
					unknown[i] = true
				}
			}
			if err == nil {
				// Exit 1, as a single refused operation does: a script
				// must not read a batch with refusals (or a linked batch
				// that applied nothing) as a success.
				// An op can be indeterminate with no error: answered
				// UNAVAILABLE (not recorded) after an attempt whose
				// outcome is unknown, which may still apply it.
				failed, open, first := 0, 0, -1
				for i, r := range results {
					switch {
					case r.Code == ledger.CodeOK:
					case r.Indeterminate:
						open++
					default:
						failed++
						if first < 0 {
							first = i
						}
					}
				}
				switch {
				case failed > 0 && open > 0:
					err = fmt.Errorf("%d of %d operations did not apply (first: op %d, %s), and %d may or may not have: re-run with the same keys until each gets an answer other than UNAVAILABLE",
						failed, len(ops), first, results[first].Code, open)
				case failed > 0:
					err = fmt.Errorf("%d of %d operations did not apply (first: op %d, %s)", failed, len(ops), first, results[first].Code)
				case open > 0:
					err = fmt.Errorf("%d of %d operations may or may not have applied: re-run with the same keys until each gets an answer other than UNAVAILABLE", open, len(ops))
				}
			}
			return batchView{ops: ops, results: results, unknown: unknown}, err
		},
	}
}

// unknownOps marks the ops whose outcome err leaves unknown: those of a
// shard whose part failed indeterminately (the *client.Error says so and
// names its shard; shard -1 covers every op).
func unknownOps(err error, ops []client.Op, shards int) []bool {
	if err == nil || !client.IsIndeterminate(err) {
		return nil
	}
	all := false
	parts := map[int]bool{}
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case *client.Error:
			if e.Indeterminate {
				if e.Shard < 0 {
					all = true
				}
				parts[e.Shard] = true
			} else if e.Err != nil && client.IsIndeterminate(e.Err) {
				walk(e.Err)
			}
		case interface{ Unwrap() []error }:
			for _, inner := range e.Unwrap() {
				walk(inner)
			}
		case interface{ Unwrap() error }:
			walk(e.Unwrap())
		}
		// Anything else is no *client.Error, which alone can say
		// "indeterminate" (client.IsIndeterminate): a definite failure.
	}
	walk(err)
	out := make([]bool, len(ops))
	for i, op := range ops {
		out[i] = all || shards <= 0 || parts[ledger.ShardOf(op.Program, op.Member, shards)]
	}
	return out
}
