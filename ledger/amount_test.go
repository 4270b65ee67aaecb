package ledger

import (
	"hash/fnv"
	"math"
	"strings"
	"testing"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"
)

func TestParseAmount(t *testing.T) {
	cases := []struct {
		in    string
		scale uint8
		want  int64
		code  Code
	}{
		{"1", 0, 1, CodeOK},
		{"12.30", 2, 1230, CodeOK},
		{"12.3", 2, 1230, CodeOK},
		{"12", 2, 1200, CodeOK},
		{"0.01", 2, 1, CodeOK},
		{"1.50", 1, 15, CodeOK},            // trailing zero is exact
		{"1.5000000000", 1, 15, CodeOK},    // many trailing zeros
		{"007", 0, 7, CodeOK},              // leading zeros
		{"+5", 0, 5, CodeOK},               // explicit sign
		{"1.55", 1, 0, CodeScaleMismatch},  // more places than the asset has
		{"0.001", 2, 0, CodeScaleMismatch}, //
		{"1.5", 0, 0, CodeScaleMismatch},   //
		{"1.000000000000000001", 18, 1000000000000000001, CodeOK},
		{"9.223372036854775807", 18, math.MaxInt64, CodeOK},
		{"9.223372036854775808", 18, 0, CodeOverflow},
		{"9223372036854775807", 0, math.MaxInt64, CodeOK},
		{"9223372036854775808", 0, 0, CodeOverflow},
		{"92233720368547758.07", 2, math.MaxInt64, CodeOK},
		{"92233720368547758.08", 2, 0, CodeOverflow},
		{"10", 18, 0, CodeOverflow},
		{"99999999999999999999999999999999", 0, 0, CodeOverflow},
		{"0", 0, 0, CodeInvalidAmount},
		{"0.00", 2, 0, CodeInvalidAmount},
		{"-0", 0, 0, CodeInvalidAmount},
		{"-1", 0, 0, CodeInvalidAmount},
		{"-0.05", 2, 0, CodeInvalidAmount},
		{"1e3", 0, 0, CodeInvalidAmount}, // no exponents: amounts are plain decimals
		{"1E3", 0, 0, CodeInvalidAmount},
		{" 1", 0, 0, CodeInvalidAmount},
		{"1 ", 0, 0, CodeInvalidAmount},
		{"", 0, 0, CodeInvalidAmount},
		{"abc", 0, 0, CodeInvalidAmount},
		{".5", 1, 0, CodeInvalidAmount},
		{"5.", 1, 0, CodeInvalidAmount},
		{"1.2.3", 2, 0, CodeInvalidAmount},
		{"1,000", 0, 0, CodeInvalidAmount},
		{"0x10", 0, 0, CodeInvalidAmount},
		{"NaN", 0, 0, CodeInvalidAmount},
		{"Inf", 0, 0, CodeInvalidAmount},
		{"+", 0, 0, CodeInvalidAmount},
		{"١", 0, 0, CodeInvalidAmount}, // non-ASCII digit
		// Longer than MaxAmountTextLen: refused, with the code its value
		// would get where the text shows it.
		{strings.Repeat("1", MaxAmountTextLen+1), 0, 0, CodeOverflow},
		{"0." + strings.Repeat("0", 70) + "1", 2, 0, CodeScaleMismatch},
		{"5." + strings.Repeat("0", MaxAmountTextLen-1), 2, 0, CodeInvalidAmount},            // 5, padded too long
		{"9223372036854775807." + strings.Repeat("0", MaxAmountTextLen), 2, 0, CodeOverflow}, // fits at scale 0, not 2
		{strings.Repeat("0", MaxAmountTextLen) + "5", 0, 0, CodeInvalidAmount},
		{"-" + strings.Repeat("1", MaxAmountTextLen), 0, 0, CodeInvalidAmount},
		{strings.Repeat("0", MaxAmountTextLen+1), 0, 0, CodeInvalidAmount},
		{strings.Repeat("x", MaxAmountTextLen+1), 0, 0, CodeInvalidAmount},
		{strings.Repeat("1", 64*MaxAmountTextLen+1), 0, 0, CodeInvalidAmount}, // too long to look at
		// Too many decimals and too many integer digits: decimals are
		// checked first, padded or not, so padding never changes the code.
		{"99999999999999999999.123", 2, 0, CodeScaleMismatch},
		{strings.Repeat("0", 48) + "99999999999999999999.123", 2, 0, CodeScaleMismatch},
		{"1", MaxScale + 1, 0, CodeInvalidArgument},
	}
	for _, tc := range cases {
		got, err := ParseAmount(tc.in, tc.scale)
		require.Equal(t, tc.code, CodeOf(err), "ParseAmount(%q, %d): %v", tc.in, tc.scale, err)
		require.Equal(t, tc.want, got, "ParseAmount(%q, %d)", tc.in, tc.scale)
		if err != nil {
			require.NotEmpty(t, err.Error())
		}
	}
}

