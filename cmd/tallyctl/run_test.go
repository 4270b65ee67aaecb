package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/internal/tlsfiles"
	"github.com/tally-ledger/tally/ledger"
)

// tallyctl runs the CLI against f and returns exit status, stdout, stderr.
func tallyctl(t *testing.T, f *fakeLedger, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	full := append([]string{"--timeout", "5s"}, args...)
	if f != nil {
		full = append([]string{"--addr", f.addr}, full...)
	}
	code := run(full, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// field returns the value of an aligned "name  value" line.
func field(t *testing.T, out, name string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\s{2,}(.*)$`)
	m := re.FindStringSubmatch(out)
	require.NotNil(t, m, "no %q line in:\n%s", name, out)
	return strings.TrimSpace(m[1])
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "usage: tallyctl"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"missing flags", []string{"credit", "--program", "p"}, "missing --member, --asset, --amount"},
		{"bad amount", []string{"credit", "--program", "p", "--member", "m", "--asset", "A", "--amount", "12,50"}, "INVALID_AMOUNT"},
		{"exponent amount", []string{"debit", "--program", "p", "--member", "m", "--asset", "A", "--amount", "1e3"}, "INVALID_AMOUNT"},
		{"unknown flag", []string{"get", "--colour"}, "flag provided but not defined: -colour"},
		{"stray argument", []string{"cluster", "extra"}, "unexpected arguments"},
		{"bad limit", []string{"journal", "--program", "p", "--member", "m", "--limit", "0"}, "--limit must be positive"},
		{"bad scale", []string{"define-asset", "--program", "p", "--asset", "X", "--scale", "19"}, "--scale 19"},
		// Zero is the API's "whole hold"; typed out it must be refused.
		{"zero capture", []string{"capture", "--program", "p", "--member", "m", "--hold-key", "h", "--amount", "0"}, "INVALID_AMOUNT"},
		{"negative capture", []string{"capture", "--program", "p", "--member", "m", "--hold-key", "h", "--amount", "-1"}, "not positive"},
		{"negative ttl", []string{"hold", "--program", "p", "--member", "m", "--asset", "A", "--amount", "1", "--ttl", "-1m"}, "--ttl -1m0s is outside"},
		{"ttl too long", []string{"hold", "--program", "p", "--member", "m", "--asset", "A", "--amount", "1", "--ttl", "2400h"}, "--ttl 2400h0m0s is outside"},
	}
	f := startFake(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := tallyctl(t, f, tt.args...)
			assert.Equal(t, exitUsage, code)
			assert.Empty(t, stdout)
			assert.Contains(t, stderr, tt.want)
		})
	}
	assert.Empty(t, f.submits, "usage errors send nothing")

	code, stdout, _ := tallyctl(t, nil, "help")
	assert.Equal(t, exitOK, code)
	assert.Contains(t, stdout, "define-asset")
	assert.Contains(t, stdout, "state")
}

func TestCreditText(t *testing.T) {
	f := startFake(t)
	code, stdout, stderr := tallyctl(t, f, "credit", "--program", "shop", "--member", "alice", "--asset", "CNY",
		"--amount", "12.50", "--memo", "spring sale", "--key", "k1")
	require.Equal(t, exitOK, code, stderr)
	assert.Equal(t, "k1", field(t, stdout, "key"))
	assert.Equal(t, "OK", field(t, stdout, "code"))
	assert.Equal(t, "12.50", field(t, stdout, "posted"))
	assert.Equal(t, "shop/alice/CNY", field(t, stdout, "account"))
	assert.Equal(t, "2023-11-14T22:13:20.000Z", field(t, stdout, "time"))
	// Values are aligned in one column.
	assert.Regexp(t, `(?m)^key {10}k1$`, stdout)
	assert.Regexp(t, `(?m)^available {4}12\.50$`, stdout)

	req := f.lastSubmit()
	require.NotNil(t, req)
	require.Len(t, req.Ops, 1)
	op := req.Ops[0]
	assert.Equal(t, tallypb.OpKind_CREDIT, op.Kind)
	assert.Equal(t, "12.5", op.Amount)
	assert.Equal(t, "spring sale", op.Memo)
	assert.Equal(t, "k1", op.IdempotencyKey)

	// Same key again: a replay, still exit 0.
	code, stdout, _ = tallyctl(t, f, "credit", "--program", "shop", "--member", "alice", "--asset", "CNY", "--amount", "12.50", "--key", "k1")
	assert.Equal(t, exitOK, code)
	assert.Contains(t, field(t, stdout, "replayed"), "true")
	assert.Equal(t, "12.50", field(t, stdout, "posted"))
}

func TestGeneratedKeyIsPrinted(t *testing.T) {
	f := startFake(t)
	code, stdout, stderr := tallyctl(t, f, "open", "--program", "shop", "--member", "bob", "--asset", "CNY", "--max-balance", "1000")
	require.Equal(t, exitOK, code, stderr)
	key := field(t, stdout, "key")
	assert.Regexp(t, `^ctl-[0-9a-f]{32}$`, key)
	assert.Equal(t, key, f.lastSubmit().Ops[0].IdempotencyKey)
	assert.Equal(t, "1000", f.lastSubmit().Ops[0].MaxBalance)
	assert.Equal(t, "1000.00", field(t, stdout, "max balance"))
}

func TestOpFailureExitsNonZero(t *testing.T) {
	f := startFake(t)
	code, stdout, stderr := tallyctl(t, f, "debit", "--program", "shop", "--member", "carol", "--asset", "CNY", "--amount", "3", "--key", "d1")
	assert.Equal(t, exitError, code)
	assert.Equal(t, "INSUFFICIENT_FUNDS", field(t, stdout, "code"), "the refused result is still shown")
	assert.Contains(t, stderr, "tallyctl: INSUFFICIENT_FUNDS: available 0.00")
	assert.NotContains(t, stderr, "retry", "a refusal is final: no retry hint")

	code, stdout, stderr = tallyctl(t, f, "--json", "credit", "--program", "shop", "--member", "carol", "--asset", "CNY", "--amount", "-3")
	assert.Equal(t, exitError, code)
	assert.Contains(t, stderr, "INVALID_AMOUNT")
	var out struct {
		Error struct {
			Code          string `json:"code"`
			Indeterminate bool   `json:"indeterminate"`
			Key           string `json:"key"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &out), stdout)
	assert.Equal(t, "INVALID_AMOUNT", out.Error.Code)
	assert.False(t, out.Error.Indeterminate)
	assert.Regexp(t, `^ctl-`, out.Error.Key)
	assert.NotContains(t, stderr, "re-run", "a rejected request needs a fix, not a retry")
}

