package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ops.json")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
	return p
}

func TestBatchLinked(t *testing.T) {
	f := startFake(t)
	path := writeFile(t, `{"kind":"credit","program":"shop","member":"alice","asset":"CNY","amount":"50.00","key":"b1"}
{"kind":"HOLD","program":"shop","member":"alice","asset":"CNY","amount":"20","ttl":"10m","key":"b2"}
`)
	code, stdout, stderr := tallyctl(t, f, "batch", "--file", path, "--linked")
	require.Equal(t, exitOK, code, stderr)
	req := f.lastSubmit()
	require.NotNil(t, req)
	assert.True(t, req.Linked)
	require.Len(t, req.Ops, 2)
	assert.Equal(t, tallypb.OpKind_CREDIT, req.Ops[0].Kind)
	assert.Equal(t, tallypb.OpKind_HOLD, req.Ops[1].Kind)
	assert.Equal(t, int64(600000), req.Ops[1].HoldTtlMs)
	assert.Regexp(t, `(?m)^0\s+b1\s+CREDIT\s+OK`, stdout)
	assert.Regexp(t, `(?m)^1\s+b2\s+HOLD\s+OK`, stdout)
}

func TestBatchArrayAndErrors(t *testing.T) {
	f := startFake(t)
	ok := writeFile(t, `[{"kind":"CREDIT","program":"shop","member":"bob","asset":"CNY","amount":"1","key":"d1"}]`)
	code, _, stderr := tallyctl(t, f, "batch", "--file", ok)
	require.Equal(t, exitOK, code, stderr)
	require.False(t, f.lastSubmit().Linked)

	for name, body := range map[string]string{
		"no key":        `{"kind":"CREDIT","program":"shop","member":"bob","asset":"CNY","amount":"1"}`,
		"unknown kind":  `{"kind":"STEAL","program":"shop","member":"bob","asset":"CNY","amount":"1","key":"k"}`,
		"bad amount":    `{"kind":"CREDIT","program":"shop","member":"bob","asset":"CNY","amount":"1e3","key":"k"}`,
		"bad ttl":       `{"kind":"HOLD","program":"shop","member":"bob","asset":"CNY","amount":"1","ttl":"soon","key":"k"}`,
		"empty":         ``,
		"not json":      `credit alice 5`,
		"unknown field": `{"kind":"CREDIT","program":"shop","member":"bob","asset":"CNY","amout":"1","key":"k"}`,
	} {
		code, _, stderr := tallyctl(t, f, "batch", "--file", writeFile(t, body))
		assert.Equal(t, exitUsage, code, "%s: %s", name, stderr)
	}
}

// TestBatchRefusalsExitNonZero: a batch whose operations were refused
// (here a linked one that applied nothing) exits 1, as a single refused
// operation does, and still prints every result.
func TestBatchRefusalsExitNonZero(t *testing.T) {
	f := startFake(t)
	path := writeFile(t, `{"kind":"CREDIT","program":"shop","member":"dave","asset":"CNY","amount":"1","key":"r1"}
{"kind":"DEBIT","program":"shop","member":"dave","asset":"CNY","amount":"5","key":"r2"}
`)
	code, stdout, stderr := tallyctl(t, f, "batch", "--file", path)
	assert.Equal(t, exitError, code, stderr)
	assert.Contains(t, stderr, "1 of 2 operations did not apply (first: op 1, INSUFFICIENT_FUNDS)")
	assert.Regexp(t, `(?m)^0\s+r1\s+CREDIT\s+OK`, stdout)
	assert.Regexp(t, `(?m)^1\s+r2\s+DEBIT\s+INSUFFICIENT_FUNDS`, stdout)
}

// TestBatchMistakesCaughtBeforeSending: a capture whose amount is zero or
// empty (which the wire reads as "the whole hold"), a key used twice and a
// linked batch over two members are command-line mistakes: exit 2, nothing
// sent. A capture with no "amount" takes the whole hold, as `capture`
// without --amount does. (Found by review: "0.00" captured everything.)
func TestBatchMistakesCaughtBeforeSending(t *testing.T) {
	f := startFake(t)
	for name, tc := range map[string]struct {
		body   string
		linked bool
	}{
		"zero capture":  {body: `{"kind":"capture_hold","program":"shop","member":"m","hold_key":"h1","amount":"0.00","key":"c1"}`},
		"empty capture": {body: `{"kind":"capture_hold","program":"shop","member":"m","hold_key":"h1","amount":"","key":"c1"}`},
		"key twice": {body: `{"kind":"CREDIT","program":"shop","member":"bob","asset":"CNY","amount":"1","key":"k"}
{"kind":"CREDIT","program":"shop","member":"eve","asset":"CNY","amount":"2","key":"k"}`},
		"linked over two members": {body: `{"kind":"CREDIT","program":"shop","member":"bob","asset":"CNY","amount":"1","key":"k1"}
{"kind":"CREDIT","program":"shop","member":"eve","asset":"CNY","amount":"2","key":"k2"}`, linked: true},
	} {
		args := []string{"batch", "--file", writeFile(t, tc.body)}
		if tc.linked {
			args = append(args, "--linked")
		}
		code, _, stderr := tallyctl(t, f, args...)
		assert.Equal(t, exitUsage, code, "%s: %s", name, stderr)
		assert.Nil(t, f.lastSubmit(), name)
	}
	_, _, stderr := tallyctl(t, f, "batch", "--file",
		writeFile(t, `{"kind":"capture_hold","program":"shop","member":"m","hold_key":"h1","key":"c2"}`))
	require.NotNil(t, f.lastSubmit(), stderr)
	assert.Equal(t, "", f.lastSubmit().Ops[0].Amount, "no amount: the whole hold")
}

