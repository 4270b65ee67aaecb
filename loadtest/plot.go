package loadtest

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// Plot dimensions in SVG user units.
const (
	plotW, plotH = 900, 260
	plotPad      = 50
)

// WritePlot writes a self-contained HTML page (inline SVG, no scripts or
// external resources) with rep's latency percentiles and throughput over
// time, one point per timeline tick; the measured window is shaded.
func WritePlot(out io.Writer, rep *Report) error {
	var b strings.Builder
	title := fmt.Sprintf("tally-load %s: %s, %s loop, %d clients, batch %d", rep.RunID, rep.Scenario, rep.Mode, rep.Clients, rep.Batch)
	fmt.Fprintf(&b, "<!doctype html><html><head><meta charset=\"utf-8\"><title>%s</title>"+
		"<style>body{font-family:sans-serif;margin:20px}svg{background:#fafafa;border:1px solid #ddd}"+
		".l{font-size:11px}</style></head><body>\n", html.EscapeString(title))
	fmt.Fprintf(&b, "<h3>%s</h3>\n<p>%.0f ops/s; p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms; lost_acks %d, invariant_ok %v</p>\n",
		html.EscapeString(title), rep.OpsPerSec, rep.P50Ms, rep.P99Ms, rep.P999Ms, rep.LostAcks, rep.InvariantOK)
	tl := rep.Timeline
	lat := []series{
		{"p50", "#2a7", func(t Tick) float64 { return t.P50Ms }},
		{"p99", "#e80", func(t Tick) float64 { return t.P99Ms }},
		{"p99.9", "#d22", func(t Tick) float64 { return t.P999Ms }},
		{"max", "#888", func(t Tick) float64 { return t.MaxMs }},
	}
	b.WriteString("<h4>latency per second (ms)</h4>\n")
	chart(&b, tl, lat)
	b.WriteString("<h4>throughput (ops/s)</h4>\n")
	chart(&b, tl, []series{{"ops/s", "#36c", func(t Tick) float64 { return t.OpsPerSec }}})
	b.WriteString("</body></html>\n")
	_, err := io.WriteString(out, b.String())
	return err
}

type series struct {
	name, color string
	value       func(Tick) float64
}

func chart(b *strings.Builder, tl []Tick, ss []series) {
	fmt.Fprintf(b, "<svg width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\">\n", plotW, plotH, plotW, plotH)
	if len(tl) == 0 {
		b.WriteString("<text x=\"20\" y=\"30\">no data</text></svg>\n")
		return
	}
	tMax := tl[len(tl)-1].AtS
	yMax := 0.0
	for _, t := range tl {
		for _, s := range ss {
			yMax = math.Max(yMax, s.value(t))
		}
	}
	yMax = niceCeil(yMax)
	x := func(t float64) float64 { return plotPad + (plotW-2*plotPad)*t/math.Max(tMax, 1) }
	y := func(v float64) float64 { return plotH - plotPad + 20 - (plotH-plotPad)*v/yMax }
	// Measured window.
	first, last := -1, -1
	for i, t := range tl {
		if t.Measuring {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	if first >= 0 {
		x0 := x(tl[first].AtS - 1)
		fmt.Fprintf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#eef\"/>\n",
			x0, y(yMax), x(tl[last].AtS)-x0, y(0)-y(yMax))
	}
	// Axes and gridlines at quarters.
	for q := 0; q <= 4; q++ {
		v := yMax * float64(q) / 4
		fmt.Fprintf(b, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"+
			"<text class=\"l\" x=\"4\" y=\"%.1f\">%s</text>\n", plotPad, plotW-plotPad, y(v), y(v), y(v)+4, fmtNum(v))
	}
	fmt.Fprintf(b, "<text class=\"l\" x=\"%d\" y=\"%d\">0 s</text><text class=\"l\" x=\"%d\" y=\"%d\">%.0f s</text>\n",
		plotPad, plotH-8, plotW-plotPad-20, plotH-8, tMax)
	for k, s := range ss {
		var pts []string
		for _, t := range tl {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(t.AtS), y(s.value(t))))
		}
		fmt.Fprintf(b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"%s\"/>\n", s.color, strings.Join(pts, " "))
		fmt.Fprintf(b, "<text class=\"l\" x=\"%d\" y=\"14\" fill=\"%s\">%s</text>\n", plotPad+k*70, s.color, html.EscapeString(s.name))
	}
	b.WriteString("</svg>\n")
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten (at least 1).
func niceCeil(v float64) float64 {
	if v <= 1 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func fmtNum(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.0fk", v/1000)
	}
	return fmt.Sprintf("%g", v)
}
