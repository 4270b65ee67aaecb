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

	// MaxVersion is the newest version this binary applies.
	MaxVersion = Version2
)

// ErrVersion is wrapped when an entry asks for a version this binary does not
// know. It is fatal: the node must be upgraded before it may apply the entry.
var ErrVersion = errors.New("ledger: state machine version not supported by this binary")

// Fingerprint tags. Version 1 hashed fingerprintTag ('F') and the op; version
// 2 hashes a tag that says whether the op was linked, so a version-2
// fingerprint never equals a version-1 one (but with probability 2^-128) and
// a record tells by its fingerprint which rules wrote it.
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
	return taggedFingerprint(tag, op)
}

// sameOp reports whether rec records op, given fp = fingerprintFor(v, op,
// linked). Under version 2 a record written under version 1 still matches
// the same op whatever its linkage: version 1 did not store linkage, so the
// retry of an op acknowledged before the upgrade is served its result.
func sameOp(v uint32, rec *Record, op *Op, fp [16]byte) bool {
	if rec.Fingerprint == fp {
		return true
	}
	return v >= Version2 && rec.Fingerprint == Fingerprint(*op)
}
