package linearizability

import (
	"fmt"
	"hash/fnv"
	"sort"
	"strings"

	"github.com/anishathalye/porcupine"

	"github.com/tally-ledger/tally/ledger"
)

// Kind is the kind of one operation of the model: the mutating kinds of the
// API that act on one account, a read of one account, and a linked request.
type Kind uint8

// Kinds of operations.
const (
	KindRead Kind = iota
	KindCredit
	KindDebit
	KindHold
	KindCapture
	KindRelease
	KindFreeze
	KindUnfreeze
	// KindLinked is a linked request: Input.Ops, all on Input.Member (on
	// either of its accounts), applied all or none in one log entry.
	KindLinked
	// KindReportLost and KindReportFound report the member's card lost
	// and found, and KindClose closes an account for good (after
	// KindLinked, so histories of older runs still read).
	KindReportLost
	KindReportFound
	KindClose
)

var kindNames = [...]string{"read", "credit", "debit", "hold", "capture", "release", "freeze", "unfreeze", "linked",
	"report-lost", "report-found", "close"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Input is what one operation asked for. All amounts are minor units of
// its asset.
type Input struct {
	Kind   Kind
	Member string // the member: the partition key
	// Asset names the member's account (one of assetScales): the one a
	// read, credit, debit, hold or change of state acts on; for a capture
	// or release, the asset of the hold it names, whose scale its amount is
	// in ("" for a linked request).
	Asset   string
	Key     string // idempotency key ("" for reads); names the hold of a Hold
	Amount  int64  // Credit, Debit, Hold; Capture (0 = the whole hold)
	HoldKey string // Capture, Release
	TTLMs   int64  // Hold
	// Ops are the ops of a KindLinked request, in order, each with its own
	// key (Key is then ""); none is KindRead or KindLinked.
	Ops []Input
}

// Status says how much the client learned about an operation's outcome.
type Status uint8

const (
	// Known: the client saw the result (or it was resolved afterwards with
	// GetOperation).
	Known Status = iota
	// Indeterminate: the outcome is unknown; the operation may or may not
	// have taken effect, at any time after its call.
	Indeterminate
	// NotApplied: the request failed in a way that certainly applied
	// nothing (NOT_LEADER, a rejection at the edge). The model holds the
	// client to it: the operation must have had no effect.
	NotApplied
)

var statusNames = [...]string{"known", "indeterminate", "not-applied"}

func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

// Output is what the client learned.
type Output struct {
	Status Status
	// Code is the operation's code (Known) or the request-level error code
	// (NotApplied, Indeterminate: informational).
	Code     ledger.Code
	Seq      uint64 // journal sequence (Known writes; 0 if none)
	TimeMs   int64  // log time the write applied at (Known writes)
	Replayed bool   // served from the dedup record (informational)
	// Account is the account after the operation (writes, when the result
	// carries one) or as read (reads), in minor units of Asset, the asset
	// the server reported it in.
	HasAccount bool
	Asset      string
	Posted     int64
	Held       int64
	State      ledger.AccountState // StateUnknown for a state the server named that the ledger has not
	// Captured and Released are what a successful capture or release moved
	// out of its hold (minor units; 0 for other kinds).
	Captured int64
	Released int64
	// WallMs is, for a read, the wall clock (ms) when its answer arrived.
	// The nodes stamp log time from the same host's clock when they
	// propose, so the state a read saw has a log time at most this: a read
	// cannot see a hold expire later than that (0: no bound, for
	// hand-made histories).
	WallMs int64
	// Ops are the results of a KindLinked request's ops (Known only), one
	// per op. Code is then the request's: OK, or the failing op's code.
	Ops []Output
	// Blamed is, for a KindLinked request the edge refused (NotApplied),
	// 1 + the index of the op it blamed; 0 when none was named.
	Blamed int
	// Wrong says what the account reported got wrong that the model keeps
	// no state for (another member's account, an available balance other
	// than posted - held: accountOutput); "" if nothing. No state explains
	// an output with it set, or with an op's set.
	Wrong string
}

// wrongAnswer reports whether out, or one of its ops' outputs, is Wrong.
func wrongAnswer(out Output) bool {
	if out.Wrong != "" {
		return true
	}
	for _, o := range out.Ops {
		if o.Wrong != "" {
			return true
		}
	}
	return false
}

// holdStatus is the lifecycle of a hold in the model.
type holdStatus uint8

const (
	holdOpen holdStatus = iota
	holdCaptured
	holdReleased
	holdExpired
)

type modelHold struct {
	key         string
	account     int // index into State.Accounts
	amount      int64
	expiresAtMs int64
	status      holdStatus
}

// Balance is the model's state of one account.
type Balance struct {
	Posted int64
	Held   int64
	State  ledger.AccountState
}

// State is the model's state of one member: its accounts, one per asset of
// assetScales and in that order, and its holds (whose keys are unique per
// member, whichever account holds them). It is immutable: Step copies what
// it changes.
type State struct {
	Accounts [len(assetScales)]Balance
	LastTime int64  // largest log time an operation of this member was linearized at (a lower bound)
	LastSeq  uint64 // largest journal sequence seen on this member (the shard's sequence)
	holds    []modelHold
}

// initialState is every member's state before its history: each account
// open, ACTIVE, with nothing posted (the harness opens the accounts first).
func initialState() State {
	var s State
	for i := range s.Accounts {
		s.Accounts[i].State = ledger.StateActive
	}
	return s
}

// accountIndex is the index in State.Accounts of asset's account, -1 for an
// asset the workload does not use.
func accountIndex(asset string) int {
	for i, a := range assetScales {
		if a.code == asset {
			return i
		}
	}
	return -1
}

// accountOf is the account in.Kind acts on: a capture's or release's is its
// hold's, if s has it; every other kind's is in.Asset's.
func accountOf(s State, in Input) int {
	if in.Kind == KindCapture || in.Kind == KindRelease {
		if i, found := s.hold(in.HoldKey); found {
			return s.holds[i].account
		}
	}
	return accountIndex(in.Asset)
}

func (s State) hold(key string) (int, bool) {
	for i := range s.holds {
		if s.holds[i].key == key {
			return i, true
		}
	}
	return -1, false
}

// withHolds returns s with a private copy of its holds.
func (s State) withHolds() State {
	s.holds = append([]modelHold(nil), s.holds...)
	return s
}

// expireAt expires every open hold with expiresAtMs <= t, as the ledger
// does at the start of each entry at log time t.
func (s State) expireAt(t int64) State {
	copied := false
	for i := range s.holds {
		h := &s.holds[i]
		if h.status != holdOpen || h.expiresAtMs > t {
			continue
		}
		if !copied {
			s = s.withHolds()
			copied = true
			h = &s.holds[i]
		}
		h.status = holdExpired
		s.Accounts[h.account].Held -= h.amount
	}
	return s
}

// expiryTimes returns the distinct expiry times of open holds after s.LastTime,
// ascending: the log times at which the account's state can change without
// an operation of its own.
func (s State) expiryTimes() []int64 {
	var ts []int64
	for _, h := range s.holds {
		if h.status == holdOpen && h.expiresAtMs > s.LastTime {
			ts = append(ts, h.expiresAtMs)
		}
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
	out := ts[:0]
	for i, t := range ts {
		if i == 0 || t != ts[i-1] {
			out = append(out, t)
		}
	}
	return out
}

// apply runs one write at log time t on a state whose expiries up to t are
// done, following the rules of package ledger (the subset the workload
// uses: every account state, and the assets' balance limits).
func apply(s State, in Input, t int64) (State, ledger.Code) {
	if in.Kind == KindCapture || in.Kind == KindRelease {
		return settle(s, in)
	}
	ai := accountIndex(in.Asset)
	if ai < 0 {
		// Not an account of the workload: a harness bug, which no result
		// of the server explains.
		return s, ledger.CodeInternal
	}
	a := &s.Accounts[ai] // s is a copy: this changes only the returned state
	if a.State == ledger.StateClosed {
		return s, ledger.CodeAccountClosed // final: every op on it is refused
	}
	available := a.Posted - a.Held
	switch in.Kind {
	case KindCredit:
		// A lost card still takes value (a refund, a recharge at the
		// counter); only spending is refused.
		if a.State == ledger.StateFrozen {
			return s, ledger.CodeAccountFrozen
		}
		if limit := assetScales[ai].maxBalance; limit > 0 && a.Posted+in.Amount > limit {
			return s, ledger.CodeLimitExceeded
		}
		a.Posted += in.Amount
	case KindDebit:
		if code := spendable(*a); code != ledger.CodeOK {
			return s, code
		}
		if available < in.Amount {
			return s, ledger.CodeInsufficientFunds
		}
		a.Posted -= in.Amount
	case KindHold:
		if code := spendable(*a); code != ledger.CodeOK {
			return s, code
		}
		if available < in.Amount {
			return s, ledger.CodeInsufficientFunds
		}
		if _, dup := s.hold(in.Key); dup {
			// A second hold under one key would be a dedup failure; the
			// ledger never evaluates it. Modelled as impossible.
			return s, ledger.CodeIdempotencyKeyReused
		}
		a.Held += in.Amount
		s.holds = append(append([]modelHold(nil), s.holds...),
			modelHold{key: in.Key, account: ai, amount: in.Amount, expiresAtMs: t + in.TTLMs, status: holdOpen})
	case KindFreeze, KindUnfreeze:
		if a.State == ledger.StateLost {
			return s, ledger.CodeInvalidState
		}
		a.State = ledger.StateActive
		if in.Kind == KindFreeze {
			a.State = ledger.StateFrozen
		}
	case KindReportLost, KindReportFound:
		if a.State == ledger.StateFrozen {
			return s, ledger.CodeInvalidState
		}
		a.State = ledger.StateActive
		if in.Kind == KindReportLost {
			a.State = ledger.StateLost
		}
	case KindClose:
		// From any state but closed, once nothing is posted or held.
		if a.Posted != 0 || a.Held != 0 {
			return s, ledger.CodeBalanceNotZero
		}
		a.State = ledger.StateClosed
	default:
		return s, ledger.CodeInternal
	}
	return s, ledger.CodeOK
}

// settle is apply for a capture or release: it acts on the account of the
// hold it names.
func settle(s State, in Input) (State, ledger.Code) {
	i, found := s.hold(in.HoldKey)
	if !found {
		return s, ledger.CodeHoldNotFound
	}
	h := s.holds[i]
	if h.account != accountIndex(in.Asset) {
		// The workload sends a capture's amount at the scale of the asset it
		// believes the hold is in; a wrong belief is a harness bug.
		return s, ledger.CodeInternal
	}
	switch h.status {
	case holdCaptured, holdReleased:
		return s, ledger.CodeHoldClosed
	case holdExpired:
		return s, ledger.CodeHoldExpired
	}
	if in.Kind == KindRelease {
		s = s.withHolds()
		s.holds[i].status = holdReleased
		s.Accounts[h.account].Held -= h.amount
		return s, ledger.CodeOK
	}
	if code := spendable(s.Accounts[h.account]); code != ledger.CodeOK {
		return s, code
	}
	amount := in.Amount
	if amount == 0 {
		amount = h.amount
	}
	if amount > h.amount {
		return s, ledger.CodeInvalidAmount
	}
	s = s.withHolds()
	s.holds[i].status = holdCaptured
	s.Accounts[h.account].Held -= h.amount
	s.Accounts[h.account].Posted -= amount
	return s, ledger.CodeOK
}

// spendable is the code an account's state gives a debit, hold or capture:
// only an active account spends.
func spendable(a Balance) ledger.Code {
	switch a.State {
	case ledger.StateFrozen:
		return ledger.CodeAccountFrozen
	case ledger.StateLost:
		return ledger.CodeAccountLost
	case ledger.StateClosed:
		return ledger.CodeAccountClosed
	}
	return ledger.CodeOK
}

// accountMatches reports whether what the client saw of account ai agrees
// with s: in the same asset, with the same balances and state.
func accountMatches(s State, ai int, out Output) bool {
	if !out.HasAccount {
		return true
	}
	if ai < 0 || accountIndex(out.Asset) != ai {
		return false
	}
	a := s.Accounts[ai]
	return out.Posted == a.Posted && out.Held == a.Held && out.State == a.State
}

// settledMatches reports whether a successful op's captured and released
// amounts agree with the rules, given the state before it: a capture takes
// its amount (the whole hold when 0) and releases the rest, a release frees
// the whole hold, and nothing else moves either.
func settledMatches(before State, in Input, out Output) bool {
	var captured, released int64
	if in.Kind == KindCapture || in.Kind == KindRelease {
		if i, found := before.hold(in.HoldKey); found {
			released = before.holds[i].amount
		}
		if in.Kind == KindCapture {
			captured = in.Amount
			if captured == 0 {
				captured = released
			}
			released -= captured
		}
	}
	return out.Captured == captured && out.Released == released
}

// movedNothing reports whether an op's answer says it captured and
// released nothing, as every answer but a capture's or release's success
// must.
func movedNothing(out Output) bool { return out.Captured == 0 && out.Released == 0 }

// step is the nondeterministic step function: every state the account can
// be in after the operation, none if the operation could not have returned
// out from s.
func step(s State, in Input, out Output) []State {
	if wrongAnswer(out) {
		return nil
	}
	switch in.Kind {
	case KindRead:
		return stepRead(s, in, out)
	case KindLinked:
		return stepLinked(s, in, out)
	}
	switch out.Status {
	case NotApplied:
		// Certainly not applied: no effect. A capture or release that the
		// edge rejected with HOLD_NOT_FOUND also says the hold did not exist
		// then (holdMissing, as for a linked request of one op).
		if (out.Code == ledger.CodeHoldNotFound && !holdMissing(s, []Input{in}, 0)) || !movedNothing(out) {
			return nil
		}
		return []State{s}
	case Indeterminate:
		// Either it never took effect, or it took effect at some log time
		// >= LastTime; only the expiry prefix of that time matters. Not
		// quite: a hold it opens expires TTL after that time, and the model
		// tries only the earliest time of each prefix, so a later op that
		// finds the hold still open can be refused. The checks resolve
		// every indeterminate write from the store after the run; one left
		// indeterminate has already failed exactly-once (its lookup failed,
		// or a linked request is stored in part), so no run passes on it.
		next := []State{s}
		times := append([]int64{s.LastTime}, s.expiryTimes()...)
		for _, t := range times {
			e := s.expireAt(t)
			n, _ := apply(e, in, t)
			n.LastTime = t
			next = append(next, n)
		}
		return next
	}
	// Known: the log time and sequence pin the order.
	t := out.TimeMs
	if t < s.LastTime || (out.Seq != 0 && out.Seq <= s.LastSeq) {
		return nil
	}
	e := s.expireAt(t)
	n, code := apply(e, in, t)
	if code != out.Code {
		return nil
	}
	if !accountMatches(n, accountOf(e, in), out) || (code == ledger.CodeOK && !settledMatches(e, in, out)) ||
		(code != ledger.CodeOK && !movedNothing(out)) {
		return nil
	}
	n.LastTime = t
	if out.Seq != 0 {
		n.LastSeq = out.Seq
	}
	return []State{n}
}

// applyLinked runs a linked request's ops at log time t on a state whose
// expiries up to t are done, as ledger.Apply does: in order, each on the
// state the ones before it left; if one fails, the request changes nothing.
// It returns the state after the request, each op's state after it
// (meaningful only when all succeed), and each op's own code up to the first
// failure; failed is that op's index, or -1.
func applyLinked(s State, ops []Input, t int64) (next State, after []State, codes []ledger.Code, failed int) {
	cur := s
	for i, op := range ops {
		n, code := apply(cur, op, t)
		codes = append(codes, code)
		if code != ledger.CodeOK {
			return s, nil, codes, i
		}
		after = append(after, n)
		cur = n
	}
	return cur, after, codes, -1
}

// stepLinked is step for a linked request. Its ops are recorded together,
// in one log entry, in order: all at one log time and with increasing
// sequence numbers, whether they succeed or not. When one fails, it keeps
// its code and the others get LINKED_FAILED, and no result describes the
// account (its state was never committed).
func stepLinked(s State, in Input, out Output) []State {
	switch out.Status {
	case NotApplied:
		// As for one op: HOLD_NOT_FOUND from the edge says a hold that one
		// of the request's captures or releases names, and that no earlier
		// op of it opens, did not exist then.
		if out.Code == ledger.CodeHoldNotFound && !holdMissing(s, in.Ops, out.Blamed) {
			return nil
		}
		return []State{s}
	case Indeterminate:
		// As for one op (step), with the same approximation for the holds
		// it opens.
		next := []State{s}
		times := append([]int64{s.LastTime}, s.expiryTimes()...)
		for _, t := range times {
			n, _, _, _ := applyLinked(s.expireAt(t), in.Ops, t)
			n.LastTime = t
			next = append(next, n)
		}
		return next
	}
	if len(out.Ops) != len(in.Ops) || len(in.Ops) == 0 {
		return nil
	}
	t := out.Ops[0].TimeMs
	if t < s.LastTime {
		return nil
	}
	lastSeq := s.LastSeq
	for _, o := range out.Ops {
		if o.Status != Known || o.TimeMs != t || o.Seq <= lastSeq {
			return nil
		}
		lastSeq = o.Seq
	}
	e := s.expireAt(t)
	n, after, codes, failed := applyLinked(e, in.Ops, t)
	for i, o := range out.Ops {
		switch {
		case failed < 0:
			before := e
			if i > 0 {
				before = after[i-1]
			}
			if o.Code != ledger.CodeOK || !accountMatches(after[i], accountOf(before, in.Ops[i]), o) || !settledMatches(before, in.Ops[i], o) {
				return nil
			}
		case i == failed:
			if o.Code != codes[i] || o.HasAccount || !movedNothing(o) {
				return nil
			}
		default:
			if o.Code != ledger.CodeLinkedFailed || o.HasAccount || !movedNothing(o) {
				return nil
			}
		}
	}
	n.LastTime, n.LastSeq = t, lastSeq
	return []State{n}
}

// holdMissing reports whether s is a state in which the edge could refuse
// ops with HOLD_NOT_FOUND, blaming op blamed-1 (blamed 0: not named). The
// edge converts ops in order and stops at the first that fails; a capture or
// release fails when its hold is neither stored (after a linearizable read)
// nor opened by an earlier op of the request. So the blamed op must be such
// an op, its hold missing, and every such op before it must have found its
// hold (holds are never deleted, so one moment of the call has all of
// that). Without a blamed op, one such op's hold must be missing; with no
// such op at all it reports true, as nothing is known then.
func holdMissing(s State, ops []Input, blamed int) bool {
	candidate := func(i int) bool {
		op := ops[i]
		if op.Kind != KindCapture && op.Kind != KindRelease {
			return false
		}
		for _, earlier := range ops[:i] {
			if earlier.Kind == KindHold && earlier.Key == op.HoldKey {
				return false
			}
		}
		return true
	}
	missing := func(i int) bool {
		_, found := s.hold(ops[i].HoldKey)
		return !found
	}
	if blamed > 0 {
		b := blamed - 1
		if b >= len(ops) || !candidate(b) || !missing(b) {
			return false
		}
		for i := range b {
			if candidate(i) && missing(i) {
				return false
			}
		}
		return true
	}
	candidates := 0
	for i := range ops {
		if candidate(i) {
			candidates++
			if missing(i) {
				return true
			}
		}
	}
	return candidates == 0
}

// stepRead: a read sees the state after some prefix of the shard's log, at
// a log time >= LastTime and (out.WallMs) no later than when it was
// answered, so any prefix of the expiries due by then may have happened. It sees one account, which expiries on the other leave as they
// were, so several prefixes can match: the shortest one is kept, as every
// state a longer one leads to is also reachable from it (later operations
// expire what is due at their own log time, and later reads try the
// prefixes again).
func stepRead(s State, in Input, out Output) []State {
	if out.Status != Known {
		return []State{s}
	}
	ai := accountIndex(in.Asset)
	if accountMatches(s, ai, out) {
		return []State{s}
	}
	for _, t := range s.expiryTimes() {
		if out.WallMs > 0 && t > out.WallMs+readClockSlackMs {
			// Not due yet when the read was answered: it used to be
			// tried, and a hold lost (held back to 0) after a member's
			// last write passed as expired, however far off its expiry.
			break
		}
		e := s.expireAt(t)
		if accountMatches(e, ai, out) {
			e.LastTime = t
			return []State{e}
		}
	}
	return nil
}

// readClockSlackMs allows for the clock reads of the nodes and the checker
// (one host's clock, read in different processes) not being exactly
// ordered.
const readClockSlackMs = 100

func statesEqual(a, b State) bool {
	if a.Accounts != b.Accounts || a.LastTime != b.LastTime || a.LastSeq != b.LastSeq || len(a.holds) != len(b.holds) {
		return false
	}
	for i := range a.holds {
		if a.holds[i] != b.holds[i] {
			return false
		}
	}
	return true
}

func stateHash(s State) uint64 {
	h := fnv.New64a()
	for _, a := range s.Accounts {
		fmt.Fprintf(h, "%d/%d/%d/", a.Posted, a.Held, a.State)
	}
	fmt.Fprintf(h, "%d/%d", s.LastTime, s.LastSeq)
	for _, x := range s.holds {
		fmt.Fprintf(h, "|%s/%d", x.key, x.status)
	}
	return h.Sum64()
}

// DescribeState renders a state for the visualization: each account's
// balances and state, and the open holds.
func DescribeState(s State) string {
	var b strings.Builder
	for i, a := range s.Accounts {
		fmt.Fprintf(&b, "%s posted=%d held=%d %s; ", assetScales[i].code, a.Posted, a.Held, a.State)
	}
	fmt.Fprintf(&b, "t=%d seq=%d", s.LastTime, s.LastSeq)
	var open []string
	for _, h := range s.holds {
		if h.status == holdOpen {
			open = append(open, fmt.Sprintf("%s:%s %d@%d", h.key, assetScales[h.account].code, h.amount, h.expiresAtMs))
		}
	}
	if len(open) > 0 {
		fmt.Fprintf(&b, " open=[%s]", strings.Join(open, " "))
	}
	return b.String()
}

// DescribeOperation renders an operation for the visualization.
func DescribeOperation(in Input, out Output) string {
	var call string
	switch in.Kind {
	case KindRead:
		call = fmt.Sprintf("read(%s)", in.Asset)
	case KindCredit, KindDebit:
		call = fmt.Sprintf("%s(%d %s)", in.Kind, in.Amount, in.Asset)
	case KindHold:
		call = fmt.Sprintf("hold(%d %s, ttl %dms) %s", in.Amount, in.Asset, in.TTLMs, in.Key)
	case KindCapture:
		call = fmt.Sprintf("capture(%s, %d)", in.HoldKey, in.Amount)
	case KindRelease:
		call = fmt.Sprintf("release(%s)", in.HoldKey)
	case KindLinked:
		return describeLinked(in, out)
	default:
		call = in.Kind.String() + "(" + in.Asset + ")"
	}
	var ret string
	switch {
	case out.Status == Indeterminate:
		ret = "? (indeterminate: " + string(out.Code) + ")"
	case out.Status == NotApplied:
		ret = "not applied: " + string(out.Code)
	case in.Kind == KindRead:
		ret = fmt.Sprintf("%s posted=%d held=%d %s", out.Asset, out.Posted, out.Held, out.State)
	default:
		ret = fmt.Sprintf("%s seq=%d t=%d", out.Code, out.Seq, out.TimeMs)
		if out.HasAccount {
			ret += fmt.Sprintf(" %s posted=%d held=%d %s", out.Asset, out.Posted, out.Held, out.State)
		}
		if out.Captured != 0 || out.Released != 0 {
			ret += fmt.Sprintf(" captured=%d released=%d", out.Captured, out.Released)
		}
		if out.Replayed {
			ret += " (replayed)"
		}
	}
	if out.Wrong != "" {
		ret += " (wrong: " + out.Wrong + ")"
	}
	return call + " -> " + ret
}

// describeLinked renders a linked request: each op with its own result when
// they are known, else the request's outcome once.
func describeLinked(in Input, out Output) string {
	parts := make([]string, len(in.Ops))
	for i, op := range in.Ops {
		if out.Status == Known && i < len(out.Ops) {
			parts[i] = DescribeOperation(op, out.Ops[i])
			continue
		}
		parts[i] = strings.TrimSuffix(DescribeOperation(op, Output{Status: Indeterminate}), " -> ? (indeterminate: )")
	}
	s := "linked[" + strings.Join(parts, "; ") + "]"
	switch out.Status {
	case Indeterminate:
		s += " -> ? (indeterminate: " + string(out.Code) + ")"
	case NotApplied:
		s += " -> not applied: " + string(out.Code)
		if out.Blamed > 0 {
			s += fmt.Sprintf(" (blames op index %d)", out.Blamed-1) // as the server's messages count
		}
	}
	return s
}

// Model returns the porcupine model of one member per partition: its
// accounts, one per asset; the history is partitioned by Input.Member.
// Every account starts ACTIVE with nothing posted (the harness opens the
// accounts before the history starts).
func Model() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: partitionByMember,
		Init:      func() []any { return []any{initialState()} },
		Step: func(state, input, output any) []any {
			next := step(state.(State), input.(Input), output.(Output))
			out := make([]any, len(next))
			for i := range next {
				out[i] = next[i]
			}
			return out
		},
		Equal:             func(a, b any) bool { return statesEqual(a.(State), b.(State)) },
		Hash:              func(s any) uint64 { return stateHash(s.(State)) },
		DescribeOperation: func(in, out any) string { return DescribeOperation(in.(Input), out.(Output)) },
		DescribeState:     func(s any) string { return DescribeState(s.(State)) },
		DescribeOperationMetadata: func(m any) string {
			if m == nil {
				return ""
			}
			return fmt.Sprint(m)
		},
	}
	return nm.ToModel()
}

func partitionByMember(history []porcupine.Operation) [][]porcupine.Operation {
	byMember := map[string][]porcupine.Operation{}
	var order []string
	for _, op := range history {
		m := op.Input.(Input).Member
		if _, ok := byMember[m]; !ok {
			order = append(order, m)
		}
		byMember[m] = append(byMember[m], op)
	}
	sort.Strings(order)
	out := make([][]porcupine.Operation, 0, len(order))
	for _, m := range order {
		out = append(out, byMember[m])
	}
	return out
}
