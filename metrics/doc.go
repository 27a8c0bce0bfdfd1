// Package metrics exposes nspawn-runner's state in the Prometheus text
// exposition format (version 0.0.4): machines by state, image and mode,
// their memory and age; prepare and cleanup durations as histograms, which
// those stages record in a small state file of the run directory; images'
// size, age and last maintenance; what gc removed.
//
// nspawn-runner runs no daemon: `metrics` prints the families, and
// `metrics --textfile DIR` writes them atomically for node_exporter's
// textfile collector.
package metrics
