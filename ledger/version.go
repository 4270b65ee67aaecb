package ledger

import "errors"

// Versions of the rules. A shard applies every entry under one version, which
// is part of its replicated state: it changes only through the log (a command
// with SetVersion), so every replica switches at the same entry, and a replica
// whose binary does not know the new version stops instead of applying later
// entries under older rules than its peers. A node raises a shard's version
// only once every member of the shard reports that its binary supports it
// (node, versionLoop), so a rolling upgrade runs the old rules until the last
// node is upgraded. Versions only increase; a shard never downgrades.
//
// A new version is needed for any change to what apply writes or answers:
// replicas on two binaries must never disagree about an entry.
const (
	// Version1 is the rules of a shard that never raised its version:
	// an op's fingerprint covers the op alone, and a linked request that
	// fails because one op reuses a key records the others as LINKED_FAILED.
	Version1 uint32 = 1
	// Version2 adds linkage to the fingerprint (whether the op came in a
	// linked request of several ops), so resending an op's key in a request
	// of the other kind is IDEMPOTENCY_KEY_REUSED, not a replay; and a linked
	// request with a reused key records none of its ops, as a request that
	// fails validation records none, so their keys stay free for the
	// corrected request.
	Version2 uint32 = 2
	// Version3 journals every hold expiry: a hold that expires, swept at an
	// entry's log time or found expired by a capture or release, gets an
	// EXPIRE_HOLD record (key ExpiryKey(hold key), in the member's journal)
	// saying what returned to the account, so that the journal explains
	// every change of an available balance; before, an expiry changed the
	// held balance with no entry. It also fingerprints a whole-hold capture
	// (AmountMinor 0) the same whether its Scale is 0 or the asset's: both
	// are accepted, and a retry in the other form used to get
	// IDEMPOTENCY_KEY_REUSED (the API edge always sends 0). That holds for
	// captures recorded under Version3, and under Version2 with Scale 0; a
	// record of Version1, or of Version2 with the asset's Scale, still
	// matches only the form it records (sameOp).
	Version3 uint32 = 3
	// Version4 stops recording refusals that the expiry bound makes wrong.
	// An entry releases at most MaxExpiriesPerEntry expired holds, and the
	// rest wait for the next entries; meanwhile a debit or hold whose
	// amount the account's posted balance covers, but whose available
	// balance, with expired holds still counted as held, does not, used to
	// be refused INSUFFICIENT_FUNDS and that refusal recorded under its key
	// for good. From Version4, while the shard has expired holds to release,
	// such an op is answered UNAVAILABLE and not recorded (insufficient), and
	// a linked request holding one records none of its ops.
	Version4 uint32 = 4

	// MaxVersion is the newest version this binary applies.
	MaxVersion = Version4
)

// ErrVersion is wrapped when an entry asks for a version this binary does not
// know. It is fatal: the node must be upgraded before it may apply the entry.
var ErrVersion = errors.New("ledger: state machine version not supported by this binary")

// Fingerprint tags. Version 1 hashed fingerprintTag ('F') and the op; from
// version 2 the tag says whether the op was linked, so such a fingerprint
// never equals a version-1 one (but with probability 2^-128) and a record
// tells by its fingerprint whether version 1 wrote it. Versions 2 and 3 share
// these tags: a fingerprint does not tell them apart.
const (
	fingerprintUnlinkedTag byte = 'U'
	fingerprintLinkedTag   byte = 'L'
)

// fingerprintFor is the fingerprint an op is recorded with under version v:
// version 1 ignores linked. linked means the op came in a linked request of
// more than one op (a linked request of one op is that op).
func fingerprintFor(v uint32, op *Op, linked bool) [16]byte {
	if v < Version2 {
		return Fingerprint(*op)
	}
	tag := fingerprintUnlinkedTag
	if linked {
		tag = fingerprintLinkedTag
	}
	if v >= Version3 && op.Kind == OpCaptureHold && op.AmountMinor == 0 && op.Scale != 0 {
		// The form the edge sends, so records of either version match it.
		whole := *op
		whole.Scale = 0
		return taggedFingerprint(tag, &whole)
	}
	return taggedFingerprint(tag, op)
}

// ExpiryKey is the key of the record a hold's expiry is journaled under
// (Version3). It starts with U+001F, a control character, which no key a
// client sends may hold (Validate), so it never meets a client's key; and a
// hold key names one hold of a program, so it names one expiry.
func ExpiryKey(holdKey string) string { return expiryKeyPrefix + holdKey }

const expiryKeyPrefix = "\x1fexpiry:"

// sameOp reports whether rec records op, given fp = fingerprintFor(v, op,
// linked). Records written under older rules still match the same op: under
// version 2 or later one written under version 1 whatever its linkage
// (version 1 did not store linkage), and under version 3 one written under
// version 2 with a whole-hold capture's Scale as it came. So the retry of an
// op acknowledged before an upgrade is served its result.
func sameOp(v uint32, rec *Record, op *Op, linked bool, fp [16]byte) bool {
	if rec.Fingerprint == fp {
		return true
	}
	if v >= Version3 && rec.Fingerprint == fingerprintFor(Version2, op, linked) {
		return true
	}
	return v >= Version2 && rec.Fingerprint == Fingerprint(*op)
}
