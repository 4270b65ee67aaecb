package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/shopspring/decimal"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/internal/tlsfiles"
)

// view is what a command prints: aligned text by default, JSON with --json.
type view interface {
	text(w io.Writer)
	jsonValue() any
}

func printView(w io.Writer, v view, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v.jsonValue())
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	v.text(tw)
	return tw.Flush()
}

// resultOf is the view of a mutating command: the result, unless the
// request itself failed (then there is no result to show).
func resultOf(a *args, r client.Result, err error) (view, error) {
	if err != nil && isRequestError(err) {
		return nil, err
	}
	return resultView{key: a.key, r: r}, err
}

func formatTime(ms int64) string {
	if ms == 0 {
		return "-"
	}
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z")
}

// formatAmount shows an amount with the asset's scale when known.
func formatAmount(d decimal.Decimal, scale uint8, known bool) string {
	if known {
		return d.StringFixed(int32(scale))
	}
	return d.String()
}

type accountJSON struct {
	Program     string `json:"program"`
	Member      string `json:"member"`
	Asset       string `json:"asset"`
	Scale       uint8  `json:"scale"`
	State       string `json:"state"`
	Posted      string `json:"posted"`
	Held        string `json:"held"`
	Available   string `json:"available"`
	MaxBalance  string `json:"max_balance,omitempty"`
	OpenedAtMs  int64  `json:"opened_at_ms"`
	UpdatedAtMs int64  `json:"updated_at_ms"`
}

func toAccountJSON(a client.Account) *accountJSON {
	j := &accountJSON{
		Program: a.Program, Member: a.Member, Asset: a.Asset, Scale: a.Scale, State: a.State,
		Posted:     formatAmount(a.Posted, a.Scale, true),
		Held:       formatAmount(a.Held, a.Scale, true),
		Available:  formatAmount(a.Available, a.Scale, true),
		OpenedAtMs: a.OpenedAtMs, UpdatedAtMs: a.UpdatedAtMs,
	}
	if a.MaxBalance != nil {
		j.MaxBalance = formatAmount(*a.MaxBalance, a.Scale, true)
	}
	return j
}

func accountText(w io.Writer, a client.Account) {
	fmt.Fprintf(w, "account\t%s/%s/%s\n", a.Program, a.Member, a.Asset)
	fmt.Fprintf(w, "state\t%s\n", a.State)
	fmt.Fprintf(w, "posted\t%s\n", formatAmount(a.Posted, a.Scale, true))
	fmt.Fprintf(w, "held\t%s\n", formatAmount(a.Held, a.Scale, true))
	fmt.Fprintf(w, "available\t%s\n", formatAmount(a.Available, a.Scale, true))
	maxBal := "none"
	if a.MaxBalance != nil {
		maxBal = formatAmount(*a.MaxBalance, a.Scale, true)
	}
	fmt.Fprintf(w, "max balance\t%s\n", maxBal)
	fmt.Fprintf(w, "opened\t%s\n", formatTime(a.OpenedAtMs))
	fmt.Fprintf(w, "updated\t%s\n", formatTime(a.UpdatedAtMs))
}

type holdJSON struct {
	Key         string `json:"key"`
	Asset       string `json:"asset"`
	Amount      string `json:"amount"`
	State       string `json:"state"`
	CreatedAtMs int64  `json:"created_at_ms"`
	ExpiresAtMs int64  `json:"expires_at_ms"`
}

type resultJSON struct {
	Key      string       `json:"key,omitempty"`
	Code     string       `json:"code"`
	Message  string       `json:"message,omitempty"`
	Replayed bool         `json:"replayed"`
	Seq      uint64       `json:"seq,omitempty"`
	TimeMs   int64        `json:"time_ms,omitempty"`
	Shard    uint32       `json:"shard"`
	Account  *accountJSON `json:"account,omitempty"`
	Hold     *holdJSON    `json:"hold,omitempty"`
	Captured string       `json:"captured,omitempty"`
	Released string       `json:"released,omitempty"`
	// Indeterminate: a batch op whose part failed with an unknown outcome
	// (its code then says why); re-sending the batch settles it.
	Indeterminate bool `json:"indeterminate,omitempty"`
}

