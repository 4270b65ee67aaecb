package loadtest

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
)

// Scenario picks which accounts operations touch.
type Scenario int

const (
	// Uniform spreads operations evenly over all members.
	Uniform Scenario = iota
	// Zipf draws members from a zipf distribution (a few popular members,
	// a long tail).
	Zipf
	// FlashSale sends HotShare of operations to the hot set: the campaign
	// budget and HotMembers members; the rest go uniformly to all members.
	// (See Workload.BudgetShare for what lands on the budget.)
	FlashSale
)

var scenarioNames = [...]string{"uniform", "zipf", "flash-sale"}

func (s Scenario) String() string {
	if int(s) >= 0 && int(s) < len(scenarioNames) {
		return scenarioNames[s]
	}
	return "Scenario(" + strconv.Itoa(int(s)) + ")"
}

// ParseScenario parses a scenario name as String prints it.
func ParseScenario(s string) (Scenario, error) {
	for i, n := range scenarioNames {
		if s == n {
			return Scenario(i), nil
		}
	}
	return 0, fmt.Errorf("unknown scenario %q (want one of %s)", s, strings.Join(scenarioNames[:], ", "))
}

// Kind is what one generated operation does. Histograms are kept per Kind;
// KindBatch is the latency of a whole batch request.
type Kind uint8

const (
	KindCredit Kind = iota
	KindDebit
	KindHold
	KindCapture
	KindRead
	// KindDraw is a debit of the campaign budget (flash sale).
	KindDraw
	// KindBatch is a request of several operations (batch mode).
	KindBatch
	numKinds
)

var kindNames = [numKinds]string{"credit", "debit", "hold", "capture", "read", "draw", "batch"}