func TestUnreachableCluster(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := lis.Addr().String()
	require.NoError(t, lis.Close())
	var stdout, stderr bytes.Buffer
	code := run([]string{"--addr", dead, "--timeout", "300ms", "get", "--program", "p", "--member", "m", "--asset", "A"}, &stdout, &stderr)
	assert.Equal(t, exitError, code)
	assert.Contains(t, stderr.String(), "tallyctl: UNAVAILABLE")

	stdout.Reset()
	stderr.Reset()
	code = run([]string{"--addr", dead, "--timeout", "300ms", "credit", "--program", "p", "--member", "m", "--asset", "A", "--amount", "1"}, &stdout, &stderr)
	assert.Equal(t, exitError, code)
	assert.Regexp(t, `re-run with --key ctl-[0-9a-f]{32} to retry safely`, stderr.String())

	// backup's own bound (30 min) is for its transfer: finding no cluster
	// takes the usual 5 s (it took the 30 min; found by review).
	stderr.Reset()
	start := time.Now()
	code = run([]string{"--addr", dead, "backup", "--dir", filepath.Join(t.TempDir(), "b")}, &stdout, &stderr)
	assert.Equal(t, exitError, code)
	assert.Less(t, time.Since(start), 3*defaultTimeout, "backup of an unreachable cluster: %s", stderr.String())

	// Bad input is bad input whether or not the cluster answers.
	for _, args := range [][]string{
		{"credit", "--program", "p", "--member", "m", "--asset", "A", "--amount", "abc"},
		{"define-asset", "--program", "p", "--asset", "X", "--scale", "99"},
		{"journal", "--program", "p", "--member", "m", "--limit", "0"},
	} {
		stdout.Reset()
		stderr.Reset()
		code = run(append([]string{"--addr", dead, "--timeout", "300ms"}, args...), &stdout, &stderr)
		assert.Equal(t, exitUsage, code, "%v: %s", args, stderr.String())
		assert.NotContains(t, stderr.String(), "UNAVAILABLE")
	}
}