// scaleOf is the scale of the result's account, if it has one.
func scaleOf(r client.Result) (uint8, bool) {
	if r.Account != nil {
		return r.Account.Scale, true
	}
	return 0, false
}

func toResultJSON(key string, r client.Result) resultJSON {
	scale, known := scaleOf(r)
	j := resultJSON{Key: key, Code: string(r.Code), Message: r.Message, Replayed: r.Replayed, Seq: r.Seq, TimeMs: r.TimeMs, Shard: r.Shard}
	if r.Account != nil {
		j.Account = toAccountJSON(*r.Account)
	}
	if h := r.Hold; h != nil {
		j.Hold = &holdJSON{Key: h.Key, Asset: h.Asset, Amount: formatAmount(h.Amount, scale, known), State: h.State,
			CreatedAtMs: h.CreatedAtMs, ExpiresAtMs: h.ExpiresAtMs}
	}
	if !r.Captured.IsZero() || !r.Released.IsZero() {
		j.Captured = formatAmount(r.Captured, scale, known)
		j.Released = formatAmount(r.Released, scale, known)
	}
	return j
}

type resultView struct {
	key string
	r   client.Result
}

func (v resultView) jsonValue() any { return toResultJSON(v.key, v.r) }

func (v resultView) text(w io.Writer) {
	if v.key != "" {
		fmt.Fprintf(w, "key\t%s\n", v.key)
	}
	resultText(w, v.r)
}

func resultText(w io.Writer, r client.Result) {
	scale, known := scaleOf(r)
	fmt.Fprintf(w, "code\t%s\n", r.Code)
	if r.Message != "" {
		fmt.Fprintf(w, "message\t%s\n", r.Message)
	}
	if r.Replayed {
		fmt.Fprintf(w, "replayed\ttrue (already applied; nothing changed now)\n")
	}
	if r.Seq != 0 {
		fmt.Fprintf(w, "seq\t%d\n", r.Seq)
	}
	fmt.Fprintf(w, "shard\t%d\n", r.Shard)
	if r.TimeMs != 0 {
		fmt.Fprintf(w, "time\t%s\n", formatTime(r.TimeMs))
	}
	if r.Account != nil {
		accountText(w, *r.Account)
	}
	if h := r.Hold; h != nil {
		fmt.Fprintf(w, "hold\t%s\n", h.Key)
		fmt.Fprintf(w, "hold state\t%s\n", h.State)
		fmt.Fprintf(w, "hold amount\t%s\n", formatAmount(h.Amount, scale, known))
		fmt.Fprintf(w, "hold expires\t%s\n", formatTime(h.ExpiresAtMs))
	}
	if !r.Captured.IsZero() || !r.Released.IsZero() {
		fmt.Fprintf(w, "captured\t%s\n", formatAmount(r.Captured, scale, known))
		fmt.Fprintf(w, "released\t%s\n", formatAmount(r.Released, scale, known))
	}
}

type accountView struct{ a client.Account }

func (v accountView) jsonValue() any   { return toAccountJSON(v.a) }
func (v accountView) text(w io.Writer) { accountText(w, v.a) }

type opJSON struct {
	Kind       string `json:"kind"`
	Program    string `json:"program"`
	Member     string `json:"member,omitempty"`
	Asset      string `json:"asset,omitempty"`
	Key        string `json:"key"`
	Amount     string `json:"amount,omitempty"`
	HoldKey    string `json:"hold_key,omitempty"`
	HoldTTLMs  int64  `json:"hold_ttl_ms,omitempty"`
	MaxBalance string `json:"max_balance,omitempty"`
	Memo       string `json:"memo,omitempty"`
}

type entryJSON struct {
	Seq    uint64     `json:"seq"`
	Op     opJSON     `json:"op"`
	Result resultJSON `json:"result"`
}

