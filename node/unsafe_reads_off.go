//go:build !tally_unsafe

package node

// UnsafeReadsBuilt: see unsafe_reads.go. This build refuses
// Config.UnsafeLocalReads.
const UnsafeReadsBuilt = false
