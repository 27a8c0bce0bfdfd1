package metrics

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Types of a family, as the text format names them.
const (
	Gauge     = "gauge"
	Counter   = "counter"
	Histogram = "histogram"
)

// Label is one name="value" pair.
type Label struct{ Name, Value string }

// Sample is one line of a family: the family's name plus Suffix
// ("_bucket", "_sum", "_count" for histograms, "_total" is part of a
// counter's name), its labels and value.
type Sample struct {
	Suffix string
	Labels []Label
	Value  float64
}

// Family is a metric family: one HELP and TYPE line and its samples.
type Family struct {
	Name, Help, Type string
	Samples          []Sample
}

// Write writes families in the text exposition format, sorted by name
// (each name once, as the format requires).
func Write(w io.Writer, fams []Family) error {
	bw := bufio.NewWriter(w)
	sorted := slices.Clone(fams)
	slices.SortStableFunc(sorted, func(a, b Family) int { return strings.Compare(a.Name, b.Name) })
	for i, f := range sorted {
		if i > 0 && sorted[i-1].Name == f.Name {
			return fmt.Errorf("metric family %s twice", f.Name)
		}
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s %s\n", f.Name, escapeHelp(f.Help), f.Name, f.Type)
		for _, s := range f.Samples {
			bw.WriteString(f.Name + s.Suffix)
			if len(s.Labels) > 0 {
				bw.WriteByte('{')
				for j, l := range s.Labels {
					if j > 0 {
						bw.WriteByte(',')
					}
					bw.WriteString(l.Name + `="` + escapeValue(l.Value) + `"`)
				}
				bw.WriteByte('}')
			}
			bw.WriteString(" " + formatValue(s.Value) + "\n")
		}
	}
	return bw.Flush()
}

// The text format escapes backslash and newline in HELP, and also the
// double quote in label values.
var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	valueEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
func escapeValue(s string) string { return valueEscaper.Replace(s) }

func formatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// HistogramSamples are the _bucket (cumulative, with le), _sum and _count
// samples of h, each with labels first.
func HistogramSamples(h Hist, labels ...Label) []Sample {
	var out []Sample
	var cum uint64
	for i, le := range h.Bounds {
		cum += h.Counts[i]
		out = append(out, Sample{Suffix: "_bucket", Labels: append(slices.Clone(labels), Label{"le", formatValue(le)}), Value: float64(cum)})
	}
	out = append(out,
		Sample{Suffix: "_bucket", Labels: append(slices.Clone(labels), Label{"le", "+Inf"}), Value: float64(h.Count)},
		Sample{Suffix: "_sum", Labels: labels, Value: h.Sum},
		Sample{Suffix: "_count", Labels: labels, Value: float64(h.Count)},
	)
	return out
}
