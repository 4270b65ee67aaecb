package loadtest

import (
	"os"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestProcessesCPUCountIsTheAffinityUnion(t *testing.T) {
	self := os.Getpid()
	// runtime.NumCPU is this process's affinity count at start.
	require.Equal(t, runtime.NumCPU(), processesCPUCount([]int{self}))
	require.Equal(t, runtime.NumCPU(), processesCPUCount([]int{self, self}), "a union, not a sum")
	require.Zero(t, processesCPUCount([]int{-12345}), "no readable mask")
}
