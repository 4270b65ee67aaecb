package ledger

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/shopspring/decimal"
)

// MaxAmountTextLen bounds the decimal text ParseAmount accepts, so a hostile
// caller cannot make the API edge parse a megabyte of digits. int64 minor units
// need at most 19 digits; the rest of the room is for trailing zeros.
const MaxAmountTextLen = 64

// ParseAmount converts a positive decimal amount ("12.30") of an asset with
// the given scale to minor units (1230 at scale 2), exactly: no floats, no
// rounding.
//
// The text is an optional sign, digits, and optionally '.' and more digits;
// no spaces, no exponent, no thousands separators. Errors (*Error):
//   - CodeInvalidAmount: not such a decimal, or not > 0;
//   - CodeScaleMismatch: more significant decimal places than scale ("1.55"
//     at scale 1); trailing zeros are fine ("1.50" at scale 1 is 15);
//   - CodeOverflow: the amount in minor units does not fit in int64;
//   - CodeInvalidArgument: scale above MaxScale.
func ParseAmount(s string, scale uint8) (int64, error) {
	if scale > MaxScale {
		return 0, invalidArg("scale: %d is above the maximum %d", scale, MaxScale)
	}
	if len(s) > MaxAmountTextLen {
		return 0, tooLongAmount(s, scale)
	}
	if !isPlainDecimal(s) {
		return 0, Errorf(CodeInvalidAmount, fmt.Sprintf("amount: %q is not a plain decimal number", s))
	}
	d, err := decimal.NewFromString(s)
	if err != nil {
		return 0, Errorf(CodeInvalidAmount, fmt.Sprintf("amount: %q: %v", s, err))
	}
	if d.Sign() <= 0 {
		return 0, Errorf(CodeInvalidAmount, fmt.Sprintf("amount: %q must be greater than zero", s))
	}
	minor := d.Shift(int32(scale))
	if !minor.IsInteger() {
		return 0, Errorf(CodeScaleMismatch, fmt.Sprintf("amount: %q has more than %d decimal places", s, scale))
	}
	bi := minor.BigInt()
	if !bi.IsInt64() {
		return 0, Errorf(CodeOverflow, fmt.Sprintf("amount: %q at scale %d does not fit in 64-bit minor units", s, scale))
	}
	return bi.Int64(), nil
}

// tooLongAmount classifies an amount text longer than MaxAmountTextLen
// without parsing it, with the code its value would get as a shorter text:
// more significant decimals than scale is a scale mismatch, and otherwise
// more than 19 significant integer digits overflows whatever the scale.
// Decimals are checked first because ParseAmount checks them first, so
// zero padding never changes the code ("99999999999999999999.123" at
// scale 2 is SCALE_MISMATCH padded or not). Any other (zero padding, or not
// a plain decimal) is refused for its length.
func tooLongAmount(s string, scale uint8) error {
	tooLong := Errorf(CodeInvalidAmount, fmt.Sprintf("amount: %d characters is above the maximum %d", len(s), MaxAmountTextLen))
	if len(s) > 64*MaxAmountTextLen || !isPlainDecimal(s) {
		return tooLong
	}
	if s[0] == '-' || strings.Trim(s, "+0.") == "" {
		return Errorf(CodeInvalidAmount, "amount: must be greater than zero")
	}
	intPart, frac, _ := strings.Cut(strings.TrimPrefix(s, "+"), ".")
	intPart, frac = strings.TrimLeft(intPart, "0"), strings.TrimRight(frac, "0")
	switch {
	case len(frac) > int(scale):
		return Errorf(CodeScaleMismatch, fmt.Sprintf("amount: %d decimal places is more than %d", len(frac), scale))
	case len(intPart) > 19:
		return Errorf(CodeOverflow, fmt.Sprintf("amount: %d integer digits do not fit in 64-bit minor units", len(intPart)))
	}
	// At most 19 + 1 + MaxScale characters without the padding: its own
	// checks find what remains (minor units beyond int64 at this scale).
	canonical := "0" + intPart
	if frac != "" {
		canonical += "." + frac
	}
	if _, err := ParseAmount(canonical, scale); err != nil {
		return err
	}
	return tooLong
}

// isPlainDecimal reports whether s is [+-]?[0-9]+(\.[0-9]+)?.
func isPlainDecimal(s string) bool {
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	start := i
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == start {
		return false
	}
	if i == len(s) {
		return true
	}
	if s[i] != '.' {
		return false
	}
	i++
	start = i
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i > start && i == len(s)
}

// FormatAmount renders minor units at a scale as a decimal with exactly scale
// places: 1230 at scale 2 is "12.30", -5 at scale 2 is "-0.05", 7 at scale 0
// is "7". It is exact for every int64, math.MinInt64 included.
func FormatAmount(minor int64, scale uint8) string {
	var buf [24 + 256]byte
	u := uint64(minor)
	neg := minor < 0
	if neg {
		u = -u // two's complement: exact for MinInt64 too
	}
	var digits [20]byte
	d := strconv.AppendUint(digits[:0], u, 10)
	b := buf[:0]
	if neg {
		b = append(b, '-')
	}
	if scale == 0 {
		return string(append(b, d...))
	}
	n := int(scale)
	if len(d) <= n {
		b = append(b, '0', '.')
		for i := len(d); i < n; i++ {
			b = append(b, '0')
		}
		b = append(b, d...)
		return string(b)
	}
	b = append(b, d[:len(d)-n]...)
	b = append(b, '.')
	b = append(b, d[len(d)-n:]...)
	return string(b)
}

// AmountDecimal returns minor units at a scale as an exact decimal.
func AmountDecimal(minor int64, scale uint8) decimal.Decimal {
	return decimal.New(minor, -int32(scale))
}