// TestBatchUnknownOutcome: a batch whose request ends with an unknown
// outcome marks its ops unknown and says to re-send the same file (there
// is no --key to name).
func TestBatchUnknownOutcome(t *testing.T) {
	f := startFake(t)
	f.hang = true
	path := writeFile(t, `{"kind":"CREDIT","program":"shop","member":"bob","asset":"CNY","amount":"1","key":"u1"}`)
	code, stdout, stderr := tallyctl(t, f, "--timeout", "1s", "--json", "batch", "--file", path)
	assert.Equal(t, exitError, code)
	assert.Contains(t, stderr, "re-run the same batch file unchanged")
	assert.NotContains(t, stderr, "--key  ")
	assert.Contains(t, stdout, `"indeterminate": true`)
}

// TestUnknownOpsMarksOnlyUnknownParts: a batch over two shards whose one
// part ended unknown and the other with a definite failure marks only the
// first part's ops (review: the definite part's were marked too).
func TestUnknownOpsMarksOnlyUnknownParts(t *testing.T) {
	var ops []client.Op
	var shards [2]int // ops per shard
	for i := 0; len(ops) < 4; i++ {
		m := fmt.Sprintf("m%d", i)
		s := ledger.ShardOf("shop", m, 2)
		if shards[s] == 2 {
			continue
		}
		shards[s]++
		ops = append(ops, client.Op{Program: "shop", Member: m})
	}
	err := errors.Join(
		&client.Error{Code: ledger.CodeUnavailable, Shard: 0, OpIndex: -1, Indeterminate: true},
		&client.Error{Code: ledger.CodeUnavailable, Shard: 1, OpIndex: -1, Err: context.DeadlineExceeded})
	got := unknownOps(err, ops, 2)
	for i, op := range ops {
		assert.Equal(t, ledger.ShardOf("shop", op.Member, 2) == 0, got[i], "op %d on shard %d", i, ledger.ShardOf("shop", op.Member, 2))
	}
	assert.Nil(t, unknownOps(errors.Join(&client.Error{Code: ledger.CodeInvalidArgument, Shard: 1, OpIndex: 0}), ops, 2))
}

// A batch file that says something other than what encoding/json would
// send is refused before anything is sent (found by review): a stray "]"
// used to end the file there, a field given twice (or in other case) kept
// the last value, and "amount": null on a capture took the whole hold.
func TestBatchRefusesAmbiguousFiles(t *testing.T) {
	credit := `{"kind":"CREDIT","program":"s","member":"b","asset":"CNY","amount":"1","key":"k1"}`
	debit := `{"kind":"DEBIT","program":"s","member":"b","asset":"CNY","amount":"1","key":"k2"}`
	for name, body := range map[string]string{
		"stray ] between lines":  credit + "\n]\n" + debit,
		"stray } between lines":  credit + "\n}\n" + debit,
		"data after the array":   "[" + credit + "]]" + debit,
		"field twice":            `{"kind":"CREDIT","program":"s","member":"b","asset":"CNY","amount":"1.00","amount":"100.00","key":"k"}`,
		"field in other case":    `{"kind":"CREDIT","program":"s","member":"b","asset":"CNY","amount":"1.00","AMOUNT":"100.00","key":"k"}`,
		"null capture amount":    `{"kind":"CAPTURE_HOLD","program":"s","member":"b","hold_key":"h","amount":null,"key":"k"}`,
		"not an object":          `["CREDIT"]`,
		"array of non-objects":   `[1, 2]`,
		"unknown field in array": `[{"kind":"CREDIT","program":"s","member":"b","asset":"CNY","amout":"1","key":"k"}]`,
	} {
		t.Run(name, func(t *testing.T) {
			f := startFake(t)
			code, _, stderr := tallyctl(t, f, "batch", "--file", writeFile(t, body))
			require.Equal(t, exitUsage, code, stderr)
			require.Nil(t, f.lastSubmit(), "nothing may be sent")
		})
	}
	// The same ops, well formed, in both layouts, go through.
	for _, body := range []string{credit + "\n" + debit + "\n", "[" + credit + ",\n" + debit + "]"} {
		f := startFake(t)
		code, stdout, stderr := tallyctl(t, f, "batch", "--file", writeFile(t, body))
		require.Equal(t, 0, code, stdout+stderr)
		require.Len(t, f.lastSubmit().GetOps(), 2)
	}
}

// A bad batch file is a usage error (exit 2) whether or not the cluster
// answers: the file is read before the cluster is dialed.
func TestBatchFileCheckedBeforeDialing(t *testing.T) {
	// Nothing listens on port 1; the dial would fail with exit 1.
	code, _, stderr := tallyctl(t, nil, "--addr", "127.0.0.1:1", "batch", "--file", writeFile(t, `{"kind":"CREDIT","amout":"1"}`))
	require.Equal(t, exitUsage, code, stderr)
	require.Contains(t, stderr, "amout")
}
