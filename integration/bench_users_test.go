package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// BenchmarkPrivateUsers: prepare, one run stage and cleanup with
// machine.private_users against without, alternating job by job on two
// runners alike but for that setting, in both modes, on the private
// network (the default; each runner in test namespaces of its own).
func BenchmarkPrivateUsers(b *testing.B) {
	priv, _ := newNetHost(b, netYAML+"  private_users: true\n")
	priv.prefix = "nrt-usrb-p-"
	plain, _ := newNetHost(b, netYAML)
	plain.prefix = "nrt-usrb-n-"
	script := filepath.Join(b.TempDir(), "true.sh")
	if err := os.WriteFile(script, []byte("true\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"fast", "boot"} {
		b.Run(mode, func(b *testing.B) {
			// [host][phase]: prepare, stage, cleanup.
			var d [2][3][]time.Duration
			for i := 0; i < b.N; i++ {
				for k, h := range []*lcHost{priv, plain} {
					j := h.newJob()
					t0 := time.Now()
					j.must("prepare", "bookworm", "--mode", mode)
					d[k][0] = append(d[k][0], time.Since(t0))
					t0 = time.Now()
					j.must("run", script, "step_"+strconv.Itoa(i))
					d[k][1] = append(d[k][1], time.Since(t0))
					t0 = time.Now()
					j.must("cleanup")
					d[k][2] = append(d[k][2], time.Since(t0))
				}
			}
			for p, name := range []string{"prepare", "stage", "cleanup"} {
				pu, no := median(d[0][p]), median(d[1][p])
				b.ReportMetric(ms(pu), "private-"+name+"-ms")
				b.ReportMetric(ms(no), "plain-"+name+"-ms")
				b.ReportMetric(float64(pu)/float64(no), "x-"+name)
			}
		})
	}
	priv.assertClean(b)
	plain.assertClean(b)
}