func TestFormatAmount(t *testing.T) {
	cases := []struct {
		minor int64
		scale uint8
		want  string
	}{
		{1230, 2, "12.30"},
		{-5, 2, "-0.05"},
		{5, 2, "0.05"},
		{0, 2, "0.00"},
		{0, 0, "0"},
		{7, 0, "7"},
		{-7, 0, "-7"},
		{100, 2, "1.00"},
		{1, 18, "0.000000000000000001"},
		{math.MaxInt64, 18, "9.223372036854775807"},
		{math.MinInt64, 18, "-9.223372036854775808"},
		{math.MinInt64, 0, "-9223372036854775808"},
		{math.MaxInt64, 2, "92233720368547758.07"},
		{123, 3, "0.123"},
		{1234, 3, "1.234"},
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, FormatAmount(tc.minor, tc.scale), "FormatAmount(%d, %d)", tc.minor, tc.scale)
		require.Equal(t, tc.want, AmountDecimal(tc.minor, tc.scale).StringFixed(int32(tc.scale)))
		if tc.minor > 0 {
			back, err := ParseAmount(tc.want, tc.scale)
			require.NoError(t, err)
			require.Equal(t, tc.minor, back)
		}
	}
	require.True(t, AmountDecimal(1230, 2).Equal(decimal.RequireFromString("12.3")))
}

// FuzzParseAmount checks that whatever ParseAmount accepts formats back to an
// equal decimal and parses again to the same minor units.
func FuzzParseAmount(f *testing.F) {
	for _, s := range []string{"1", "12.30", "0.001", "9223372036854775807", "1e3", "-1", "1.50"} {
		f.Add(s, uint8(2))
	}
	f.Fuzz(func(t *testing.T, s string, scale uint8) {
		minor, err := ParseAmount(s, scale)
		if err != nil {
			require.NotEqual(t, CodeInternal, CodeOf(err))
			return
		}
		require.Positive(t, minor)
		text := FormatAmount(minor, scale)
		require.True(t, decimal.RequireFromString(s).Equal(decimal.RequireFromString(text)), "%q vs %q", s, text)
		again, err := ParseAmount(text, scale)
		require.NoError(t, err)
		require.Equal(t, minor, again)
	})
}

func TestShardOf(t *testing.T) {
	// ShardOf is FNV-1a 64 of program NUL member, as hash/fnv computes it.
	for _, tc := range []struct {
		program, member string
		shards          int
	}{{"shop", "alice", 16}, {"shop", "bob", 7}, {"", "", 3}, {"p", "用户", 1024}, {"ab", "c", 64}, {"a", "bc", 64}} {
		h := fnv.New64a()
		h.Write([]byte(tc.program + "\x00" + tc.member))
		want := int(h.Sum64() % uint64(tc.shards))
		require.Equal(t, want, ShardOf(tc.program, tc.member, tc.shards), "%+v", tc)
	}
	// Fixed expectations, computed once from the definition.
	require.Equal(t, fnvMod("shop\x00alice", 16), ShardOf("shop", "alice", 16))
	require.Equal(t, 0, ShardOf("any", "one", 1))
	// The separator matters: ("ab", "c") and ("a", "bc") are different members.
	h1, h2 := fnvMod("ab\x00c", 1<<62), fnvMod("a\x00bc", 1<<62)
	require.NotEqual(t, h1, h2)
	require.Panics(t, func() { ShardOf("p", "m", 0) })
}

func TestShardOfGolden(t *testing.T) {
	// ShardOf is part of the on-disk format: if these literal values change,
	// every existing cluster would re-shard. They were computed independently
	// of this package.
	require.Equal(t, uint64(0xcbf29ce484222325), fnvOffset64)
	for _, tc := range []struct {
		program, member string
		want            int
	}{
		{"shop", "alice", 41},
		{"shop", "bob", 58},
		{"loyalty", "m-000001", 30},
	} {
		require.Equal(t, tc.want, ShardOf(tc.program, tc.member, 100), "%s/%s", tc.program, tc.member)
	}
}

func fnvMod(s string, n uint64) int {
	h := fnv.New64a()
	h.Write([]byte(s))
	return int(h.Sum64() % n)
}