func TestGetJSON(t *testing.T) {
	f := startFake(t)
	code, _, stderr := tallyctl(t, f, "credit", "--program", "shop", "--member", "dave", "--asset", "CNY", "--amount", "7.5")
	require.Equal(t, exitOK, code, stderr)
	// Global flags work after the command name too.
	code, stdout, stderr := tallyctl(t, f, "get", "--program", "shop", "--member", "dave", "--asset", "CNY", "--json")
	require.Equal(t, exitOK, code, stderr)
	var acct map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &acct), stdout)
	assert.Equal(t, "7.50", acct["posted"])
	assert.Equal(t, "7.50", acct["available"])
	assert.Equal(t, "1000.00", acct["max_balance"])
	assert.Equal(t, "ACTIVE", acct["state"])
	assert.EqualValues(t, 2, acct["scale"])

	code, _, stderr = tallyctl(t, f, "get", "--program", "shop", "--member", "nobody", "--asset", "CNY")
	assert.Equal(t, exitError, code)
	assert.Contains(t, stderr, "ACCOUNT_NOT_FOUND")
}

func TestHoldCaptureRelease(t *testing.T) {
	f := startFake(t)
	code, stdout, stderr := tallyctl(t, f, "hold", "--program", "shop", "--member", "erin", "--asset", "CNY", "--amount", "5", "--ttl", "10m", "--key", "h1")
	require.Equal(t, exitOK, code, stderr)
	assert.Equal(t, int64(600000), f.lastSubmit().Ops[0].HoldTtlMs)
	assert.Equal(t, "h1", field(t, stdout, "hold"))
	assert.Equal(t, "5.00", field(t, stdout, "hold amount"))
	assert.Equal(t, "2023-11-14T22:23:20.000Z", field(t, stdout, "hold expires"))

	code, stdout, stderr = tallyctl(t, f, "--json", "capture", "--program", "shop", "--member", "erin", "--hold-key", "h1", "--key", "c1")
	require.Equal(t, exitOK, code, stderr)
	op := f.lastSubmit().Ops[0]
	assert.Equal(t, tallypb.OpKind_CAPTURE_HOLD, op.Kind)
	assert.Equal(t, "", op.Amount, "no --amount: the whole hold")
	assert.Equal(t, "h1", op.HoldKey)
	var res map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &res), stdout)
	assert.Equal(t, "5.00", res["captured"])
	assert.Equal(t, "c1", res["key"])

	code, _, stderr = tallyctl(t, f, "capture", "--program", "shop", "--member", "erin", "--hold-key", "h1", "--amount", "2.5")
	require.Equal(t, exitOK, code, stderr)
	assert.Equal(t, "2.5", f.lastSubmit().Ops[0].Amount)

	code, _, stderr = tallyctl(t, f, "release", "--program", "shop", "--member", "erin", "--hold-key", "h1")
	require.Equal(t, exitOK, code, stderr)
	assert.Equal(t, tallypb.OpKind_RELEASE_HOLD, f.lastSubmit().Ops[0].Kind)
}

func TestStateCommands(t *testing.T) {
	f := startFake(t)
	for cmd, kind := range map[string]tallypb.OpKind{
		"freeze": tallypb.OpKind_FREEZE, "unfreeze": tallypb.OpKind_UNFREEZE, "lost": tallypb.OpKind_REPORT_LOST,
		"found": tallypb.OpKind_REPORT_FOUND, "close": tallypb.OpKind_CLOSE,
	} {
		code, _, stderr := tallyctl(t, f, cmd, "--program", "shop", "--member", "fay", "--asset", "CNY", "--key", cmd+"-1")
		require.Equal(t, exitOK, code, "%s: %s", cmd, stderr)
		op := f.lastSubmit().Ops[0]
		assert.Equal(t, kind, op.Kind, cmd)
		assert.Equal(t, "fay", op.Member)
		assert.Equal(t, cmd+"-1", op.IdempotencyKey)
	}
}

