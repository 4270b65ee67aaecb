package ledger

// Store is the state the rules read and write. fsm implements it over a
// Pebble batch; tests implement it in memory (MemStore). Lookups return
// found=false, not an error, for a missing item; an error is a storage
// failure, which the FSM treats as fatal.
//
// Store methods must be deterministic: the same sequence of calls on the same
// state gives the same results and the same writes.
type Store interface {
	Asset(program, code string) (a Asset, found bool, err error)
	PutAsset(a Asset) error

	Account(k AccountKey) (a Account, found bool, err error)
	PutAccount(a Account) error

	// Control returns the balance of the (program, asset) control account on
	// this shard (0 if none yet).
	Control(program, asset string) (balanceMinor int64, err error)
	PutControl(program, asset string, balanceMinor int64) error

	Hold(program, member, key string) (h Hold, found bool, err error)
	// PutHold writes h and keeps the expiry index in step: an open hold is
	// indexed under ExpiresAtMs, a hold in any other state is not.
	PutHold(h Hold) error
	// ExpiredHolds lists up to limit open holds with ExpiresAtMs <= nowMs,
	// in (ExpiresAtMs, Program, Member, Key) order.
	ExpiredHolds(nowMs int64, limit int) ([]HoldRef, error)

	// Record returns the dedup record of (program, idempotency key).
	Record(program, key string) (r Record, found bool, err error)
	// PutRecord stores r under (program, r.Op.IdempotencyKey) and, if the op
	// succeeded and names a member, indexes it in that member's journal under
	// r.Seq.
	PutRecord(r Record) error

	// NextSeq returns the next shard-wide journal sequence number (starting
	// at 1) and advances it.
	NextSeq() (uint64, error)
}