func (k Kind) String() string {
	if k < numKinds {
		return kindNames[k]
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// mixKinds are the kinds a Mix weighs; draws come from the scenario, batches
// from the mode.
var mixKinds = [...]Kind{KindCredit, KindDebit, KindHold, KindCapture, KindRead}

// Mix weighs operation kinds. A capture is of an earlier hold of the same
// client; when the client has no open hold it places one instead, so holds
// and captures pair up.
type Mix struct {
	Credit, Debit, Hold, Capture, Read int
}

// DefaultMix is the standard mix: mostly balance moves, a fifth reads.
var DefaultMix = Mix{Credit: 30, Debit: 30, Hold: 10, Capture: 10, Read: 20}

func (m Mix) weights() [len(mixKinds)]int {
	return [...]int{m.Credit, m.Debit, m.Hold, m.Capture, m.Read}
}

// total is the sum of the weights.
func (m Mix) total() int {
	t := 0
	for _, w := range m.weights() {
		t += w
	}
	return t
}

// WithoutReads returns m with reads removed: a batch carries only mutating
// operations (reads are separate RPCs).
func (m Mix) WithoutReads() Mix {
	m.Read = 0
	return m
}

func (m Mix) String() string {
	w := m.weights()
	parts := make([]string, 0, len(w))
	for i, k := range mixKinds {
		if w[i] > 0 {
			parts = append(parts, k.String()+"="+strconv.Itoa(w[i]))
		}
	}
	return strings.Join(parts, ",")
}

// ParseMix parses "credit=30,debit=30,hold=10,capture=10,read=20"; kinds left
// out weigh zero.
func ParseMix(s string) (Mix, error) {
	var m Mix
	for _, item := range strings.Split(s, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(item), "=")
		w, err := strconv.Atoi(val)
		if !ok || err != nil || w < 0 {
			return Mix{}, fmt.Errorf("mix: %q is not kind=weight", item)
		}
		switch name {
		case "credit":
			m.Credit = w
		case "debit":
			m.Debit = w
		case "hold":
			m.Hold = w
		case "capture":
			m.Capture = w
		case "read":
			m.Read = w
		default:
			return Mix{}, fmt.Errorf("mix: unknown kind %q", name)
		}
	}
	if m.total() == 0 {
		return Mix{}, fmt.Errorf("mix: %q weighs nothing", s)
	}
	return m, nil
}

// Workload describes the accounts and the shape of the traffic.
type Workload struct {
	Scenario Scenario
	// Members is how many members (POINTS accounts) exist.
	Members int
	// ZipfS is the zipf exponent (> 1); larger is more skewed.
	ZipfS float64
	// HotMembers, HotShare and BudgetShare shape the flash sale: the
	// account of every operation but a capture (which takes a hold placed
	// earlier) is the campaign budget with probability BudgetShare, one of
	// the HotMembers first members with HotShare-BudgetShare, else any
	// member. A mutating operation on the budget is a draw (a debit), a
	// read reads it; so with the default mix draws are about 21.6% of all
	// operations, not BudgetShare (TestFlashSaleHotSpot).
	HotMembers  int
	HotShare    float64
	BudgetShare float64
	Mix         Mix
	// MaxAmountMinor bounds each credit, debit and hold (POINTS) and each
	// budget draw (CNY minor units, cents): amounts are uniform in
	// [1, MaxAmountMinor].
	MaxAmountMinor int64
}

// Defaults of a Workload.
const (
	DefaultMembers     = 100_000
	DefaultZipfS       = 1.1
	DefaultHotMembers  = 10
	DefaultHotShare    = 0.9
	DefaultBudgetShare = 0.3
	DefaultMaxAmount   = 100
)

// WithDefaults fills zero fields.
func (w Workload) WithDefaults() Workload {
	if w.Members <= 0 {
		w.Members = DefaultMembers
	}
	if w.ZipfS <= 1 {
		w.ZipfS = DefaultZipfS
	}
	if w.HotMembers <= 0 {
		w.HotMembers = min(DefaultHotMembers, w.Members)
	}
	if w.HotShare <= 0 {
		w.HotShare = DefaultHotShare
	}
	if w.BudgetShare <= 0 && w.Scenario == FlashSale {
		w.BudgetShare = DefaultBudgetShare
	}
	if w.Mix.total() == 0 {
		w.Mix = DefaultMix
	}
	if w.MaxAmountMinor <= 0 {
		w.MaxAmountMinor = DefaultMaxAmount
	}
	return w
}

// Validate reports a workload that cannot run.
func (w Workload) Validate() error {
	switch {
	case w.Members <= 0:
		return fmt.Errorf("workload: members must be > 0")
	case w.HotMembers > w.Members:
		return fmt.Errorf("workload: %d hot members of only %d", w.HotMembers, w.Members)
	case w.HotShare < 0 || w.HotShare > 1 || w.BudgetShare < 0 || w.BudgetShare > w.HotShare:
		return fmt.Errorf("workload: want 0 <= budget share (%v) <= hot share (%v) <= 1", w.BudgetShare, w.HotShare)
	case w.Mix.total() == 0:
		return fmt.Errorf("workload: empty mix")
	}
	return nil
}

// Budget is the account index of the campaign budget: one past the members.
func (w Workload) Budget() int { return w.Members }

// Accounts is the number of account indexes: members and the budget.
func (w Workload) Accounts() int { return w.Members + 1 }

// Reserved names. Members starting with '$' are reserved by the ledger, so
// the budget is an ordinary member with a name no generated member has.
const (
	BudgetMember = "campaign-budget"
	MemberAsset  = "POINTS"
	BudgetAsset  = "CNY"
	memberScale  = 0
	budgetScale  = 2
)

// MemberName is the member of account index i.
func (w Workload) MemberName(i int) string {
	if i == w.Budget() {
		return BudgetMember
	}
	return "m" + strconv.Itoa(i)
}

// AssetOf is the asset of account index i.
func (w Workload) AssetOf(i int) string {
	if i == w.Budget() {
		return BudgetAsset
	}
	return MemberAsset
}

// ScaleOf is the scale of account index i's asset.
func (w Workload) ScaleOf(i int) int32 {
	if i == w.Budget() {
		return budgetScale
	}
	return memberScale
}

// Spec is one generated operation, before it becomes a client.Op.
type Spec struct {
	Kind        Kind
	Account     int   // account index (Workload.MemberName, AssetOf)
	AmountMinor int64 // credit, debit, hold, draw; for a capture, the hold's amount
	// HoldSeq names the hold a capture takes (the generator's sequence
	// number of the Hold); Seq is this op's own.
	HoldSeq uint64
	Seq     uint64
}

// openHold is a hold the generator placed and that was acknowledged OK.
type openHold struct {
	account     int
	amountMinor int64
	seq         uint64
}

// Generator generates one client's operations. Not safe for concurrent use:
// each client has its own, seeded from the run's seed and the client's index
// so a run can be replayed.
type Generator struct {
	w     Workload
	rng   *rand.Rand
	zipf  *rand.Zipf
	cum   [len(mixKinds)]int // cumulative weights
	total int
	seq   uint64
	holds []openHold // acknowledged open holds, oldest first
}

// NewGenerator returns client's generator for w (w must be valid).
func NewGenerator(w Workload, seed uint64, client int) *Generator {
	g := &Generator{w: w, rng: rand.New(rand.NewPCG(seed, uint64(client)))}
	if w.Scenario == Zipf {
		g.zipf = rand.NewZipf(g.rng, w.ZipfS, 1, uint64(w.Members-1))
	}
	for i, wt := range w.Mix.weights() {
		g.total += wt
		g.cum[i] = g.total
	}
	return g
}

// pickAccount draws a member account index per the scenario. For a flash
// sale it may return the budget.
func (g *Generator) pickAccount() int {
	switch g.w.Scenario {
	case Zipf:
		return int(g.zipf.Uint64())
	case FlashSale:
		r := g.rng.Float64()
		switch {
		case r < g.w.BudgetShare:
			return g.w.Budget()
		case r < g.w.HotShare:
			return g.rng.IntN(g.w.HotMembers)
		}
	}
	return g.rng.IntN(g.w.Members)
}

func (g *Generator) amount() int64 { return 1 + g.rng.Int64N(g.w.MaxAmountMinor) }

// Next returns the next operation. A capture only comes out when an
// acknowledged hold is open (HoldAcked); otherwise it becomes a hold.
func (g *Generator) Next() Spec {
	g.seq++
	x := g.rng.IntN(g.total)
	kind := KindCredit
	for i, c := range g.cum {
		if x < c {
			kind = mixKinds[i]
			break
		}
	}
	if kind == KindCapture {
		if len(g.holds) == 0 {
			kind = KindHold
		} else {
			h := g.holds[0]
			g.holds = g.holds[1:]
			return Spec{Kind: KindCapture, Account: h.account, AmountMinor: h.amountMinor, HoldSeq: h.seq, Seq: g.seq}
		}
	}
	acct := g.pickAccount()
	if acct == g.w.Budget() {
		// The budget is only ever drawn down (or read).
		if kind != KindRead {
			kind = KindDraw
		}
	}
	s := Spec{Kind: kind, Account: acct, Seq: g.seq}
	if kind != KindRead {
		s.AmountMinor = g.amount()
	}
	return s
}

// HoldAcked tells the generator that the hold s was applied OK, so a later
// capture may take it.
func (g *Generator) HoldAcked(s Spec) {
	g.holds = append(g.holds, openHold{account: s.Account, amountMinor: s.AmountMinor, seq: s.Seq})
}

// OpenHolds is how many acknowledged holds wait for a capture.
func (g *Generator) OpenHolds() int { return len(g.holds) }