func TestDefineAsset(t *testing.T) {
	f := startFake(t)
	code, stdout, stderr := tallyctl(t, f, "define-asset", "--program", "shop", "--asset", "POINTS", "--scale", "0", "--key", "def-points")
	require.Equal(t, exitOK, code, stderr)
	assert.Equal(t, "OK", field(t, stdout, "code"))
	require.Len(t, f.defines, 1)
	assert.Equal(t, "POINTS", f.defines[0].Asset)
	assert.Equal(t, uint32(0), f.defines[0].Scale)
	assert.Equal(t, "def-points", f.defines[0].IdempotencyKey)
}

func TestJournalAndOp(t *testing.T) {
	f := startFake(t)
	for _, key := range []string{"j1", "j2", "j3"} {
		code, _, stderr := tallyctl(t, f, "credit", "--program", "shop", "--member", "gus", "--asset", "CNY", "--amount", "1.25", "--key", key, "--memo", "memo "+key)
		require.Equal(t, exitOK, code, stderr)
	}
	code, stdout, stderr := tallyctl(t, f, "journal", "--program", "shop", "--member", "gus", "--limit", "2")
	require.Equal(t, exitOK, code, stderr)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	require.GreaterOrEqual(t, len(lines), 4, stdout)
	assert.Regexp(t, `^SEQ\s+TIME\s+KIND\s+ASSET\s+AMOUNT\s+POSTED\s+KEY\s+MEMO$`, lines[0])
	assert.Regexp(t, `^3\s+2023-11-14T22:13:20.000Z\s+CREDIT\s+CNY\s+1\.25\s+3\.75\s+j3\s+memo j3$`, lines[1])
	assert.Regexp(t, `^2\s+.*\s+j2\s+memo j2$`, lines[2])
	assert.Equal(t, "more: --before 2", lines[len(lines)-1])

	code, stdout, stderr = tallyctl(t, f, "--json", "journal", "--program", "shop", "--member", "gus", "--before", "2")
	require.Equal(t, exitOK, code, stderr)
	var page struct {
		Entries []struct {
			Seq uint64 `json:"seq"`
			Op  struct {
				Kind   string `json:"kind"`
				Amount string `json:"amount"`
				Key    string `json:"key"`
			} `json:"op"`
		} `json:"entries"`
		NextBeforeSeq uint64 `json:"next_before_seq"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &page), stdout)
	require.Len(t, page.Entries, 1)
	assert.Equal(t, uint64(1), page.Entries[0].Seq)
	assert.Equal(t, "CREDIT", page.Entries[0].Op.Kind)
	assert.Equal(t, "1.25", page.Entries[0].Op.Amount)
	assert.Zero(t, page.NextBeforeSeq)

	code, stdout, stderr = tallyctl(t, f, "op", "--program", "shop", "--member", "gus", "--key", "j2")
	require.Equal(t, exitOK, code, stderr)
	assert.Equal(t, "true", field(t, stdout, "found"))
	assert.Equal(t, "CREDIT", field(t, stdout, "kind"))
	assert.Equal(t, "1.25", field(t, stdout, "amount"))
	assert.Equal(t, "2.50", field(t, stdout, "posted"))

	code, stdout, _ = tallyctl(t, f, "--json", "op", "--program", "shop", "--member", "gus", "--key", "nope")
	require.Equal(t, exitOK, code)
	assert.JSONEq(t, `{"key":"nope","found":false,"final":false}`, stdout, "not found is not final, as the text says")
}

func TestClusterAndState(t *testing.T) {
	f := startFake(t)
	f.election = true
	code, stdout, stderr := tallyctl(t, f, "cluster")
	require.Equal(t, exitOK, code, stderr)
	assert.Equal(t, "2", field(t, stdout, "shards"))
	assert.Regexp(t, `(?m)^n1\s+`+regexp.QuoteMeta(f.addr)+`\s+127\.0\.0\.1:7201$`, stdout)
	assert.Regexp(t, `(?m)^0\s+n1\s+`+regexp.QuoteMeta(f.addr)+`$`, stdout)
	assert.Regexp(t, `(?m)^1\s+-\s+\(no leader known`, stdout)

	code, stdout, stderr = tallyctl(t, f, "--json", "cluster")
	require.Equal(t, exitOK, code, stderr)
	var info struct {
		Shards  int `json:"shards"`
		Leaders []struct {
			Shard      int    `json:"shard"`
			LeaderAddr string `json:"leader_grpc_addr"`
		} `json:"leaders"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &info), stdout)
	assert.Equal(t, 2, info.Shards)
	assert.Equal(t, f.addr, info.Leaders[0].LeaderAddr)

	// state dials only the node it asks.
	var out, errOut bytes.Buffer
	code = run([]string{"--addr", "127.0.0.1:1", "state", "--node", f.addr, "--shard", "1"}, &out, &errOut)
	require.Equal(t, exitOK, code, errOut.String())
	assert.Equal(t, "42", field(t, out.String(), "applied index"))
	assert.Equal(t, "2 (this node allows up to 2)", field(t, out.String(), "rules version"))
	assert.Equal(t, "deadbeef", field(t, out.String(), "state hash"))
	assert.Equal(t, "ok", field(t, out.String(), "conservation"))
	assert.Equal(t, "true", field(t, out.String(), "leader"))
}

