// Package ledger is Tally's domain: the types, validation, codec and rules of
// a double-entry ledger of loyalty points and stored value.
//
// It is pure: no I/O, no clock, no goroutines, no randomness. Time comes in as
// the log time of the command being applied; state is read and written through
// the small Store interface (fsm implements it over Pebble, MemStore in
// memory). The same commands applied to the same state give the same results
// and the same writes, byte for byte, on every replica.
//
// Invariants the rules keep, and assert (CheckAccount, Conservation):
//   - every account has 0 <= HeldMinor <= PostedMinor and, when it has a
//     limit, PostedMinor <= MaxBalanceMinor;
//   - every posting moves value between a member account and the control
//     account of the same (program, asset) on the same shard, so per shard
//     and (program, asset) all balances, control included, sum to zero;
//   - every operation that reaches the rules is recorded under its
//     (program, idempotency key), failures included, so a retry returns the
//     first outcome and never applies twice. The exceptions record nothing:
//     a request that fails validation at apply (every op gets the error);
//     an op whose key is already recorded for a different op (it gets
//     IDEMPOTENCY_KEY_REUSED); from Version2, a linked request that
//     contains such an op (refuseReusedKeys); and, from Version4, an op
//     answered UNAVAILABLE while expired holds wait to be released
//     (insufficient), the later ops of its member in its request, and a
//     linked request that contains one.
package ledger