func toEntryJSON(e client.JournalEntry) entryJSON {
	scale, known := scaleOf(e.Result)
	op := opJSON{Kind: e.Op.Kind.String(), Program: e.Op.Program, Member: e.Op.Member, Asset: e.Op.Asset,
		Key: e.Op.IdempotencyKey, HoldKey: e.Op.HoldKey, HoldTTLMs: e.Op.HoldTTL.Milliseconds(), Memo: e.Op.Memo}
	if !e.Op.Amount.IsZero() {
		op.Amount = formatAmount(e.Op.Amount, scale, known)
	}
	if e.Op.MaxBalance != nil {
		op.MaxBalance = formatAmount(*e.Op.MaxBalance, scale, known)
	}
	return entryJSON{Seq: e.Seq, Op: op, Result: toResultJSON("", e.Result)}
}

type journalView struct {
	Entries       []client.JournalEntry
	NextBeforeSeq uint64
}

func (v journalView) jsonValue() any {
	out := struct {
		Entries       []entryJSON `json:"entries"`
		NextBeforeSeq uint64      `json:"next_before_seq"`
	}{Entries: []entryJSON{}, NextBeforeSeq: v.NextBeforeSeq}
	for _, e := range v.Entries {
		out.Entries = append(out.Entries, toEntryJSON(e))
	}
	return out
}