func TestIndeterminateOutcome(t *testing.T) {
	f := startFake(t)
	f.hang = true
	var stdout, stderr bytes.Buffer
	code := run([]string{"--addr", f.addr, "--timeout", "1s", "--json", "debit", "--program", "shop", "--member", "hal",
		"--asset", "CNY", "--amount", "1", "--key", "d-42"}, &stdout, &stderr)
	assert.Equal(t, exitError, code)
	assert.Contains(t, stderr.String(), "indeterminate")
	assert.Contains(t, stderr.String(), "re-run the same command with --key d-42 to settle it")
	assert.NotContains(t, stderr.String(), "idempotency key was", "the user chose the key")
	var out struct {
		Error struct {
			Code          string `json:"code"`
			Indeterminate bool   `json:"indeterminate"`
			Key           string `json:"key"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &out), stdout.String())
	assert.Equal(t, "UNAVAILABLE", out.Error.Code)
	assert.True(t, out.Error.Indeterminate)
	assert.Equal(t, "d-42", out.Error.Key)
}

// TestOpNotFoundIsNotFinal: `op` does not call a missing key "never
// applied" (an attempt in flight may still apply), and define-asset needs
// an explicit --scale (an asset never changes).
func TestOpNotFoundIsNotFinal(t *testing.T) {
	f := startFake(t)
	code, stdout, stderr := tallyctl(t, f, "op", "--program", "shop", "--member", "m", "--key", "nope")
	require.Equal(t, exitOK, code, stderr)
	assert.NotContains(t, stdout, "never applied")
	assert.Contains(t, stdout, "re-send with the same key")
	code, _, stderr = tallyctl(t, f, "define-asset", "--program", "shop", "--asset", "PTS")
	assert.Equal(t, exitUsage, code, stderr)
	assert.Contains(t, stderr, "--scale")
}

// TestStateViewShowsRefusals: `state` tells an operator why a node does
// not serve or vote: its vote guard, and a shard count a majority is not
// known to share.
func TestStateViewShowsRefusals(t *testing.T) {
	v := stateView{Node: "127.0.0.1:7103", ShardState: client.ShardState{ConservationOK: true, MaxVersion: 3, Version: 3, NodeID: "n3"}}
	var quiet bytes.Buffer
	v.text(&quiet)
	assert.Contains(t, quiet.String(), "node id\tn3")
	assert.NotContains(t, quiet.String(), "vote guard")
	assert.NotContains(t, quiet.String(), "refusing")

	v.VoteGuarded, v.Misconfigured = true, true
	var loud bytes.Buffer
	v.text(&loud)
	assert.Contains(t, loud.String(), "vote guard\ton")
	assert.Contains(t, loud.String(), "refusing\tevery request")
	b, err := json.Marshal(v.jsonValue())
	require.NoError(t, err)
	assert.Contains(t, string(b), `"vote_guarded":true`)
	assert.Contains(t, string(b), `"misconfigured":true`)
}

// TestStateViewShowsReplicaChecks: `state` on a leader names a replica
// whose state differs from the leader's.
func TestStateViewShowsReplicaChecks(t *testing.T) {
	v := stateView{Node: "127.0.0.1:7101", ShardState: client.ShardState{ConservationOK: true, NodeID: "n1", Leader: true,
		CheckIndex: 4096, CheckHash: []byte{0xab, 0xcd},
		ReplicaChecks: []client.ReplicaCheck{{NodeID: "n2", Index: 4096, Match: true}, {NodeID: "n3", Index: 4096},
			{NodeID: "n4", Index: 4096, Error: "disk"}}}}
	var out bytes.Buffer
	v.text(&out)
	assert.Contains(t, out.String(), "consistency check\tat index 4096: abcd")
	assert.Contains(t, out.String(), "replica n2\tat index 4096: same state")
	assert.Contains(t, out.String(), "replica n3\tat index 4096: DIFFERENT STATE")
	assert.Contains(t, out.String(), "replica n4\tat index 4096: CHECK FAILED on that replica: disk")
	b, err := json.Marshal(v.jsonValue())
	require.NoError(t, err)
	assert.Contains(t, string(b), `"replica_checks":[{"node_id":"n2","index":4096,"match":true},{"node_id":"n3","index":4096,"match":false},{"node_id":"n4","index":4096,"match":false,"error":"disk"}]`)
}

// TestWorthRetrying: the hint to re-run with the same key is for failures a
// re-run can fix: an unreachable cluster, an unknown outcome, and an
// operation the ledger deferred (its own result UNAVAILABLE, not recorded,
// while its shard releases expired holds); not for refusals.
func TestWorthRetrying(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{ledger.Errorf(ledger.CodeUnavailable, "deferred"), true},
		{&client.Error{Code: ledger.CodeUnavailable}, true},
		{&client.Error{Code: ledger.CodeNotLeader}, true},
		{&client.Error{Code: ledger.CodeInternal, Indeterminate: true}, true},
		{ledger.Errorf(ledger.CodeInsufficientFunds, "refused"), false},
		{ledger.Errorf(ledger.CodeInternal, "an op's own result"), false},
		{&client.Error{Code: ledger.CodeInvalidAmount}, false},
	} {
		assert.Equal(t, tc.want, worthRetrying(tc.err), "%v", tc.err)
	}
}

// TestCertsAndTLSFlags: certs writes a CA and two certificates without a
// cluster; the TLS flags go together, before or after the command.
func TestCertsAndTLSFlags(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	var stdout, stderr bytes.Buffer
	code := run([]string{"--json", "certs", "--dir", dir}, &stdout, &stderr)
	require.Equal(t, exitOK, code, stderr.String())
	for _, f := range []string{"ca.pem", "ca-key.pem", "node.pem", "node-key.pem", "client.pem", "client-key.pem"} {
		require.FileExists(t, filepath.Join(dir, f))
	}
	require.Contains(t, stdout.String(), filepath.Join(dir, "client.pem"))
	for _, args := range [][]string{
		{"--tls-cert", "c.pem", "get", "--program", "p", "--member", "m", "--asset", "A"},
		{"get", "--tls-key", "k.pem", "--program", "p", "--member", "m", "--asset", "A"},
	} {
		stderr.Reset()
		code = run(args, &stdout, &stderr)
		assert.Equal(t, exitUsage, code, args)
		assert.Contains(t, stderr.String(), "go together", args)
	}
}

// TestIssueCert: issue-cert writes a node or a client certificate from the
// CA that certs wrote, and refuses a directory without one.
func TestIssueCert(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	var stdout, stderr bytes.Buffer
	require.Equal(t, exitOK, run([]string{"certs", "--dir", dir}, &stdout, &stderr), stderr.String())
	for _, args := range [][]string{
		{"issue-cert", "--ca-dir", dir, "--cert", filepath.Join(dir, "n2.pem"), "--key", filepath.Join(dir, "n2-key.pem"), "--hosts", "10.0.0.2"},
		{"issue-cert", "--ca-dir", dir, "--cert", filepath.Join(dir, "svc.pem"), "--key", filepath.Join(dir, "svc-key.pem")},
	} {
		stdout.Reset()
		require.Equal(t, exitOK, run(args, &stdout, &stderr), stderr.String())
	}
	n2, err := tlsfiles.Files{Cert: filepath.Join(dir, "n2.pem"), Key: filepath.Join(dir, "n2-key.pem"), CA: filepath.Join(dir, "ca.pem")}.Server()
	require.NoError(t, err)
	c, err := n2.GetCertificate(nil)
	require.NoError(t, err)
	require.NoError(t, c.Leaf.VerifyHostname("10.0.0.2"))
	assert.Contains(t, stdout.String(), "client")
	stderr.Reset()
	code := run([]string{"issue-cert", "--ca-dir", t.TempDir(), "--cert", "x.pem", "--key", "x-key.pem"}, &stdout, &stderr)
	assert.Equal(t, exitError, code)
	assert.Contains(t, stderr.String(), "ca.pem")
}

// TestMain runs the tests without the caller's TALLY_TLS_* (tallyctl reads
// them): the fake clusters here are plaintext.
func TestMain(m *testing.M) {
	for _, v := range []string{tlsfiles.EnvCert, tlsfiles.EnvKey, tlsfiles.EnvCA} {
		_ = os.Unsetenv(v)
	}
	os.Exit(m.Run())
}

// TestReplicasCommand: `replicas` lists every shard's replicas by their
// newest consistency check, without a full scan (the fake answers one
// without a state hash), and exits non-zero, naming the shard, when a
// leader reports a replica it found different.
func TestReplicasCommand(t *testing.T) {
	f := startFake(t)
	var out, errOut bytes.Buffer
	code := run([]string{"--addr", f.addr, "replicas"}, &out, &errOut)
	require.Equal(t, exitOK, code, errOut.String())
	assert.Contains(t, out.String(), "no replicas differ")
	assert.Equal(t, 2, strings.Count(out.String(), "c0ffee"), out.String())

	f.compared = []*tallypb.ReplicaCheck{{NodeId: "n2", Index: 40, Match: true}, {NodeId: "n3", Index: 40}}
	out.Reset()
	errOut.Reset()
	code = run([]string{"--addr", f.addr, "replicas", "--shard", "1"}, &out, &errOut)
	require.Equal(t, exitError, code)
	assert.Contains(t, out.String(), "shard 1: leader n1: n3's state differs at index 40")
	assert.NotContains(t, out.String(), "n2's state differs")
	assert.Contains(t, errOut.String(), "shard(s) 1")

	code = run([]string{"--addr", f.addr, "replicas", "--shard", "2"}, &out, &errOut)
	require.Equal(t, exitUsage, code, "a shard the cluster does not have")
}

// TestReplicaProblems: replicas that report different hashes at one check
// index differ, whatever their leader says; replicas at different indexes,
// or with no check yet, are not compared.
func TestReplicaProblems(t *testing.T) {
	for _, tc := range []struct {
		name string
		rows []replicaRow
		want []string
	}{
		{"equal", []replicaRow{{Node: "n1", CheckIndex: 64, CheckHash: "aa"}, {Node: "n2", CheckIndex: 64, CheckHash: "aa"}}, []string{}},
		{"different at one index", []replicaRow{{Node: "n1", CheckIndex: 64, CheckHash: "aa"}, {Node: "n2", CheckIndex: 64, CheckHash: "bb"}},
			[]string{"n1 and n2: different state at index 64"}},
		{"other indexes", []replicaRow{{Node: "n1", CheckIndex: 64, CheckHash: "aa"}, {Node: "n2", CheckIndex: 128, CheckHash: "bb"}, {Node: "n3"}}, []string{}},
		{"no answer", []replicaRow{{Node: "n1", CheckIndex: 64, CheckHash: "aa"}, {Node: "n2", Error: "UNAVAILABLE"}},
			[]string{"n2: no answer: UNAVAILABLE"}},
		{"failed check", []replicaRow{{Node: "n1", CheckIndex: 64, CheckHash: "aa"}, {Node: "n2", CheckIndex: 64, CheckError: "disk"}},
			[]string{"n2: check at index 64: disk"}},
		{"leader's verdicts", []replicaRow{{Node: "n1", Leader: true, CheckIndex: 64, CheckHash: "aa",
			Compared: []client.ReplicaCheck{{NodeID: "n2", Index: 64, Error: "disk"}, {NodeID: "n3", Index: 32}}}},
			[]string{"leader n1: n2's check at index 64 failed: disk", "leader n1: n3's state differs at index 32"}},
	} {
		t.Run(tc.name, func(t *testing.T) { assert.Equal(t, tc.want, replicaProblems(tc.rows)) })
	}
}
