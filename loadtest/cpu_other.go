//go:build !linux

package loadtest

// selfCPU is not measured off Linux.
func selfCPU() float64 { return 0 }

// processesCPU is not measured off Linux.
func processesCPU(pids []int) float64 { return 0 }

// processesCPUCount is not measured off Linux.
func processesCPUCount(pids []int) int { return 0 }