func (v journalView) text(w io.Writer) {
	fmt.Fprintf(w, "SEQ\tTIME\tKIND\tASSET\tAMOUNT\tPOSTED\tKEY\tMEMO\n")
	for _, e := range v.Entries {
		j := toEntryJSON(e)
		amount, posted := dash(j.Op.Amount), "-"
		if j.Result.Account != nil {
			posted = j.Result.Account.Posted
		}
		key := j.Op.Key
		if strings.HasPrefix(key, "\x1f") { // the ledger's own entry (EXPIRE_HOLD): show the control character
			key = strconv.QuoteToASCII(key)
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, formatTime(e.Result.TimeMs), j.Op.Kind,
			dash(j.Op.Asset), amount, posted, key, j.Op.Memo)
	}
	if v.NextBeforeSeq != 0 {
		fmt.Fprintf(w, "\nmore: --before %d\n", v.NextBeforeSeq)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

type opView struct {
	Key   string
	Found bool
	Entry client.JournalEntry
}

func (v opView) jsonValue() any {
	out := struct {
		Key   string `json:"key"`
		Found bool   `json:"found"`
		// Final says whether the answer is final: found is; not found
		// is not (an attempt still in flight may yet apply), as the text
		// output says.
		Final bool       `json:"final"`
		Entry *entryJSON `json:"entry,omitempty"`
	}{Key: v.Key, Found: v.Found, Final: v.Found}
	if v.Found {
		e := toEntryJSON(v.Entry)
		out.Entry = &e
	}
	return out
}

func (v opView) text(w io.Writer) {
	fmt.Fprintf(w, "key\t%s\n", v.Key)
	if !v.Found {
		fmt.Fprintf(w, "found\tfalse (not applied so far; an attempt still in flight may yet apply: re-send with the same key to settle it)\n")
		return
	}
	j := toEntryJSON(v.Entry)
	fmt.Fprintf(w, "found\ttrue\n")
	fmt.Fprintf(w, "kind\t%s\n", j.Op.Kind)
	if j.Op.Amount != "" {
		fmt.Fprintf(w, "amount\t%s\n", j.Op.Amount)
	}
	if j.Op.HoldKey != "" {
		fmt.Fprintf(w, "hold key\t%s\n", j.Op.HoldKey)
	}
	if j.Op.Memo != "" {
		fmt.Fprintf(w, "memo\t%s\n", j.Op.Memo)
	}
	resultText(w, v.Entry.Result)
}

type clusterView struct{ info client.ClusterInfo }

func (v clusterView) jsonValue() any {
	type node struct {
		ID       string `json:"id"`
		GRPCAddr string `json:"grpc_addr"`
		RaftAddr string `json:"raft_addr"`
	}
	type leader struct {
		Shard      uint32 `json:"shard"`
		LeaderID   string `json:"leader_id"`
		LeaderAddr string `json:"leader_grpc_addr"`
	}
	out := struct {
		NodeID  string   `json:"node_id"`
		Shards  int      `json:"shards"`
		Nodes   []node   `json:"nodes"`
		Leaders []leader `json:"leaders"`
	}{NodeID: v.info.NodeID, Shards: v.info.Shards, Nodes: []node{}, Leaders: []leader{}}
	for _, n := range v.info.Nodes {
		out.Nodes = append(out.Nodes, node(n))
	}
	for _, l := range v.info.Leaders {
		out.Leaders = append(out.Leaders, leader(l))
	}
	return out
}

func (v clusterView) text(w io.Writer) {
	fmt.Fprintf(w, "answered by\t%s\n", v.info.NodeID)
	fmt.Fprintf(w, "shards\t%d\n\n", v.info.Shards)
	fmt.Fprintf(w, "NODE\tGRPC\tRAFT\n")
	for _, n := range v.info.Nodes {
		fmt.Fprintf(w, "%s\t%s\t%s\n", n.ID, n.GRPCAddr, n.RaftAddr)
	}
	fmt.Fprintf(w, "\nSHARD\tLEADER\tGRPC\n")
	for _, l := range v.info.Leaders {
		if l.LeaderAddr == "" {
			fmt.Fprintf(w, "%d\t-\t(no leader known: election?)\n", l.Shard)
			continue
		}
		fmt.Fprintf(w, "%d\t%s\t%s\n", l.Shard, dash(l.LeaderID), l.LeaderAddr)
	}
}

type stateView struct {
	Node string
	client.ShardState
}

func (v stateView) jsonValue() any {
	return struct {
		Node              string             `json:"node"`
		NodeID            string             `json:"node_id"`
		Shard             uint32             `json:"shard"`
		Leader            bool               `json:"leader"`
		AppliedIndex      uint64             `json:"applied_index"`
		StateHash         string             `json:"state_hash"`
		ConservationOK    bool               `json:"conservation_ok"`
		ConservationError string             `json:"conservation_error,omitempty"`
		LastTimeMs        int64              `json:"last_time_ms"`
		Version           uint32             `json:"version"`
		MaxVersion        uint32             `json:"max_version"`
		VoteGuarded       bool               `json:"vote_guarded"`
		Misconfigured     bool               `json:"misconfigured"`
		CheckIndex        uint64             `json:"check_index"`
		CheckHash         string             `json:"check_hash"`
		CheckError        string             `json:"check_error,omitempty"`
		ReplicaChecks     []replicaCheckJSON `json:"replica_checks"`
	}{v.Node, v.NodeID, v.Shard, v.Leader, v.AppliedIndex, hex.EncodeToString(v.StateHash), v.ConservationOK, v.ConservationError,
		v.LastTimeMs, v.Version, v.MaxVersion, v.VoteGuarded, v.Misconfigured,
		v.CheckIndex, hex.EncodeToString(v.CheckHash), v.CheckError, replicaChecksJSON(v.ReplicaChecks)}
}

type replicaCheckJSON struct {
	NodeID string `json:"node_id"`
	Index  uint64 `json:"index"`
	Match  bool   `json:"match"`
	Error  string `json:"error,omitempty"`
}

func replicaChecksJSON(rs []client.ReplicaCheck) []replicaCheckJSON {
	out := []replicaCheckJSON{}
	for _, r := range rs {
		out = append(out, replicaCheckJSON{r.NodeID, r.Index, r.Match, r.Error})
	}
	return out
}

func (v stateView) text(w io.Writer) {
	fmt.Fprintf(w, "node\t%s\n", v.Node)
	fmt.Fprintf(w, "node id\t%s\n", dash(v.NodeID))
	fmt.Fprintf(w, "shard\t%d\n", v.Shard)
	fmt.Fprintf(w, "leader\t%t\n", v.Leader)
	fmt.Fprintf(w, "applied index\t%d\n", v.AppliedIndex)
	fmt.Fprintf(w, "state hash\t%s\n", dash(hex.EncodeToString(v.StateHash)))
	if v.ConservationOK {
		fmt.Fprintf(w, "conservation\tok\n")
	} else {
		fmt.Fprintf(w, "conservation\tFAILED: %s\n", v.ConservationError)
	}
	fmt.Fprintf(w, "last time\t%s\n", formatTime(v.LastTimeMs))
	if v.MaxVersion == 0 {
		fmt.Fprintf(w, "rules version\t1 (this node predates rules versions)\n")
	} else {
		fmt.Fprintf(w, "rules version\t%d (this node allows up to %d)\n", v.Version, v.MaxVersion)
	}
	if v.VoteGuarded {
		fmt.Fprintf(w, "vote guard\ton: may lack entries it acknowledged; does not vote or run for leader until caught up\n")
	}
	if v.Misconfigured {
		fmt.Fprintf(w, "refusing\tevery request: a majority of the cluster is not known to run this node's shard count, or its clock is off from theirs (its log says why)\n")
	}
	switch {
	case v.CheckIndex == 0:
		fmt.Fprintf(w, "consistency check\tnone yet\n")
	case v.CheckError != "":
		fmt.Fprintf(w, "consistency check\tat index %d: FAILED: %s\n", v.CheckIndex, v.CheckError)
	default:
		fmt.Fprintf(w, "consistency check\tat index %d: %s\n", v.CheckIndex, hex.EncodeToString(v.CheckHash))
	}
	for _, r := range v.ReplicaChecks {
		verdict := "same state"
		switch {
		case r.Error != "":
			verdict = "CHECK FAILED on that replica: " + r.Error
		case !r.Match:
			verdict = "DIFFERENT STATE: this replica's and the leader's diverged (README, \"Replica consistency checks\")"
		}
		fmt.Fprintf(w, "replica %s\tat index %d: %s\n", r.NodeID, r.Index, verdict)
	}
}

// errorView is the JSON printed for a failed request with --json, so that
// scripts read the code without parsing stderr.
type errorView struct {
	err error
	a   *args
}

func newErrorView(err error, a *args) errorView { return errorView{err: err, a: a} }

func (v errorView) jsonValue() any {
	type errJSON struct {
		Code          string `json:"code"`
		Message       string `json:"message"`
		Indeterminate bool   `json:"indeterminate"`
		Key           string `json:"key,omitempty"`
	}
	code := client.CodeOf(v.err)
	return struct {
		Error errJSON `json:"error"`
	}{errJSON{Code: string(code), Message: v.err.Error(), Indeterminate: client.IsIndeterminate(v.err), Key: v.a.key}}
}

func (v errorView) text(w io.Writer) { fmt.Fprintf(w, "error\t%v\n", v.err) }

// certsView is what tallyctl certs wrote.
type certsView tlsfiles.Generated

func (v certsView) text(w io.Writer) {
	fmt.Fprintf(w, "ca\t%s\n", v.CA)
	fmt.Fprintf(w, "node\t--tls-cert %s --tls-key %s --tls-ca %s\n", v.Node.Cert, v.Node.Key, v.Node.CA)
	fmt.Fprintf(w, "client\t--tls-cert %s --tls-key %s --tls-ca %s\n", v.User.Cert, v.User.Key, v.User.CA)
}

func (v certsView) jsonValue() any {
	return map[string]any{"ca": v.CA,
		"node":   map[string]string{"cert": v.Node.Cert, "key": v.Node.Key, "ca": v.Node.CA},
		"client": map[string]string{"cert": v.User.Cert, "key": v.User.Key, "ca": v.User.CA}}
}

// issuedView is what tallyctl issue-cert wrote.
type issuedView struct {
	tlsfiles.Files
	node bool
}

func (v issuedView) kind() string {
	if v.node {
		return "node"
	}
	return "client"
}

func (v issuedView) text(w io.Writer) {
	fmt.Fprintf(w, "%s\t--tls-cert %s --tls-key %s\n", v.kind(), v.Cert, v.Key)
}

func (v issuedView) jsonValue() any {
	return map[string]string{"kind": v.kind(), "cert": v.Cert, "key": v.Key}
}
