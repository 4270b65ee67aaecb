// Package client is the Go client of Tally: what order and payment systems
// import to move loyalty points and stored value.
//
// Amounts are shopspring decimals at this edge and decimal strings on the
// wire; the server converts them to minor units of the asset's scale.
//
// Routing. Every member lives on one shard (ledger.ShardOf) and every shard has
// one Raft leader. The client caches the shard count and each shard's leader
// (from ClusterInfo, answered by any node) and keeps one gRPC connection per
// node address. Submit splits a batch by shard and sends each shard's part to
// that shard's leader, all parts concurrently. The parts succeed or fail
// independently: a failed part's error says nothing about the others, so
// each op's Result, not the call's error, tells what applied
// (Result.Indeterminate marks the ops of a part whose outcome is unknown).
//
// Retries. A request that fails with NOT_LEADER carrying a leader hint is
// re-sent to the hint at once. NOT_LEADER without a hint, UNAVAILABLE,
// connection errors and per-attempt timeouts are retried after a jittered,
// doubling backoff and a ClusterInfo refresh, until the caller's context ends
// (or, for a context without a deadline, Config.MaxCallDuration, a minute by
// default; it bounds the whole call, every chunk and retry of it). An
// UNAVAILABLE that the server marks as refused before proposal
// (its shard's queue full, say) is retried too, but counts as not applied.
// Every retry re-sends exactly the same operations with the same idempotency
// keys, so an operation applies at most once however often it is sent.
// Rejections of the request itself (INVALID_ARGUMENT, INVALID_AMOUNT, ...) are
// never retried. Nor is an op whose own Result has Code UNAVAILABLE: the
// ledger neither applied nor recorded it (a debit or hold that the posted
// balance covers but the available one does not, while the shard still has
// expired holds to release, and the later ops of that member in the
// request, or in later chunks of a split Submit); send it again with the
// same key. If an earlier attempt of that request had an unknown outcome,
// such a result is Indeterminate (for a linked request, all its results
// are): the earlier attempt may still apply, since the refusal left the key
// free. The same holds after an earlier call that left the key
// indeterminate (below).
//
// Indeterminate outcomes. When the context ends after an attempt of a mutating
// call may have reached a server, the operation may or may not have applied:
// the error satisfies IsIndeterminate (as does Result.Err of an Indeterminate
// result). Settle it by re-sending the same operation with the same
// idempotency key until an answer the ledger recorded comes back: the
// ledger answers from its dedup record if it applied, and applies it once,
// recording the outcome, if not. Only a recorded answer settles it: a replay,
// or an outcome with a sequence number (Result.Seq), which the ledger stamps
// on what it records (OK, a refusal such as INSUFFICIENT_FUNDS), and
// IDEMPOTENCY_KEY_REUSED. An answer that records nothing does not (an
// op-level UNAVAILABLE, a refusal without a sequence number, as for a
// request that fails validation when applied, a refusal before proposal
// such as a full queue, NOT_LEADER, a request rejected as invalid, by the
// server or by the client before sending, a call given up before any
// attempt carried the op, an op held back): it says only that this call
// applied nothing, and the key stays free for the earlier call's attempt,
// which may still be queued at the leader, or in a Raft entry not yet
// committed (which can commit whenever a quorum returns), and apply
// afterwards. Within one Client, and for a while, the library knows this: a
// key that one of its calls left indeterminate stays open until a recorded
// answer comes, or until two minutes pass without an answer for it (every
// unrecorded answer for it starts the two minutes again), and meanwhile such
// an answer is reported Indeterminate too (Result.Indeterminate;
// IsIndeterminate holds for the error of Apply, of the Submit part, and of a
// call refused before sending). Keys are told apart by shard, as the ledger
// deduplicates them (a DefineAsset key apart from every shard's). If more
// keys are open than the record holds (65,536), the oldest is forgotten, and
// for two minutes after that every unrecorded answer, for any key, is
// reported Indeterminate. So is an unrecorded answer for a key that another
// call of this Client sent at some time during this call (a webhook
// delivered twice, a re-send while the first call still waits): that call
// may have applied the op, or may still. (Calls are counted by a hash of
// the key, so an unrelated call can, rarely, make such an answer
// Indeterminate too.) Past the window, and across processes (another Client, a re-run of
// tallyctl), the library cannot know: there the caller must keep re-sending
// until a recorded answer comes. For the same reason GetOperation saying
// "not found" does not settle it. A call that
// gives up when no attempt may have carried its operations (none was sent,
// or every answer proved that nothing applied) is not indeterminate,
// coalesced or not, unless an earlier call left a key of it open. Either way
// the cause is the caller's own context error.
//
// Coalescing. With Config.Coalesce, concurrent unlinked submissions are queued
// per shard and a small, fixed set of sender goroutines per shard sends
// whatever is queued as one request, without waiting on a timer: while
// requests are in flight the next batch accumulates. This turns a flash sale's
// many single-operation calls into few large Raft entries. A batch is retried
// as a single call is, as long as one of its callers waits, and each attempt
// carries only the operations of callers that still wait: once a call has
// returned (indeterminate or not), no attempt decided after it carries its
// operations. A caller that leaves while an attempt carrying its operations
// is in flight, or after one of unknown outcome, is told indeterminate;
// otherwise, not applied. One caller's operation rejected on its merits fails
// only that caller; the rest are sent again. Concurrent GetAccount calls are
// coalesced into GetAccounts the same way.
package client
