//go:build tally_unsafe

package node

// UnsafeReadsBuilt reports whether this build honours
// Config.UnsafeLocalReads: only builds with the tally_unsafe tag do (the
// fault harness's proof that its checker catches stale reads). Production
// builds refuse the setting, so no flag can make a deployed node serve
// reads without checks. Such builds also give tallyd
// --unsafe-clock-offset (the harness's skewed clock).
const UnsafeReadsBuilt = true
